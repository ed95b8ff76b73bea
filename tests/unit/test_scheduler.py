"""The scheduler's contract (comfybento/scheduling/scheduler.py), without ComfyUI: a fake executor thread.

Every test runs the default policy (scheduling/policy.py OldestFirst); the last one gives the scheduler another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence

import pytest

from comfybento.errors import Cancelled, NodeExecutionError, OutOfMemory, TooLarge
from comfybento.scheduling.events import Failed, Queued, Started
from comfybento.scheduling.policy import OldestFirst, Policy, QueuedJob
from comfybento.scheduling.scheduler import Job, Scheduler


class Recorder:
    """An executor that records each batch (job payloads) and takes `seconds` per batch."""

    def __init__(self, seconds: float = 0.0, fail: object = None) -> None:
        self.seconds = seconds
        self.fail = fail
        self.batches: list[list[str]] = []
        self.started = threading.Event()

    def __call__(self, jobs: list[Job[str]]) -> None:
        self.batches.append([j.payload for j in jobs])
        self.started.set()
        if callable(self.fail):
            self.fail(jobs)
        time.sleep(self.seconds)


def _job(key: str, payload: str, max_batch: int = 8, can_batch: bool = True, events: list | None = None) -> Job[str]:
    sink = events.append if events is not None else (lambda e: None)
    return Job(key=key, payload=payload, max_batch=max_batch, can_batch=can_batch, sink=sink)


def _serve(scheduler: Scheduler[str], execute: Recorder) -> threading.Thread:
    thread = threading.Thread(target=scheduler.run_forever, args=(execute,), daemon=True)
    thread.start()
    return thread


def _drain(scheduler: Scheduler[str], thread: threading.Thread) -> None:
    scheduler.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_idle_executor_dispatches_at_once():
    scheduler: Scheduler[str] = Scheduler()
    execute = Recorder()
    thread = _serve(scheduler, execute)
    time.sleep(0.05)  # the executor is idle and waiting
    started = time.monotonic()
    scheduler.submit(_job("a", "x"))
    assert execute.started.wait(2)
    assert time.monotonic() - started < 0.05  # no batching window at low load
    _drain(scheduler, thread)
    assert execute.batches == [["x"]]


def test_arrivals_during_an_execution_form_the_next_batch():
    scheduler: Scheduler[str] = Scheduler()
    execute = Recorder(seconds=0.3)
    thread = _serve(scheduler, execute)
    scheduler.submit(_job("a", "first"))
    assert execute.started.wait(2)
    for i in range(6):
        scheduler.submit(_job("a", f"r{i}"))
    _drain(scheduler, thread)
    assert execute.batches == [["first"], [f"r{i}" for i in range(6)]]


def test_batches_are_capped_per_key_and_keys_never_mix():
    scheduler: Scheduler[str] = Scheduler()
    for i in range(5):
        scheduler.submit(_job("a", f"a{i}", max_batch=2))
    scheduler.submit(_job("b", "b0", max_batch=2))
    scheduler.submit(_job("a", "solo", can_batch=False))
    execute = Recorder()
    _drain(scheduler, _serve(scheduler, execute))
    # first come, first served across queues: b0 arrived after a0..a4, "solo" last of all
    assert execute.batches == [["a0", "a1"], ["a2", "a3"], ["a4"], ["b0"], ["solo"]]


def test_oldest_waiting_queue_goes_next_so_nothing_starves():
    """A busy key with a full queue cannot keep a rare key waiting for more than one batch."""
    scheduler: Scheduler[str] = Scheduler()
    execute = Recorder(seconds=0.02)
    thread = _serve(scheduler, execute)
    scheduler.submit(_job("busy", "warm"))
    assert execute.started.wait(2)
    for i in range(20):
        scheduler.submit(_job("busy", f"b{i}", max_batch=4))
    scheduler.submit(_job("rare", "r"))
    for i in range(20, 40):
        scheduler.submit(_job("busy", f"b{i}", max_batch=4))
    _drain(scheduler, thread)
    order = [batch for batch in execute.batches]
    rare_at = order.index(["r"])
    # ahead of "r": the warm-up batch and the busy batches holding jobs that arrived before it (b0..b19: 5 batches)
    assert rare_at <= 1 + 5
    assert sorted(p for batch in order for p in batch) == sorted(["warm", "r", *(f"b{i}" for i in range(40))])


def test_out_of_memory_splits_in_halves_and_caps_the_key():
    scheduler: Scheduler[str] = Scheduler()
    events: list = []

    def too_big(jobs):
        if len(jobs) > 2:
            raise OutOfMemory("simulated")

    for i in range(8):
        scheduler.submit(_job("k", f"j{i}", events=events))
    execute = Recorder(fail=too_big)
    while (batch := scheduler.next_batch(timeout=0.1)) is not None:
        scheduler.run(batch, execute)
    assert [len(b) for b in execute.batches] == [8, 4, 2, 2, 4, 2, 2]
    assert scheduler.largest_fit("k") == 2
    assert not [e for e in events if isinstance(e, Failed)]
    execute.batches.clear()
    for i in range(8):
        scheduler.submit(_job("k", f"again{i}"))
    scheduler.stop()
    scheduler.run_forever(execute)
    assert [len(b) for b in execute.batches] == [2, 2, 2, 2]  # the learned cap is used straight away


def test_a_failing_request_does_not_fail_its_neighbours():
    scheduler: Scheduler[str] = Scheduler()
    events: dict[str, list] = {}

    def poison(jobs):
        if any(j.payload == "bad" for j in jobs):
            raise NodeExecutionError("3", "KSampler", "boom")

    for name in ("ok1", "bad", "ok2"):
        scheduler.submit(_job("k", name, events=events.setdefault(name, [])))
    execute = Recorder(fail=poison)
    _drain(scheduler, _serve(scheduler, execute))
    assert execute.batches == [["ok1", "bad", "ok2"], ["ok1"], ["bad"], ["ok2"]]
    failed = [e for e in events["bad"] if isinstance(e, Failed)]
    assert len(failed) == 1 and "node 3 (KSampler)" in str(failed[0].error)
    assert not [e for e in events["ok1"] + events["ok2"] if isinstance(e, Failed)]


def test_out_of_memory_of_a_single_request_is_its_failure_as_too_large_not_retry_later():
    scheduler: Scheduler[str] = Scheduler()
    events: list = []

    def no_room(jobs):
        raise OutOfMemory("no room")

    scheduler.submit(_job("k", "x", events=events))
    scheduler.stop()
    scheduler.run_forever(Recorder(fail=no_room))
    error = events[-1].error
    assert isinstance(events[-1], Failed) and isinstance(error, TooLarge) and int(error.error_code) == 413
    assert "does not fit" in str(error) and "no room" in str(error)


class Interruptible(Recorder):
    """An executor whose batch runs until interrupted (like ComfyUI's interrupt flag), or `seconds` pass."""

    def __init__(self, seconds: float = 5.0) -> None:
        super().__init__()
        self.interrupted = threading.Event()
        self.seconds = seconds

    def __call__(self, jobs: list[Job[str]]) -> None:
        self.batches.append([j.payload for j in jobs])
        self.started.set()
        if self.interrupted.wait(self.seconds):
            self.interrupted.clear()
            raise NodeExecutionError("3", "KSampler", "interrupted")


def test_running_batch_is_interrupted_once_every_caller_left_and_never_rerun():
    execute = Interruptible()
    scheduler: Scheduler[str] = Scheduler(on_abandoned=execute.interrupted.set)
    events: dict[str, list] = {"a": [], "b": []}
    jobs = {name: _job("k", name, events=events[name]) for name in events}
    for job in jobs.values():
        scheduler.submit(job)
    thread = _serve(scheduler, execute)
    assert execute.started.wait(2)
    assert not scheduler.cancel(jobs["a"])
    time.sleep(0.1)
    assert not execute.interrupted.is_set()  # "b" still waits for the shared batch
    started = time.monotonic()
    scheduler.cancel(jobs["b"])
    _drain(scheduler, thread)
    assert time.monotonic() - started < 2  # interrupted, not run to its end
    assert execute.batches == [["a", "b"]]  # no one-by-one rerun of abandoned jobs
    for name in events:
        assert isinstance(events[name][-1], Failed) and isinstance(events[name][-1].error, Cancelled)


def test_a_caller_that_left_is_not_rerun_when_its_shared_batch_fails():
    scheduler: Scheduler[str] = Scheduler(on_abandoned=lambda: None)
    events: dict[str, list] = {n: [] for n in ("ok", "gone", "bad")}
    jobs = {name: _job("k", name, events=events[name]) for name in events}

    def poison(batch):
        scheduler.cancel(jobs["gone"])  # its caller leaves while the batch runs
        if any(j.payload == "bad" for j in batch):
            raise NodeExecutionError("3", "KSampler", "boom")

    for job in jobs.values():
        scheduler.submit(job)
    execute = Recorder(fail=poison)
    _drain(scheduler, _serve(scheduler, execute))
    assert execute.batches == [["ok", "gone", "bad"], ["ok"], ["bad"]]
    assert isinstance(events["gone"][-1].error, Cancelled)
    assert not [e for e in events["ok"] if isinstance(e, Failed)]


def test_events_queued_with_position_then_started():
    scheduler: Scheduler[str] = Scheduler()
    events: list[list] = [[], [], []]
    for i in range(3):
        scheduler.submit(_job("k", str(i), events=events[i]))
    scheduler.stop()
    scheduler.run_forever(Recorder())
    assert [e[0] for e in events] == [Queued(0), Queued(1), Queued(2)]
    assert all(isinstance(e[1], Started) and e[1].batch_size == 3 for e in events)


def test_cancel_drops_a_queued_request():
    scheduler: Scheduler[str] = Scheduler()
    events: list = []
    keep, drop = _job("k", "keep"), _job("k", "drop", events=events)
    scheduler.submit(keep)
    scheduler.submit(drop)
    assert scheduler.cancel(drop) and scheduler.queued() == 1
    assert isinstance(events[-1], Failed) and isinstance(events[-1].error, Cancelled)
    scheduler.stop()
    execute = Recorder()
    scheduler.run_forever(execute)
    assert execute.batches == [["keep"]]
    assert not scheduler.cancel(keep)  # already ran: only flagged


def test_queued_by_counts_the_waiting_jobs_per_group_not_the_running_ones():
    scheduler: Scheduler[str] = Scheduler()
    workflow = {"a": "txt2img", "b": "txt2img", "c": "img2img"}
    jobs = [_job(key, f"{key}{i}", max_batch=2) for key in "abc" for i in range(2)]
    jobs.append(_job("c", "c-solo", can_batch=False))
    for job in jobs:
        scheduler.submit(job)
    group = lambda job: workflow[job.key]  # noqa: E731
    assert scheduler.queued_by(group) == {"txt2img": 4, "img2img": 3}
    batch = scheduler.next_batch(timeout=1)
    assert batch is not None and [j.payload for j in batch] == ["a0", "a1"]
    assert scheduler.queued_by(group) == {"txt2img": 2, "img2img": 3}  # the running batch is no longer queued
    scheduler.cancel(jobs[-1])
    assert scheduler.queued_by(group) == {"txt2img": 2, "img2img": 2}
    scheduler.fail_queued(RuntimeError("drain deadline"))
    assert scheduler.queued_by(group) == {}


def test_stop_drains_then_refuses_and_fail_queued_ends_the_rest():
    scheduler: Scheduler[str] = Scheduler()
    left: list = []
    scheduler.submit(_job("k", "queued", events=left))
    scheduler.stop()
    late: list = []
    scheduler.submit(_job("k", "late", events=late))
    assert isinstance(late[-1], Failed) and "shutting down" in str(late[-1].error)
    assert scheduler.fail_queued(RuntimeError("drain deadline")) == 1
    assert isinstance(left[-1], Failed)
    assert scheduler.next_batch(timeout=0.1) is None


def test_idle_time_with_work_waiting_is_accounted():
    now = [0.0]
    scheduler: Scheduler[str] = Scheduler(clock=lambda: now[0])
    scheduler.submit(_job("k", "a"))
    now[0] = 1.0  # queued, executor idle for 1 s
    batch = scheduler.next_batch()
    assert batch is not None
    scheduler.submit(_job("k", "b"))
    now[0] = 3.0  # executing for 2 s while "b" waits

    def advance(jobs):
        now[0] += 0.0

    scheduler.run(batch, advance)
    stats = scheduler.stats()
    assert stats.idle_with_work_s == pytest.approx(1.0)
    assert stats.busy_s == pytest.approx(2.0)
    assert stats.queued_s == pytest.approx(3.0)


class ClosedLoop:
    """n clients that each send their next request shortly after their previous one finished."""

    def __init__(self, scheduler: Scheduler[str], clients: int, rounds: int, exec_s: float, return_s: float) -> None:
        self.scheduler, self.rounds, self.exec_s, self.return_s = scheduler, rounds, exec_s, return_s
        self.batches: list[int] = []
        self.left = {f"c{i}": rounds for i in range(clients)}
        self.waits: list[float] = []

    def send(self, client: str) -> None:
        self.scheduler.submit(Job(key="k", payload=client, max_batch=16))

    def __call__(self, jobs: list[Job[str]]) -> None:
        self.batches.append(len(jobs))
        self.waits += [time.monotonic() - j.arrived for j in jobs]
        time.sleep(self.exec_s)
        for i, job in enumerate(jobs):  # the callers come back one after another
            self.left[job.payload] -= 1
            if self.left[job.payload]:
                threading.Timer(self.return_s * (i + 1), self.send, args=(job.payload,)).start()

    def run(self) -> None:
        thread = _serve(self.scheduler, self)
        for client in self.left:
            self.send(client)
        deadline = time.monotonic() + 20
        while any(self.left.values()) and time.monotonic() < deadline:
            time.sleep(0.01)
        _drain(self.scheduler, thread)


def test_under_load_batches_stay_full_instead_of_alternating():
    loop = ClosedLoop(Scheduler(), clients=8, rounds=6, exec_s=0.4, return_s=0.005)
    loop.run()
    # callers come back within ~40 ms; the window is 25% of 0.4 s: batches stay (mostly) full
    assert sum(loop.batches) == 48 and loop.batches.count(8) >= 4, loop.batches


def test_without_coalescing_batches_split_into_the_first_callers_back_and_the_rest():
    """What coalescing prevents: 8, 2, 6, 3, 5, 4, ... (the callers back first run apart from the rest)."""
    loop = ClosedLoop(Scheduler(coalesce_max_s=0.0), clients=8, rounds=6, exec_s=0.2, return_s=0.005)
    loop.run()
    assert sum(loop.batches) == 48 and loop.batches.count(8) <= 2 and len(loop.batches) >= 9, loop.batches


def test_a_lone_client_is_never_held_back():
    loop = ClosedLoop(Scheduler(), clients=1, rounds=5, exec_s=0.1, return_s=0.001)
    loop.run()
    assert loop.batches == [1] * 5 and max(loop.waits) < 0.05, loop.waits


def _fake_clock_scheduler(now: list[float]) -> Scheduler[str]:
    return Scheduler(clock=lambda: now[0], coalesce_fraction=0.25, coalesce_max_s=0.25)


def _run_batch(scheduler: Scheduler[str], now: list[float], seconds: float) -> list[str]:
    batch = scheduler.next_batch()
    assert batch is not None

    def takes(jobs):
        now[0] += seconds

    scheduler.run(batch, takes)
    return [j.payload for j in batch]


def test_coalescing_waits_a_bounded_time_for_the_callers_coming_back():
    now = [0.0]
    scheduler = _fake_clock_scheduler(now)
    for i in range(4):
        scheduler.submit(_job("k", f"a{i}", max_batch=16))
    assert len(_run_batch(scheduler, now, 4.0)) == 4  # a batch of 4 that took 4 s, ended at t=4
    now[0] += 0.01
    scheduler.submit(_job("k", "back", max_batch=16))  # one of its callers came back
    assert scheduler._coalesce_wait("k") == pytest.approx(0.24)  # until t = 4 + min(25% of 4 s, 0.25 s)
    now[0] += 0.3
    assert scheduler._coalesce_wait("k") == 0.0
    assert _run_batch(scheduler, now, 1.0) == ["back"]


def test_coalescing_waits_are_accounted_apart_from_idle_time():
    scheduler: Scheduler[str] = Scheduler(coalesce_fraction=1.0, coalesce_max_s=0.2)
    for i in range(2):
        scheduler.submit(_job("k", f"a{i}", max_batch=8))
    scheduler.run(scheduler.next_batch(), lambda jobs: time.sleep(0.2))
    before = scheduler.stats()
    scheduler.submit(_job("k", "back", max_batch=8))  # one of two callers back: waits up to 0.2 s for the other
    assert scheduler.next_batch() is not None
    after = scheduler.stats()
    assert after.coalescing_s - before.coalescing_s > 0.1
    assert after.idle_with_work_s - before.idle_with_work_s < 0.05


def test_no_wait_after_a_full_batch_or_when_the_queue_fills_one():
    now = [0.0]
    scheduler = _fake_clock_scheduler(now)
    for i in range(5):
        scheduler.submit(_job("k", f"a{i}", max_batch=2))
    assert _run_batch(scheduler, now, 1.0) == ["a0", "a1"]  # full: the rest goes at once
    assert scheduler._coalesce_wait("k") == 0.0


def test_callers_that_do_not_come_back_soon_cause_no_wait():
    """An open queue (e.g. independent users, or jobs): the learned return rate drops, and so does the waiting."""
    now = [0.0]
    scheduler = _fake_clock_scheduler(now)
    for i in range(6):
        for j in range(4):
            scheduler.submit(_job("k", f"r{i}-{j}", max_batch=16))
            now[0] += 0.5  # arrivals spread out, never right after a batch ended
        _run_batch(scheduler, now, 1.0)
        now[0] += 1.0
    assert scheduler._return_rate["k"] < 0.1
    for j in range(4):
        scheduler.submit(_job("k", f"last{j}", max_batch=16))
    _run_batch(scheduler, now, 1.0)
    now[0] += 0.01
    scheduler.submit(_job("k", "new", max_batch=16))  # right after the batch: with a return rate of 1 it would wait
    assert scheduler._coalesce_wait("k") == 0.0


def test_live_jobs_go_before_background_ones_and_fill_batches_first():
    """Point 4: a job's backlog never makes a live request wait behind it; job items fill the batch's free places."""
    scheduler: Scheduler[str] = Scheduler(coalesce_max_s=0)
    for i in range(10):
        background = _job("a", f"job{i}", max_batch=4)
        background.background = True
        scheduler.submit(background)
    scheduler.submit(_job("a", "live0", max_batch=4))
    scheduler.submit(_job("a", "live1", max_batch=4))
    first = scheduler.next_batch(timeout=1)
    assert first is not None and [j.payload for j in first] == ["live0", "live1", "job0", "job1"]
    scheduler.run(first, lambda jobs: None)
    scheduler.submit(_job("a", "live2", max_batch=4))
    second = scheduler.next_batch(timeout=1)
    assert second is not None and [j.payload for j in second] == ["live2", "job2", "job3", "job4"]
    scheduler.run(second, lambda jobs: None)
    rest = []
    while (batch := scheduler.next_batch(timeout=0.05)) is not None:
        rest += [j.payload for j in batch]
        scheduler.run(batch, lambda jobs: None)
    assert rest == [f"job{i}" for i in range(5, 10)]  # background jobs keep their order


def test_a_background_queue_waits_for_live_ones_until_it_has_waited_too_long():
    """Across queues: a live head goes before an older background head (a job's items, a heavy request) ..."""
    now = [100.0]
    scheduler: Scheduler[str] = Scheduler(clock=lambda: now[0], coalesce_max_s=0, policy=OldestFirst(background_max_wait_s=30))
    heavy = _job("big", "heavy")
    heavy.background = True
    scheduler.submit(heavy)
    now[0] += 1
    scheduler.submit(_job("small", "live0"))
    batch = scheduler.next_batch(timeout=0)
    assert batch is not None and [j.payload for j in batch] == ["live0"]
    scheduler.run(batch, lambda jobs: None)
    now[0] += 1
    scheduler.submit(_job("small", "live1"))
    now[0] += 29  # ... until the background head has waited 30 s: then by age, so it never starves
    batch = scheduler.next_batch(timeout=0)
    assert batch is not None and [j.payload for j in batch] == ["heavy"]
    scheduler.run(batch, lambda jobs: None)
    batch = scheduler.next_batch(timeout=0)
    assert batch is not None and [j.payload for j in batch] == ["live1"]


class FullestFirst:
    """Another policy: the longest queue goes next (ties: the first key); records what it was shown."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, int], float]] = []

    def next_queue(self, queues: Mapping[str, Sequence[QueuedJob]], now: float) -> str:
        self.seen.append(({key: len(queue) for key, queue in queues.items()}, now))
        return max(sorted(queues), key=lambda key: len(queues[key]))


def test_the_scheduler_serves_the_queue_its_policy_chooses():
    """The policy seam: the same arrivals, batched by the default policy (oldest head first) and by another."""
    def batches(policy: Policy | None) -> list[list[str]]:
        now = [0.0]
        scheduler: Scheduler[str] = Scheduler(clock=lambda: now[0], coalesce_max_s=0, policy=policy)
        for key, payload in (("a", "a0"), ("b", "b0"), ("b", "b1"), ("c", "c0"), ("c", "c1"), ("c", "c2")):
            now[0] += 1
            scheduler.submit(_job(key, payload, max_batch=2))
        served = []
        while (batch := scheduler.next_batch(timeout=0)) is not None:
            served.append([j.payload for j in batch])
            scheduler.run(batch, lambda jobs: None)
        return served

    assert batches(None) == batches(OldestFirst()) == [["a0"], ["b0", "b1"], ["c0", "c1"], ["c2"]]
    fullest = FullestFirst()
    assert batches(fullest) == [["c0", "c1"], ["b0", "b1"], ["a0"], ["c2"]]
    assert fullest.seen[0] == ({"a": 1, "b": 2, "c": 3}, 6.0)  # every waiting queue, on the scheduler's clock
