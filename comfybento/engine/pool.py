"""The front's engines: one engine service per GPU (COMFYBENTO_GPUS), each with its own scheduler and batches.

    front ──(least in flight)──> comfybento-engine-0   (CUDA_VISIBLE_DEVICES=0)
                             └─> comfybento-engine-1   (CUDA_VISIBLE_DEVICES=1)

The contract:
- A request goes to the engine with the fewest requests in flight from this front (queued or running there), ties to
  the one picked longest ago: a deep queue on one GPU never grows while another has room. Requests of one shape still
  meet in one engine's batch whenever more of them are in flight than there are engines.
- An engine that cannot take the request (its worker was killed or is restarting: a refused connection, a broken
  stream, its 503) is set aside for DOWN_S, and the request goes to the next one, once per engine; only a request that
  already sent an output to its caller is not moved (its caller saw part of the result). When every engine failed it,
  the caller gets the last 503 (EngineUnavailable, retry-safe).
- Ready when every engine is ready (warm): /readyz waits for all of them.
`pick` is the policy, without I/O; EnginePool runs requests with it over EngineClients (engine/client.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from comfybento import metrics
from comfybento.engine.client import EngineClient, OnEvent, OnOutput, engine_url
from comfybento.engine.messages import EngineItem, ItemResult, OutputBlob

log = logging.getLogger(__name__)
DOWN_S = 5.0  # how long an engine that failed a request is passed over while another can take it


@dataclass
class EngineLoad:
    """What the front knows of one engine: its requests in flight, when it was last picked, until when it is set aside."""

    in_flight: int = 0
    picked_at: float = 0.0
    down_until: float = 0.0


def pick(engines: Sequence[EngineLoad], now: float, exclude: frozenset[int] = frozenset()) -> int | None:
    """The index of the engine for the next request: the fewest in flight among those not set aside (among all, when
    every one is), the one picked longest ago on a tie; None when every engine is excluded."""
    candidates = [i for i in range(len(engines)) if i not in exclude]
    if not candidates:
        return None
    up = [i for i in candidates if engines[i].down_until <= now] or candidates
    return min(up, key=lambda i: (engines[i].in_flight, engines[i].picked_at, i))


class EnginePool:
    """Every engine of this deployment behind one `run`, spread by `pick`; the same interface as one EngineClient."""

    def __init__(self, clients: Sequence[EngineClient], ids: Sequence[str]) -> None:
        self._clients = list(clients)
        self._ids = list(ids)
        self._loads = [EngineLoad() for _ in clients]
        for engine_id in self._ids:
            metrics.ENGINE_IN_FLIGHT.labels(engine=engine_id).set(0)
            for outcome in ("ok", "failed", "moved"):
                metrics.ENGINE_REQUESTS.labels(engine=engine_id, outcome=outcome)

    @classmethod
    def of_services(cls, names: Sequence[str], timeout_s: float) -> EnginePool:
        """The pool of the named engine services, at the addresses BentoML gave this front."""
        ids = ["0"] if len(names) == 1 else [str(i) for i in range(len(names))]
        return cls([EngineClient(engine_url(name), timeout_s) for name in names], ids)

    async def run(self, workflow: str, item: EngineItem, on_event: OnEvent | None = None,
                  on_output: OnOutput | None = None) -> ItemResult:
        """One request through the engine `pick` chooses; moved to the next one if that engine cannot take it."""
        tried: set[int] = set()
        sent = 0

        def counted(blob: OutputBlob) -> None:
            nonlocal sent
            sent += 1
            if on_output is not None:
                on_output(blob)

        while True:
            index = pick(self._loads, time.monotonic(), frozenset(tried))
            assert index is not None  # tried grows by one per turn and the loop ends before it holds them all
            result = await self._run_on(index, workflow, item, on_event, counted)
            tried.add(index)
            if result.ok or result.error_kind != "unavailable" or sent or len(tried) == len(self._clients):
                metrics.ENGINE_REQUESTS.labels(engine=self._ids[index], outcome="ok" if result.ok else "failed").inc()
                return result
            self._loads[index].down_until = time.monotonic() + DOWN_S
            metrics.ENGINE_REQUESTS.labels(engine=self._ids[index], outcome="moved").inc()
            log.warning("engine %s could not run a %s request (%s); moving it to another engine", self._ids[index],
                        workflow, result.error)

    async def _run_on(self, index: int, workflow: str, item: EngineItem, on_event: OnEvent | None,
                      on_output: OnOutput) -> ItemResult:
        load, engine_id = self._loads[index], self._ids[index]
        load.in_flight += 1
        load.picked_at = time.monotonic()
        metrics.ENGINE_IN_FLIGHT.labels(engine=engine_id).set(load.in_flight)
        try:
            return await self._clients[index].run(workflow, item, on_event, on_output)
        finally:
            load.in_flight -= 1
            metrics.ENGINE_IN_FLIGHT.labels(engine=engine_id).set(load.in_flight)

    async def ready(self) -> bool:
        """Whether every engine answers its readiness probe."""
        for client in self._clients:
            if not await client.ready():
                return False
        return True

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
