"""Which queue goes next: the scheduler's policy, a small object the `Scheduler` is given.

The scheduler (scheduler.py) keeps one queue per shape key, each in arrival order with its live jobs ahead of its
background ones. Whenever the executor is free it asks its policy which waiting queue goes next, then takes a batch
from that queue's head (at most the key's cap). A policy sees every waiting queue (none is empty) and the
scheduler's clock; it runs under the scheduler's lock once per batch, so it must be quick and must not block.

A new policy is a class with `next_queue`, given where the engine builds its scheduler (engine/engine.py):
`Scheduler(policy=MyPolicy())`. The scheduler's contract tests (tests/unit/test_scheduler.py) run against the default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class QueuedJob(Protocol):
    """What a policy reads of a waiting job (scheduler.Job has it)."""

    @property
    def arrived(self) -> float: ...  # when it was queued, on the scheduler's clock

    @property
    def background(self) -> bool: ...  # a batch-job item, or a request the engine marked far heavier than its neighbours


class Policy(Protocol):
    def next_queue(self, queues: Mapping[str, Sequence[QueuedJob]], now: float) -> str:
        """The key of the queue whose head goes next; `queues`: every waiting queue, head first, none empty."""
        ...


@dataclass(frozen=True)
class OldestFirst:
    """The default (point 4 of the scheduler's contract): the queue whose head arrived first, among the queues whose
    head is live. A background head goes only when no live head waits, or once it has waited `background_max_wait_s`:
    then it competes by age like a live one, so nothing starves."""

    background_max_wait_s: float = 30.0

    def next_queue(self, queues: Mapping[str, Sequence[QueuedJob]], now: float) -> str:
        aged = now - self.background_max_wait_s
        live = [key for key, queue in queues.items() if not queue[0].background or queue[0].arrived <= aged]
        return min(live or queues, key=lambda key: queues[key][0].arrived)
