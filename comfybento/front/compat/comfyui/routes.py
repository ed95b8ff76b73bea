"""ComfyUI's server routes on the entry service, each at /x and at /api/x as ComfyUI serves them (not in the OpenAPI).

Each route sees the caller's own prompts, uploads and outputs only (front/ownership.py): another key's are
answered as ones that do not exist (`{}` from /history/{id}, a 404 from /view), left out of /queue and /history,
and left alone by /interrupt, POST /queue and POST /history. Every error answers in ComfyUI's shape
(front/renderers.py: `{"error": {type, message, details, extra_info}, "node_errors": {}}`, a bad request a 400).
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import psutil
from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from comfybento.config import get_settings
from comfybento.errors import InvalidRequest, NotFound
from comfybento.front.compat.comfyui import files, prompts, ws
from comfybento.front.editor import extension_scripts
from comfybento.front.job_routes import job_service
from comfybento.front.ownership import caller
from comfybento.front.renderers import ContractRoute
from comfybento.outputs import diskspace
from comfybento.workflows.node_info import loaded_node_info

log = logging.getLogger(__name__)


class ComfyUIRoute(ContractRoute):
    """A ComfyUI route: its errors (validation included) answer in ComfyUI's shape."""

    contract = "comfyui"


router = APIRouter(route_class=ComfyUIRoute)


