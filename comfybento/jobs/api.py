"""The jobs HTTP API (FastAPI, mounted on the entry service; its routes are part of the OpenAPI)."""

from __future__ import annotations

import mimetypes
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask

from comfybento.errors import ComfyBentoError
from comfybento.jobs.api_models import JobList, JobResults, JobStatus, JobSubmit
from comfybento.jobs.service import InvalidItems, JobService

app = FastAPI(title="comfybento jobs", version="1", docs_url=None, redoc_url=None, openapi_url=None)
_service: dict[str, JobService] = {}


def bind(service: JobService) -> None:
    """Give the routes the process's JobService (created when the entry service starts)."""
    _service["jobs"] = service


def jobs() -> JobService:
    if "jobs" not in _service:
        raise ComfyBentoError("the jobs service is not started yet")
    return _service["jobs"]


@app.exception_handler(ComfyBentoError)
async def _error(request: Request, exc: ComfyBentoError) -> JSONResponse:
    body: dict[str, object] = {"error": str(exc)}
    if isinstance(exc, InvalidItems):
        body["items"] = [e.model_dump() for e in exc.errors]
    return JSONResponse(body, status_code=int(exc.error_code))


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@app.post("/jobs", status_code=202, summary="Submit a batch job")
def submit(req: JobSubmit, request: Request) -> JSONResponse:
    """Validates every item (a 422 lists each bad item's index and field; nothing is queued), then returns the job id at once."""
    job, created = jobs().submit(req)
    status = jobs().status(job.id)
    return JSONResponse(status.model_dump(), status_code=202 if created else 200)


@app.get("/jobs", summary="List jobs")
def list_jobs(limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0)] = 0) -> JobList:
    service = jobs()
    return JobList(jobs=[service.status(j.id) for j in service.store.list_jobs(limit, offset)])


@app.get("/jobs/{job_id}", summary="Job status")
def status(job_id: str) -> JobStatus:
    """State, item counts, per-item progress, an estimated completion time and the webhook delivery log."""
    return jobs().status(job_id)


@app.get("/jobs/{job_id}/results", summary="Item results, paged")
def results(job_id: str, request: Request, offset: Annotated[int, Query(ge=0)] = 0,
            limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JobResults:
    return jobs().results(job_id, offset, limit, _base_url(request))


@app.post("/jobs/{job_id}/cancel", summary="Cancel a job")
def cancel(job_id: str) -> JobStatus:
    jobs().cancel(job_id)
    return jobs().status(job_id)


@app.get("/jobs/{job_id}/archive", summary="Every image of the job as one zip", response_class=FileResponse)
def archive(job_id: str) -> FileResponse:
    tmp = Path(tempfile.mkdtemp(prefix="comfybento-archive-")) / f"{job_id}.zip"
    jobs().archive(job_id, tmp)
    return FileResponse(tmp, media_type="application/zip", filename=f"{job_id}.zip",
                        background=BackgroundTask(lambda: tmp.unlink(missing_ok=True)))


@app.get("/jobs/{job_id}/files/{name}", summary="One output image (local storage)", response_class=Response)
def file(job_id: str, name: str) -> Response:
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Response(jobs().file(job_id, name), media_type=media_type)
