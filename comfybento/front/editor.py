"""ComfyUI's own web editor (the `comfyui-frontend-package` wheel) at /comfy/, on top of ComfyUI's routes.

The editor computes its API base from the page's path: loaded from /comfy/, it calls /comfy/api/<route> and opens
its websocket at /comfy/ws. `EditorMiddleware` (on the entry service, ahead of the API keys) does three things:

- GET/HEAD of /comfy/... answers the wheel's static files (found where the package is installed, never copied):
  index.html revalidated on every load, content-hashed assets cached for a year, the rest for a day; and
  /comfy/templates/<file> the official workflow templates' files, as ComfyUI serves them (the comfyui-workflow-templates
  packages: their index.json lists them, the editor's template browser shows them); /comfy/extensions/<module>/<file>
  a custom node module's web folder (its WEB_DIRECTORY, from the node-definition snapshot): the scripts /extensions
  lists (`extension_scripts`), which the editor imports, and what they load beside them;
- /comfy/api/<route> and /comfy/ws become ComfyUI's own /<route> and /ws (front/compat/comfyui/), for ComfyUI's
  routes only (`renderers.COMFYUI_ROUTES`): the editor reaches nothing else of the service;
- keys: a browser cannot add an Authorization header to the editor's requests, so the key is given once on the
  page /comfy/login, which POSTs it (as a Bearer header, checked by the API keys like any request) to
  /comfy/login; that answers with an HttpOnly, SameSite=Strict cookie scoped to /comfy. The middleware turns the
  cookie into `Authorization: Bearer <key>` on the editor's API calls (never when the request already has an
  Authorization header, nor when its Origin is another site's). With keys on, /comfy/ without the cookie goes to
  the login page. The keys, limits and per-key isolation then apply to the editor's calls as to any other client.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.responses import FileResponse, RedirectResponse

from comfybento.config import get_settings
from comfybento.front.access import parse_bearer
from comfybento.front.keys import BEARER_TOKEN
from comfybento.front.renderers import COMFYUI_ROUTES
from comfybento.front.renderers import EDITOR_PREFIX as PREFIX
from comfybento.workflows.node_info import loaded_web_dirs

COOKIE = "comfybento_key"
COOKIE_MAX_AGE_S = 7 * 24 * 3600
LOGIN_PAGE = Path(__file__).resolve().parent / "static" / "editor-login.html"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".json": "application/json",
               ".map": "application/json", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
               ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf", ".eot": "application/vnd.ms-fontobject",
               ".mp4": "video/mp4", ".webp": "image/webp", ".jpg": "image/jpeg", ".mp3": "audio/mpeg", ".webm": "video/webm", ".txt": "text/plain; charset=utf-8"}
HASHED = re.compile(r"-[A-Za-z0-9_-]{8}\.(?:js|mjs|css|json)$")  # Vite's content-hashed names: assets/index-BKdH1OFt.js
NO_CACHE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
A_DAY = "public, max-age=86400"


@cache
def frontend_dir() -> Path | None:
    """The installed comfyui-frontend-package's static folder (None when the package is not installed)."""
    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).resolve().parent / "static"
    return folder if (folder / "index.html").is_file() else None


def _file_in(root: Path, relative: str) -> Path | None:
    """The file `relative` names in `root`; None for a name outside it, a hidden one, or one that is not a file."""
    if any(part in ("", ".", "..") or part.startswith(".") for part in relative.split("/")):
        return None
    root = root.resolve()
    path = (root / relative).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def static_file(rest: str) -> Path | None:
    """The wheel's file at `rest` ("/" is index.html); None for a name outside its folder or that is not a file."""
    root = frontend_dir()
    return None if root is None else _file_in(root, unquote(rest).lstrip("/") or "index.html")


def extension_file(rest: str) -> Path | None:
    """The file at /extensions/<module>/<name> in that custom node module's web folder; None for anything else."""
    module, _, name = unquote(rest).removeprefix("/extensions/").partition("/") if rest.startswith("/extensions/") else ("", "", "")
    folder = loaded_web_dirs(get_settings()).get(module) if module and name else None
    return None if folder is None else _file_in(folder, name)


