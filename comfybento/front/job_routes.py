"""The jobs HTTP API: a FastAPI router of the front's root app (front/root.py); its routes are part of the OpenAPI.

Every route answers for the caller's own jobs only (front/ownership.py): another key's is a 404. The JobService comes
from the root app's state (`job_service`), never from a module global.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection

from comfybento.errors import ComfyBentoError, InvalidRequest
from comfybento.front import access, stream
from comfybento.front.http import request_id
from comfybento.front.jobs.api_models import JobEstimate, JobList, JobResults, JobStatus, JobSubmit, UsageReport
from comfybento.front.jobs.service import JobService
from comfybento.front.jobs.usage import MAX_DAYS, report
from comfybento.front.ownership import caller
from comfybento.outputs import diskspace
from comfybento.outputs.media import media_type_of

log = logging.getLogger(__name__)
router = APIRouter()


def job_service(conn: HTTPConnection) -> JobService:
    """The process's JobService, which the root app holds in its state once the jobs start (front/root.py, front/app.py)."""
    service: JobService | None = getattr(conn.app.state, "jobs", None)
    if service is None:
        raise ComfyBentoError("the jobs service is not started yet")
    return service


def _known_query(request: Request) -> None:
    """A query parameter the route does not take is a 422 naming it: a typo (`?limt=5`) is not silently ignored."""
    route = request.scope.get("route")
    known = {p.alias for p in route.dependant.query_params} if isinstance(route, APIRoute) else set()
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise InvalidRequest(f"unknown query parameter {', '.join(map(repr, unknown))}; this route takes {', '.join(sorted(known))}")


KNOWN_QUERY = [Depends(_known_query)]


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.post("/jobs", status_code=202, summary="Submit a batch job")
async def submit(req: JobSubmit, request: Request) -> JSONResponse:
    """Validates every item (a 422 lists each bad item's index and field; nothing is queued), then returns the job id at once.

    The job belongs to the caller's API key: its items' images and GPU-seconds are charged to that key as they finish, and a
    job that makes more images than the key's daily quota has left is refused up front (429). `POST /jobs/estimate` with
    the same body tells what it would cost, queueing nothing.
    """
    quota = await access.images_left(request)
    diskspace.require_room()  # a 507 while the disk is below its free-space watermark: nothing is queued
    service = job_service(request)
    job, created = await asyncio.to_thread(service.submit, req, access.key_name(request), quota)
    status = await asyncio.to_thread(service.status, job.id, caller(request))
    return JSONResponse(status.model_dump(), status_code=202 if created else 200)


@router.post("/jobs/estimate", summary="What a batch job would cost (nothing is queued)")
async def estimate(req: JobSubmit, request: Request) -> JobEstimate:
    """The same body as `POST /jobs`, validated the same way (a 422 lists each bad item), answered without queueing anything:
    items after fan-out, result-cache hits, images, estimated GPU-seconds (the workflow's measured cost per unit of work)
    and the key's remaining images quota."""
    return await asyncio.to_thread(job_service(request).estimate, req, await access.images_left(request))


# Query bounds: anything outside them is a 422 naming the parameter, never a store error.
Offset = Annotated[int, Query(ge=0, le=10**9, description="Rows to skip.")]


@router.get("/jobs", summary="List jobs", dependencies=KNOWN_QUERY)
def list_jobs(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Offset = 0) -> JobList:
    service = job_service(request)  # the caller's jobs, newest first (an operator key's: every job)
    return JobList(jobs=[service.status(j.id) for j in service.list_jobs(limit, offset, caller(request))])


@router.get("/jobs/{job_id}", summary="Job status")
def status(job_id: str, request: Request) -> JobStatus:
    """State, item counts, per-item progress, an estimated completion time and the webhook delivery log."""
    return job_service(request).status(job_id, caller(request))


@router.get("/jobs/{job_id}/results", summary="Item results, paged", dependencies=KNOWN_QUERY)
def results(job_id: str, request: Request, offset: Offset = 0,
            limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JobResults:
    return job_service(request).results(job_id, offset, limit, _base_url(request), caller(request))


@router.get("/jobs/{job_id}/events", summary="Live events of a job (Server-Sent Events)", response_class=StreamingResponse)
async def events(job_id: str, request: Request) -> StreamingResponse:
    """The job's status as a `job` event, then its items' `progress` and `item` events (items already finished first) and
    `job` again whenever its state or counts change; the stream ends after a `job` whose state is terminal."""
    service = job_service(request)
    await asyncio.to_thread(service.job, job_id, caller(request))  # an unknown job (or another key's): a 404 before any stream
    return stream.EventStreamResponse(stream.job_events(service, job_id, _base_url(request)))


@router.post("/jobs/{job_id}/cancel", summary="Cancel a job")
def cancel(job_id: str, request: Request) -> JobStatus:
    service = job_service(request)
    service.cancel(job_id, caller(request))
    return service.status(job_id)


@router.post("/jobs/{job_id}/retry", summary="Retry the failed items of a finished job")
def retry(job_id: str, request: Request) -> JobStatus:
    """Re-queues the items of a `failed` job that failed, with the same parameters and seeds; succeeded items keep their results.

    Idempotent: while the retried items are queued or running, or when nothing failed (a succeeded, running or cancelled job),
    nothing changes. The answer is the job's status either way.
    """
    service = job_service(request)
    service.job(job_id, caller(request))  # another key's job: a 404, nothing retried
    job, count = service.retry(job_id)
    if count:
        log.info("request %s: job %s: %d failed items queued again", request_id(), job.id, count)
    return service.status(job_id, caller(request))


@router.get("/usage", summary="Usage per API key and day", dependencies=KNOWN_QUERY)
def usage(request: Request, days: Annotated[int, Query(ge=1, le=MAX_DAYS, description="UTC days to show, up to today.")] = 7) -> UsageReport:
    """Requests (generation requests and job items that succeeded), images and GPU-seconds per UTC day, kept in the job store.

    A key sees its own usage; an operator key every key's; with API keys off, the service's totals.
    """
    key = access.request_key(request)
    return report(job_service(request).store, days, key.name if key is not None else None, keys_on=key is not None,
                  operator=access.is_operator(key))


@router.get("/jobs/{job_id}/archive", summary="Every output of the job as one zip", response_class=StreamingResponse)
def archive(job_id: str, request: Request) -> StreamingResponse:
    """The zip is built in a temporary folder that is removed before the first byte is sent (the open file is streamed)."""
    folder = Path(tempfile.mkdtemp(prefix="comfybento-archive-"))
    try:
        path = job_service(request).archive(job_id, folder / f"{job_id}.zip", caller(request))
        size = path.stat().st_size
        fh = path.open("rb")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    headers = {"content-length": str(size), "content-disposition": f'attachment; filename="{job_id}.zip"'}
    return StreamingResponse(_chunks(fh), media_type="application/zip", headers=headers)


def _chunks(fh: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    with fh:
        while chunk := fh.read(size):
            yield chunk


@router.get("/jobs/{job_id}/files/{name}", summary="One output file of a job (local storage)", response_class=Response)
def file(job_id: str, name: str, request: Request) -> Response:
    return Response(job_service(request).file(job_id, name, caller(request)), media_type=media_type_of(name))
