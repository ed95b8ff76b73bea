"""The in-process fan-out of job events (front/jobs/live.py): per job or all jobs, bounded per subscriber."""

from __future__ import annotations

import asyncio

from comfybento.front.jobs.live import LAGGED, JobEvents


def test_subscribers_get_their_job_s_events_and_all_jobs_subscribers_get_every_event() -> None:
    async def go() -> None:
        live = JobEvents()
        with live.subscription("a") as only_a, live.subscription(None) as every:
            live.publish("a", {"event": "progress", "job_id": "a", "index": 0})
            live.publish("b", {"event": "item", "job_id": "b", "index": 1})
            assert [only_a.get_nowait()["job_id"]] == ["a"] and only_a.empty()
            assert [every.get_nowait()["job_id"], every.get_nowait()["job_id"]] == ["a", "b"]
        assert live.subscribers == 0  # the context manager unsubscribed both

    asyncio.run(go())


def test_a_subscriber_that_falls_behind_gets_lagged_instead_of_growing() -> None:
    async def go() -> None:
        live = JobEvents(max_queued=3)
        with live.subscription("a") as queue:
            for step in range(10):
                live.publish("a", {"event": "progress", "job_id": "a", "index": 0, "value": step})
            seen = [queue.get_nowait() for _ in range(queue.qsize())]
        assert seen[0] == LAGGED and len(seen) <= 3 and seen[-1]["value"] == 9

    asyncio.run(go())
