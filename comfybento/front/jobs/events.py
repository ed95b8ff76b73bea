"""Webhook event payloads (Standard Webhooks style: type, timestamp, data)."""

from __future__ import annotations

from typing import Any

from comfybento.front.jobs.records import ItemRecord, JobRecord, now


def job_event(job: JobRecord) -> dict[str, Any]:
    return {
        "type": f"job.{job.state}",
        "timestamp": now(),
        "data": {"job_id": job.id, "workflow": job.workflow, "state": job.state, "total": job.total, "counts": job.counts},
    }


def item_event(job: JobRecord, item: ItemRecord) -> dict[str, Any]:
    return {
        "type": f"item.{item.state}",
        "timestamp": now(),
        "data": {"job_id": job.id, "index": item.index, "state": item.state, "seed": item.seed,
                 "result": item.result, "error": item.error},
    }