def route(path: str, methods: list[str], twin: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add a route at `path` and (`twin`) at /api + `path`."""

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        for where in (path, "/api" + path) if twin else (path,):
            router.add_api_route(where, fn, methods=methods, include_in_schema=False)
        return fn

    return add


# ---------------------------------------------------------------- prompts and queue


@route("/prompt", ["POST"])
async def post_prompt(request: Request) -> JSONResponse:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequest("body: not valid JSON") from None
    diskspace.require_room()
    done = await asyncio.to_thread(prompts.submit, job_service(request), body, caller(request))
    client_id = body.get("client_id")
    if isinstance(client_id, str) and client_id:
        ws.sockets(request.app).clients.add(ws.client_key(caller(request), client_id), done.prompt_id)
    return JSONResponse({"prompt_id": done.prompt_id, "number": done.number, "node_errors": {}})


@route("/prompt", ["GET"])
def get_prompt(request: Request) -> dict[str, Any]:
    return {"exec_info": {"queue_remaining": prompts.queue_remaining(job_service(request), caller(request))}}


@route("/queue", ["GET"])
def get_queue(request: Request) -> dict[str, Any]:
    return prompts.queue(job_service(request), caller(request))


@route("/queue", ["POST"])
async def post_queue(request: Request) -> Response:
    """{"clear": true} cancels the caller's pending prompts; {"delete": [ids]} cancels those (queued or running)."""
    body, who = await _json_object(request), caller(request)
    if body.get("clear"):
        await asyncio.to_thread(prompts.cancel_prompts, job_service(request), None, ("queued",), who)
    if isinstance(body.get("delete"), list):
        ids = [str(i) for i in body["delete"]]
        await asyncio.to_thread(prompts.cancel_prompts, job_service(request), ids, ("queued", "running"), who)
    return Response(status_code=200)


@route("/interrupt", ["POST"])
async def interrupt(request: Request) -> Response:
    """Cancels the caller's running prompts (or only body["prompt_id"]); their clients get execution_interrupted."""
    body = await _json_object(request)
    ids = [str(body["prompt_id"])] if body.get("prompt_id") else None
    await asyncio.to_thread(prompts.cancel_prompts, job_service(request), ids, ("running",), caller(request))
    return Response(status_code=200)


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise InvalidRequest("body: not valid JSON") from None
    return body if isinstance(body, dict) else {}


# ---------------------------------------------------------------- history and files


@route("/history", ["GET"])
def get_history(request: Request, max_items: int | None = Query(default=None, ge=1, le=prompts.SCAN_JOBS)) -> dict[str, Any]:
    return prompts.history(job_service(request), max_items, caller(request))


@route("/history/{prompt_id}", ["GET"])
def get_history_item(prompt_id: str, request: Request) -> dict[str, Any]:
    job = prompts.visible_prompt(job_service(request), prompt_id, caller(request))
    entry = prompts.history_entry(job_service(request), job) if job is not None else None
    return {prompt_id: entry} if entry is not None else {}


@route("/history", ["POST"])
async def post_history(request: Request) -> Response:
    """{"clear": true} forgets the caller's finished prompts; {"delete": [ids]} those (their outputs go too)."""
    body, who = await _json_object(request), caller(request)
    if body.get("clear"):
        ids = [j.id for j in await asyncio.to_thread(prompts.recent_jobs, job_service(request), who) if prompts.is_prompt(j)]
        await asyncio.to_thread(prompts.delete_prompts, job_service(request), ids, who)
    if isinstance(body.get("delete"), list):
        await asyncio.to_thread(prompts.delete_prompts, job_service(request), [str(i) for i in body["delete"]], who)
    return Response(status_code=200)


@route("/view", ["GET"])
def view(request: Request, filename: str, subfolder: str = "", type: str = "output") -> Response:
    data = files.read(job_service(request), filename, subfolder, type, caller(request))
    return Response(data, media_type=files.content_type(filename), headers={"Content-Disposition": f'filename="{filename}"'})


async def _upload(request: Request) -> tuple[bytes, UploadFile, dict[str, str]]:
    diskspace.require_room()  # a 507 while the disk is below its free-space watermark
    form = await request.form()
    image = form.get("image")
    if not isinstance(image, UploadFile):
        raise InvalidRequest("image: a multipart file field 'image' is required")
    limit = get_settings().limits.max_upload_bytes
    data = await image.read(limit + 1)
    files.check_size(data, limit)
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return data, image, fields


def _answer(name: str, subfolder: str) -> dict[str, str]:
    return {"name": name, "subfolder": subfolder, "type": "input"}


@route("/upload/image", ["POST"])
async def upload_image(request: Request) -> dict[str, str]:
    data, image, fields = await _upload(request)
    if fields.get("type", "input") != "input":
        raise InvalidRequest("type: uploads go to 'input' here")
    subfolder = fields.get("subfolder", "")
    overwrite = fields.get("overwrite", "false").lower() in ("true", "1")
    name = await asyncio.to_thread(files.store_upload, job_service(request).storage, data, image.filename or "upload.png", subfolder, overwrite,
                                   caller(request).tag)
    return _answer(name, subfolder)


@route("/upload/mask", ["POST"])
async def upload_mask(request: Request) -> dict[str, str]:
    """The original image (original_ref {filename, subfolder, type}) with the uploaded mask's alpha, stored as an input."""
    data, image, fields = await _upload(request)
    try:
        ref = json.loads(fields.get("original_ref", ""))
        original = await asyncio.to_thread(files.read, job_service(request), str(ref["filename"]), str(ref.get("subfolder") or ""),
                                           str(ref.get("type") or "input"), caller(request))
    except (ValueError, KeyError, TypeError):
        raise InvalidRequest("original_ref: expected JSON {filename, subfolder, type} of an uploaded image") from None
    except NotFound:
        raise InvalidRequest(f"original_ref: no such image {ref.get('filename')!r}") from None
    masked = await asyncio.to_thread(files.apply_mask, original, data)
    subfolder = fields.get("subfolder", str(ref.get("subfolder") or ""))
    overwrite = fields.get("overwrite", "false").lower() in ("true", "1")
    name = await asyncio.to_thread(files.store_upload, job_service(request).storage, masked, image.filename or "mask.png", subfolder, overwrite,
                                   caller(request).tag)
    return _answer(name, subfolder)


# ---------------------------------------------------------------- nodes and system


@lru_cache(maxsize=1)
def _object_info() -> dict[str, Any]:
    """ComfyUI's object_info, from the node-definition snapshot the front loaded at startup."""
    return loaded_node_info(get_settings())


@route("/object_info", ["GET"])
def object_info() -> dict[str, Any]:
    return _object_info()


@route("/object_info/{node_class}", ["GET"])
def object_info_one(node_class: str) -> dict[str, Any]:
    info = _object_info()
    return {node_class: info[node_class]} if node_class in info else {}


@route("/system_stats", ["GET"])
def system_stats() -> dict[str, Any]:
    settings = get_settings()
    memory = psutil.virtual_memory()
    device = "cpu" if settings.force_cpu else "cuda"
    return {
        "system": {"os": sys.platform if sys.platform != "linux" else "posix", "ram_total": memory.total, "ram_free": memory.available,
                   "comfyui_version": "comfybento", "python_version": sys.version, "pytorch_version": "",
                   "embedded_python": False, "argv": [], "platform": platform.platform()},
        # The front does not touch the device (only the engine does): its memory is not reported here.
        "devices": [{"name": device, "type": device, "index": 0, "vram_total": 0, "vram_free": 0,
                     "torch_vram_total": 0, "torch_vram_free": 0}],
    }


@route("/free", ["POST"])
def free() -> Response:
    """Accepted as ComfyUI does; the engine keeps its models warm and manages its own memory."""
    return Response(status_code=200)


@route("/embeddings", ["GET"])
def embeddings() -> list[str]:
    folder = get_settings().models_dir / "embeddings"
    return sorted(p.stem for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


@route("/extensions", ["GET"])
def extensions() -> list[str]:
    """The editor's extension scripts, as ComfyUI lists them (served under /comfy/, front/editor.py)."""
    return extension_scripts()


@route("/models", ["GET"])
def model_folders() -> list[str]:
    root = get_settings().models_dir
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def model_folder(folder: str) -> Path:
    """A folder of the models root by its name (checkpoints, loras ...); a 404 naming it for any other name."""
    root = get_settings().models_dir / folder
    if folder.startswith(".") or "/" in folder or not root.is_dir():
        raise NotFound(f"no model folder {folder!r}")
    return root


def files_in(folder: Path) -> list[Path]:
    """The model files in a model folder, its subfolders' included, hidden ones left out."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


@route("/models/{folder}", ["GET"])
def model_files(folder: str) -> list[str]:
    root = model_folder(folder)
    return [str(p.relative_to(root)) for p in files_in(root)]


# ---------------------------------------------------------------- websocket


async def websocket(socket: WebSocket) -> None:
    """ComfyUI's /ws (front/compat/comfyui/ws.py); the API key was checked by the access middleware (header or ?token=)."""
    await ws.serve(socket, job_service(socket), caller(socket))


for _path in ("/ws", "/api/ws"):
    router.add_api_websocket_route(_path, websocket)
