"""The routes ComfyUI's web editor (front/editor.py) calls beyond running prompts, each at /x and /api/x like the rest.

Real where it matters: each key's settings and saved files (users, settings, userdata: front/compat/comfyui/userdata.py),
the model folders' files and a model's safetensors metadata. An honest empty answer where comfybento has nothing to
give: no custom-node translations (/i18n), templates (/workflow_templates) or global subgraphs; one user per API key
(POST /users is refused: a new user is a new key).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from fastapi import Query, Request
from fastapi.responses import JSONResponse, Response

from comfybento.config import get_settings
from comfybento.errors import InvalidRequest, NotFound
from comfybento.front.compat.comfyui.routes import files_in, model_folder, route
from comfybento.front.compat.comfyui.userdata import UserData
from comfybento.front.ownership import caller

SAFETENSORS_HEADER_MAX_BYTES = 16 << 20


def _user(request: Request) -> UserData:
    return UserData.of(get_settings(), caller(request))


def _flag(value: str | None, default: bool = False) -> bool:
    return default if value is None else value.lower() == "true"


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        raise InvalidRequest("body: not valid JSON") from None


# ---------------------------------------------------------------- users and settings


@route("/users", ["GET"])
def get_users() -> dict[str, Any]:
    """One user per API key, already on the server: the editor keeps its settings and workflows here."""
    return {"storage": "server", "migrated": True}


@route("/users", ["POST"])
def post_users() -> None:
    raise InvalidRequest("username: each API key is one user on this service; a new user is a new key")


@route("/settings", ["GET"])
def get_settings_all(request: Request) -> dict[str, Any]:
    return _user(request).settings()


@route("/settings/{setting_id}", ["GET"])
def get_setting(setting_id: str, request: Request) -> Any:
    return _user(request).settings().get(setting_id)


@route("/settings", ["POST"])
async def post_settings(request: Request) -> Response:
    values = await _json(request)
    if not isinstance(values, dict):
        raise InvalidRequest("body: settings are a JSON object of setting id to value")
    user = _user(request)
    await asyncio.to_thread(lambda: user.save_settings({**user.settings(), **values}))
    return Response(status_code=200)


@route("/settings/{setting_id}", ["POST"])
async def post_setting(setting_id: str, request: Request) -> Response:
    value, user = await _json(request), _user(request)
    await asyncio.to_thread(lambda: user.save_settings({**user.settings(), setting_id: value}))
    return Response(status_code=200)


# ---------------------------------------------------------------- userdata


@route("/userdata", ["GET"])
def list_userdata(request: Request, dir: str = Query(default=""), recurse: str | None = None, full_info: str | None = None,
                  split: str | None = None) -> list[Any]:
    if not dir:
        raise InvalidRequest("dir: the folder to list is required (?dir=workflows)")
    return _user(request).listing(dir, _flag(recurse), _flag(full_info), _flag(split))


@route("/v2/userdata", ["GET"], twin=False)  # /api/v2 is Comfy API v2's: the editor's /comfy/api/v2/userdata lands here
def list_userdata_v2(request: Request, path: str = "") -> list[dict[str, Any]]:
    return _user(request).tree(path)


@route("/userdata/{file:path}/move/{dest:path}", ["POST"])
def move_userdata(file: str, dest: str, request: Request, overwrite: str | None = None, full_info: str | None = None) -> Any:
    user = _user(request)
    moved = user.move(file, dest, _flag(overwrite, True))
    return user.info(moved) if _flag(full_info) else moved.relative_to(user.root).as_posix()


@route("/userdata/{file:path}", ["GET"])
def get_userdata(file: str, request: Request) -> Response:
    data = _user(request).read(file)
    media = "application/json" if file.endswith(".json") else "text/css" if file.endswith(".css") else "application/octet-stream"
    return Response(data, media_type=media)


@route("/userdata/{file:path}", ["POST"])
async def post_userdata(file: str, request: Request, overwrite: str | None = None, full_info: str | None = None) -> Any:
    user, data = _user(request), await request.body()  # the request edge caps the body; write() the file's limit
    written = await asyncio.to_thread(user.write, file, data, _flag(overwrite, True))
    return JSONResponse(user.info(written) if _flag(full_info) else written.relative_to(user.root).as_posix())


@route("/userdata/{file:path}", ["DELETE"])
def delete_userdata(file: str, request: Request) -> Response:
    _user(request).delete(file)
    return Response(status_code=204)


# ---------------------------------------------------------------- models


@route("/experiment/models", ["GET"])
def experiment_models() -> list[dict[str, Any]]:
    root = get_settings().models_dir
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    return [{"name": name, "folders": [name]} for name in folders]


@route("/experiment/models/{folder}", ["GET"])
def experiment_model_files(folder: str) -> list[dict[str, Any]]:
    root = model_folder(folder)
    return [{"name": p.relative_to(root).as_posix(), "pathIndex": 0, "modified": p.stat().st_mtime, "size": p.stat().st_size}
            for p in files_in(root)]


@route("/view_metadata/{folder}", ["GET"])
def view_metadata(folder: str, filename: str) -> dict[str, Any]:
    """A safetensors model's `__metadata__` (a 404 for a file that is not one, or has none)."""
    root = model_folder(folder)
    path = (root / filename).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file() or path.suffix != ".safetensors":
        raise NotFound(f"no safetensors model {filename!r} in {folder!r}")
    with path.open("rb") as f:
        head = f.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        try:
            header = json.loads(f.read(size)) if 0 < size <= SAFETENSORS_HEADER_MAX_BYTES else {}
        except ValueError:
            header = {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise NotFound(f"{filename!r} in {folder!r} has no metadata")
    return metadata


# ---------------------------------------------------------------- what comfybento has none of


@route("/features", ["GET"])
def features() -> dict[str, Any]:
    return {"supports_preview_metadata": False, "max_upload_size": get_settings().limits.max_upload_bytes}


@route("/i18n", ["GET"])
def i18n() -> dict[str, Any]:
    return {}  # no custom-node translations: the editor has its own


@route("/workflow_templates", ["GET"])
def workflow_templates() -> dict[str, Any]:
    return {}  # custom nodes' example workflows: none are served


@route("/global_subgraphs", ["GET"])
def global_subgraphs() -> dict[str, Any]:
    return {}


@route("/global_subgraphs/{subgraph_id}", ["GET"])
def global_subgraph(subgraph_id: str) -> dict[str, Any]:
    raise NotFound(f"no global subgraph {subgraph_id!r}")
