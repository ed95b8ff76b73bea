"""Comfy API v2 routes under /api/v2 (spec: Comfy-Org/comfy-python-sdk spec/openapi.yaml, 2.0.0).

Left out of comfybento's own OpenAPI (include_in_schema=False): the spec is published by Comfy and its clients are the
official SDKs; in /docs.json these routes would only add untyped operations to the generated TypeScript client.
Every answer of these routes, errors included, is in the spec's shapes (errors.py). Auth is the service's: the SDKs
send `Authorization: Bearer <key>`, which the access middleware checks like on every route; jobs and assets are
the caller's own (front/ownership.py), another key's are a 404 `not_found`.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from comfybento.config import get_settings
from comfybento.errors import TooLarge
from comfybento.front import access
from comfybento.front.compat import node_ids
from comfybento.front.compat.comfy_v2.assets import AssetRecord, AssetStore, iso
from comfybento.front.compat.comfy_v2.errors import V2Error, V2Route
from comfybento.front.compat.comfy_v2.events import job_stream
from comfybento.front.compat.comfy_v2.views import API, STATES, URL_TTL_S, job_view, load_job, output_blob
from comfybento.front.job_routes import job_service
from comfybento.front.jobs.api_models import JobSubmit
from comfybento.front.jobs.records import TERMINAL_STATES, now
from comfybento.front.jobs.store import IdempotencyConflict
from comfybento.front.ownership import caller
from comfybento.limits import ENV_NAMES
from comfybento.outputs import diskspace
from comfybento.workflows.matching import match_graph

router = APIRouter(prefix=API, route_class=V2Route, include_in_schema=False)
WORKFLOW_KEY = "comfy-v2/jobs/{job_id}/workflow.json"
RANGE = re.compile(r"bytes=(\d*)-(\d*)")
MAX_DIGITS = 18  # of a Range position


class FromHash(BaseModel):
    model_config = ConfigDict(extra="ignore")
    hash: str = Field(max_length=200)
    file_path: str | None = Field(default=None, max_length=1024)
    tags: list[str] | None = None
    expires_in: int | None = Field(default=None, ge=60, le=604800)


class JobPost(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workflow: dict[str, Any]
    extra_data: dict[str, str] | None = None
    metadata: dict[str, str] | None = None


def _assets(request: Request) -> AssetStore:
    return AssetStore(job_service(request).storage)


def _origin(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _asset_json(record: AssetRecord, origin: str, created_new: bool | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": record.id, "hash": record.hash, "size_bytes": record.size_bytes, "content_type": record.content_type,
                           "file_path": record.file_path, "created_at": record.created_at, "url": f"{origin}{API}/assets/{record.id}/content",
                           "url_expires_at": iso(now() + URL_TTL_S), "expires_at": None, "job_id": record.job_id}
    if created_new is not None:
        doc["created_new"] = created_new
    return doc


def upload_limit(request: Request) -> int:
    """The largest upload any served workflow takes (COMFYBENTO_MAX_UPLOAD_BYTES, or a workflow's own larger limit)."""
    return max([get_settings().limits.max_upload_bytes, *(s.limits.max_upload_bytes for s in job_service(request).catalog.values())])


# ------------------------------------------------------------------ assets


@router.post("/assets")
async def post_asset(request: Request) -> JSONResponse:
    diskspace.require_room()  # 503 storage_full while the disk is below its free-space watermark
    form = await request.form(max_files=1, max_fields=32)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise V2Error(422, "invalid_request", "file: a multipart part named 'file' with the bytes is required")
        limit = upload_limit(request)
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise TooLarge(f"file: more than the limit of {limit} bytes ({ENV_NAMES['max_upload_bytes']})")
        content_type = str(form.get("content_type") or upload.content_type or "application/octet-stream")[:200]
        file_path = str(form.get("file_path") or upload.filename or "upload.bin")[:1024]
        expected = form.get("expected_hash")
    finally:
        await form.close()
    owner = access.key_name(request)
    record, new = await asyncio.to_thread(_assets(request).upload, data, content_type, file_path, owner,
                                          str(expected) if expected is not None else None)
    return JSONResponse(_asset_json(record, _origin(request), new), status_code=201 if new else 200)


@router.post("/assets/from-hash", status_code=201)
def asset_from_hash(body: FromHash, request: Request) -> JSONResponse:
    diskspace.require_room()
    record = _assets(request).from_hash(body.hash, body.file_path, access.key_name(request))
    return JSONResponse(_asset_json(record, _origin(request), False), status_code=201)


@router.head("/assets/by-hash/{hash_value}")
def head_by_hash(hash_value: str, request: Request) -> Response:
    return Response(status_code=200 if _assets(request).mintable(hash_value, access.key_name(request)) else 404)


@router.get("/assets/{asset_id}")
def get_asset(asset_id: str, request: Request) -> dict[str, Any]:
    who, origin = caller(request), _origin(request)
    blob = output_blob(job_service(request), asset_id, who)
    if blob is not None:
        size = len(job_service(request).storage.get(blob.key))
        return {"id": asset_id, "hash": None, "size_bytes": size, "content_type": blob.content_type, "file_path": blob.name,
                "created_at": iso(job_service(request).job(blob.job_id).created_at), "url": f"{origin}{API}/assets/{asset_id}/content",
                "url_expires_at": iso(now() + URL_TTL_S), "expires_at": None, "job_id": blob.job_id}
    return _asset_json(_assets(request).get(asset_id, who), origin)


@router.delete("/assets/{asset_id}", status_code=204)
def delete_asset(asset_id: str, request: Request) -> Response:
    if output_blob(job_service(request), asset_id, caller(request)) is not None:
        raise V2Error(409, "asset_in_use", f"asset {asset_id!r} is an output of a job; it goes when the job expires")
    _assets(request).delete(asset_id, caller(request))
    return Response(status_code=204)


@router.get("/assets/{asset_id}/content")
def asset_content(asset_id: str, request: Request, range_header: Annotated[str | None, Header(alias="range")] = None) -> Response:
    who = caller(request)
    blob = output_blob(job_service(request), asset_id, who)
    if blob is not None:
        data, media = job_service(request).storage.get(blob.key), blob.content_type
    else:
        record = _assets(request).get(asset_id, who)
        data, media = _assets(request).content(record), record.content_type
    return ranged(data, media, range_header)


# An uploaded file keeps the content type its uploader gave: never let a browser run it as a page of this origin.
SAFE = {"accept-ranges": "bytes", "x-content-type-options": "nosniff", "content-security-policy": "sandbox"}


def ranged(data: bytes, media_type: str, range_header: str | None) -> Response:
    """The bytes, or the one range asked for (206; 416 when it starts past the end)."""
    match = RANGE.fullmatch(range_header.strip()) if range_header else None
    if match is None or not (match.group(1) or match.group(2)):
        return Response(data, media_type=media_type, headers=SAFE)
    size = len(data)
    if any(len(g) > MAX_DIGITS for g in match.groups()):  # a position no file reaches: never converted
        return Response(status_code=416, headers={"content-range": f"bytes */{size}"})
    if match.group(1):
        start, end = int(match.group(1)), min(size - 1, int(match.group(2)) if match.group(2) else size - 1)
    else:
        start, end = max(0, size - int(match.group(2))), size - 1
    if start >= size or end < start:
        return Response(status_code=416, headers={"content-range": f"bytes */{size}"})
    return Response(data[start:end + 1], status_code=206, media_type=media_type,
                    headers={**SAFE, "content-range": f"bytes {start}-{end}/{size}"})


# ------------------------------------------------------------------ jobs


@router.post("/jobs", status_code=201)
def post_job(body: JobPost, request: Request, idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> JSONResponse:
    """Match the graph to a served workflow and queue it as a one-item job (the same store as /jobs: it survives restarts)."""
    diskspace.require_room()
    graph = body.workflow
    if all(k in graph for k in ("nodes", "links")):
        raise V2Error(422, "workflow_format_ui", "workflow: this is the UI export (nodes/links); submit the API-format graph (Export (API))")
    who, service = caller(request), job_service(request)
    run = match_graph(service.catalog, graph, lambda kind, literal: _assets(request).resolve_reference(kind, literal, who),
                      allow_unmatched=service.free_graphs is not None)
    key = f"comfy-v2:{idempotency_key}" if idempotency_key else None
    try:
        job, created = service.submit(JobSubmit(workflow=run.workflow, items=[run.values], idempotency_key=key), owner=who.name)
    except IdempotencyConflict:
        created = False
    if not created:
        raise V2Error(422, "idempotency_key_reuse", f"Idempotency-Key {idempotency_key!r} was already used; keys are single-use "
                      "(find the job it made with GET /api/v2/jobs/{id})")
    service.storage.put(WORKFLOW_KEY.format(job_id=job.id), json.dumps(graph).encode(), "application/json")
    node_ids.save(service.storage, job.id, run.node_ids)
    return JSONResponse(job_view(service, job, _origin(request)), status_code=201)


@router.get("/jobs")
def list_jobs(request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 50, cursor: Annotated[str | None, Query(max_length=20)] = None,
              ) -> dict[str, Any]:
    """The caller's jobs, newest first (the SDKs' list_jobs). comfybento keeps no labels: a metadata[...] filter matches nothing."""
    if cursor is not None and not (cursor.isdigit() and len(cursor) <= 9):  # an offset this service gave: < 10**9
        raise V2Error(422, "invalid_cursor", f"cursor: {cursor!r} is not a cursor this service gave")
    offset = int(cursor or 0)
    page = job_service(request).list_jobs(limit, offset, caller(request))
    filtered = any(k.startswith("metadata[") for k in request.query_params)
    items = [] if filtered else [
        {"id": j.id, "status": STATES.get(j.state, "queued"), "create_time": iso(j.created_at), "update_time": iso(j.updated_at or j.created_at),
         "workflow_name": j.workflow} for j in page]
    return {"jobs": items, "next_cursor": str(offset + limit) if len(page) == limit and not filtered else None}


@router.get("/jobs/{job_id}")
def get_job(job_id: str, request: Request) -> dict[str, Any]:
    job = load_job(job_service(request), job_id, caller(request))
    return job_view(job_service(request), job, _origin(request))


@router.get("/jobs/{job_id}/workflow")
def get_job_workflow(job_id: str, request: Request) -> dict[str, Any]:
    job = load_job(job_service(request), job_id, caller(request))
    try:
        graph = json.loads(job_service(request).storage.get(WORKFLOW_KEY.format(job_id=job.id)))
    except Exception:
        raise V2Error(404, "not_found", f"job {job_id!r} was not submitted through /api/v2/jobs: it has no stored graph") from None
    return {"workflow": graph, "format": "api"}


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    job = load_job(job_service(request), job_id, caller(request))
    if job.state not in TERMINAL_STATES:
        job = job_service(request).cancel(job.id)
    return job_view(job_service(request), job, _origin(request))


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: str, request: Request) -> StreamingResponse:
    service, origin, who = job_service(request), _origin(request), caller(request)
    job = await asyncio.to_thread(load_job, service, job_id, who)  # an unknown job (or another key's): a 404 before any stream
    return StreamingResponse(job_stream(service, job.id, origin), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
