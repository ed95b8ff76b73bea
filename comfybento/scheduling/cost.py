"""What one item of a workflow costs on the engine, learned from the results as the service runs.

An item's work is `megapixels x steps x images` of its bound graph (`work_of`): the
largest width x height any node sets (a workflow whose size comes from an input image
counts 1 megapixel), the sum of the `steps` of its samplers (at least 1), and its
batch size. `CostModel` learns, per workflow, the GPU-seconds per unit of that work
from each finished item (its share of its engine batch: execution time / batch size,
the same GPU-seconds a key is charged). Before a workflow's first result it uses the
prior, PRIOR_S_PER_UNIT; after that, an exponentially weighted mean of the measured
seconds per unit (DECAY: the last ten or so results weigh most), so a change of
hardware or load shows within a few results.

Pure: no I/O and no clock; the front feeds it (front/app.py) and exports it as
the gauge comfybento_cost_seconds_per_unit (metrics.py).
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comfybento.workflows.binding import bind
from comfybento.workflows.graph import Graph
from comfybento.workflows.limits import BATCH_INPUTS, HEIGHT_INPUTS, STEP_INPUTS, WIDTH_INPUTS
from comfybento.workflows.params import UPLOAD_KINDS, Param

# Seconds per megapixel-step-image before any measurement: SD 1.5 at 512 x 512, 20 steps (5.2 units) takes about
# 1.5 s on a datacenter GPU of the A10 class. Only a starting point: the first result replaces it.
PRIOR_S_PER_UNIT = 0.3
# Weight kept by the older measurements at each new one (0.9: a result ten results ago weighs about a third).
DECAY = 0.9
SMALLEST_UNITS = 1e-6


@dataclass(frozen=True)
class Work:
    """The size of one item: what the engine's time grows with."""

    megapixels: float
    steps: int
    images: int

    @property
    def units(self) -> float:
        return max(SMALLEST_UNITS, self.megapixels * self.steps * self.images)


def graph_work(graph: Graph) -> Work:
    """The work of a bound graph (see the module's docstring)."""
    pixels, steps, images = 0, 0, 1
    for node in graph.values():
        inputs = node.get("inputs", {})
        ints = {k: int(v) for k, v in inputs.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        width = next((ints[n] for n in WIDTH_INPUTS if n in ints), None)
        height = next((ints[n] for n in HEIGHT_INPUTS if n in ints), None)
        if width is not None and height is not None:
            pixels = max(pixels, width * height)
        images = max(images, next((ints[n] for n in BATCH_INPUTS if n in ints), 1))
        steps += sum(ints[n] for n in STEP_INPUTS if n in ints)
    return Work(megapixels=pixels / 1e6 if pixels else 1.0, steps=max(1, steps), images=max(1, images))


def work_of(graph: Graph, params: tuple[Param, ...], values: Mapping[str, Any]) -> Work:
    """The work of a request or job item: its values bound into the graph (input files aside)."""
    plain = {p.name: values[p.name] for p in params if p.kind not in UPLOAD_KINDS and p.name in values}
    return graph_work(bind(graph, params, plain, None))


class CostModel:
    """GPU-seconds per unit of work, per workflow: the prior, then an exponentially weighted mean of the results."""

    def __init__(self, prior_s_per_unit: float = PRIOR_S_PER_UNIT, decay: float = DECAY) -> None:
        if prior_s_per_unit <= 0 or not 0 <= decay < 1:
            raise ValueError("the prior must be positive and the decay in [0, 1)")
        self.prior = prior_s_per_unit
        self.decay = decay
        self._weighted: dict[str, tuple[float, float]] = {}  # workflow -> (sum of weighted rates, sum of weights)
        self._count: dict[str, int] = {}

    def observe(self, workflow: str, work: Work, gpu_seconds: float) -> float:
        """Learn from one finished item; the workflow's new seconds per unit. Non-positive times are ignored."""
        if gpu_seconds > 0:
            total, weight = self._weighted.get(workflow, (0.0, 0.0))
            self._weighted[workflow] = (self.decay * total + gpu_seconds / work.units, self.decay * weight + 1.0)
            self._count[workflow] = self._count.get(workflow, 0) + 1
        return self.rate(workflow)

    def rate(self, workflow: str) -> float:
        """Seconds per unit of work of the workflow: measured, or the prior before its first result."""
        total, weight = self._weighted.get(workflow, (0.0, 0.0))
        return total / weight if weight > 0 else self.prior

    def measured(self, workflow: str) -> int:
        """How many results the workflow's rate was learned from (0: it is the prior)."""
        return self._count.get(workflow, 0)

    def estimate(self, workflow: str, work: Work) -> float:
        """Estimated GPU-seconds of one item of this size."""
        return self.rate(workflow) * work.units


class HeavyRequests:
    """Which requests are far heavier than their neighbours: the engine runs those at background priority.

    A request is heavy when its work is more than `factor` times the median work of the last `window` requests of
    its workflow (with at least `min_seen` of them: the first requests of a workflow are never heavy). Thread-safe.
    """

    def __init__(self, factor: float = 4.0, window: int = 64, min_seen: int = 8) -> None:
        self.factor, self.min_seen = factor, min_seen
        self._recent: dict[str, deque[float]] = {}
        self._window = window
        self._lock = threading.Lock()

    def is_heavy(self, workflow: str, work: Work) -> bool:
        """Record this request's work and tell whether it is heavy."""
        with self._lock:
            recent = self._recent.setdefault(workflow, deque(maxlen=self._window))
            heavy = len(recent) >= self.min_seen and work.units > self.factor * statistics.median(recent)
            recent.append(work.units)
        return heavy