def _scripts(root: Path, prefix: str) -> list[str]:
    return sorted(prefix + p.relative_to(root).as_posix() for p in root.rglob("*.js")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def extension_scripts() -> list[str]:
    """What ComfyUI's /extensions lists: the frontend's own extension scripts, then each custom node module's."""
    root = frontend_dir()
    scripts = _scripts(root / "extensions", "/extensions/") if root is not None and (root / "extensions").is_dir() else []
    for module, folder in sorted(loaded_web_dirs(get_settings()).items()):
        if folder.is_dir():
            scripts += _scripts(folder, f"/extensions/{quote(module)}/")
    return scripts


@cache
def template_files() -> dict[str, Path]:
    """Each official workflow template's files by name (index.json, <template>.json, its thumbnails), from the packages."""
    try:
        from comfyui_workflow_templates import get_asset_path, iter_templates
    except ImportError:
        return {}
    return {asset.filename: Path(get_asset_path(entry.template_id, asset.filename))
            for entry in iter_templates() for asset in entry.assets}


def template_file(rest: str) -> Path | None:
    """The template file at /templates/<name>; None for any other path or name."""
    name = unquote(rest[len("/templates/"):]) if rest.startswith("/templates/") else ""
    path = template_files().get(name) if name else None
    return path if path is not None and path.is_file() else None


def cache_control(path: Path) -> str:
    if path.name == "index.html":
        return NO_CACHE
    return IMMUTABLE if path.parent.name == "assets" and HASHED.search(path.name) else A_DAY


def api_path(rest: str) -> str | None:
    """The ComfyUI route an editor call under /comfy maps onto (/comfy/api/prompt -> /prompt); None for anything else."""
    if rest == "/ws":
        return rest
    if not rest.startswith("/api/"):
        return None
    route = rest[len("/api"):]
    if any(part in (".", "..") for part in unquote(route).split("/")):
        return None
    return route if route.lstrip("/").split("/", 1)[0] in COMFYUI_ROUTES else None


def _headers(scope: dict[str, Any]) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope.get("headers") or []}


def cookie_key(scope: dict[str, Any]) -> str | None:
    """The key in the editor's cookie, if the request has one and comes from this site (its Origin, when it sends one)."""
    headers = _headers(scope)
    origin = headers.get(b"origin", b"").decode("latin-1")
    if origin and urlsplit(origin).netloc != headers.get(b"host", b"").decode("latin-1"):
        return None
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and BEARER_TOKEN.fullmatch(unquote(value)):
            return unquote(value)
    return None


def rewritten(scope: dict[str, Any], path: str) -> dict[str, Any]:
    """The scope of an editor call as a call of ComfyUI's route `path`, its cookie's key as a Bearer header."""
    headers = list(scope.get("headers") or [])
    key = cookie_key(scope)
    if key is not None and not any(k.lower() == b"authorization" for k, _ in headers):
        headers.append((b"authorization", f"Bearer {key}".encode("latin-1")))
    return {**scope, "path": path, "raw_path": quote(path).encode("latin-1"), "headers": headers}


class EditorMiddleware:
    """Serves the editor at /comfy/ and maps its API calls onto ComfyUI's routes (the module's docstring)."""

    def __init__(self, app: Any, keys_required: bool) -> None:
        self.app = app
        self.keys_required = keys_required

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        rest = path[len(PREFIX):]
        target = api_path(rest)
        if target is not None:
            await self.app(rewritten(scope, target), receive, send)
            return
        page = self._page(scope, rest) if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") else None
        await (page or self.app)(scope, receive, send)

    def _page(self, scope: dict[str, Any], rest: str) -> Any:
        """The answer to GET/HEAD of an editor page or file; None: not one (the app answers, e.g. a 404)."""
        if rest == "":
            return RedirectResponse(PREFIX + "/", status_code=308)
        if rest == "/login":
            return FileResponse(LOGIN_PAGE, media_type=MEDIA_TYPES[".html"], headers={"Cache-Control": NO_CACHE})
        if rest == "/" and self.keys_required and cookie_key(scope) is None:
            return RedirectResponse(PREFIX + "/login", status_code=303)
        file = static_file(rest) or extension_file(rest) or template_file(rest)
        if file is None:
            return None
        media = MEDIA_TYPES.get(file.suffix, "application/octet-stream")
        return FileResponse(file, media_type=media, headers={"Cache-Control": cache_control(file)})


router = APIRouter()


def _https(request: Request) -> bool:
    """Whether the browser reached us over TLS: directly, or through a proxy that ended it (BentoCloud's does)."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",", 1)[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


@router.post(PREFIX + "/login", status_code=204, include_in_schema=False)
def login(request: Request) -> Response:
    """The editor's cookie for the key this request came with (the API keys checked it); with keys off, nothing to keep."""
    response = Response(status_code=204)
    token = parse_bearer(request.headers.get("authorization"))
    if token is not None:
        response.set_cookie(COOKIE, quote(token, safe=""), max_age=COOKIE_MAX_AGE_S, path=PREFIX, httponly=True,
                            samesite="strict", secure=_https(request))
    return response
