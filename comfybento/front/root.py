"""The front's root ASGI app, mounted at / on the entry service beside its typed endpoints (front/app.py builds it).

Its routes: the jobs API (front/job_routes.py), live outputs (front/delivery.py), the editor's login (front/editor.py),
Comfy API v2 and ComfyUI's own API (front/compat/). Its collaborators live in its state, set by the composition root, never in module globals:
- `app.state.output_storage`: the output storage, made on first use (front/delivery.py `StorageOnFirstUse`);
- `app.state.jobs`: the JobService, once the jobs start (None until then; front/job_routes.py `job_service` reads it);
- `app.state.front`: the front service itself, once made (the OpenAI Images API runs its requests as the typed endpoints do).
Errors raised by any of its routes are answered here, in the shape of the contract their path belongs to (front/renderers.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.routing import Match

from comfybento.errors import ComfyBentoError
from comfybento.front import delivery, editor
from comfybento.front import job_routes as jobs_routes
from comfybento.front.compat import comfy_v2, openai_images
from comfybento.front.compat import comfyui as comfyui_api
from comfybento.front.http import error_response
from comfybento.front.jobs.service import InvalidItems
from comfybento.front.renderers import render_for, status_fields
from comfybento.outputs.storage import Storage

log = logging.getLogger(__name__)
OWN_ROUTERS = (jobs_routes.router, delivery.router, editor.router)  # comfybento's own routes (the compatibility APIs answer as theirs do)


def root_app(output_storage: Callable[[], Storage]) -> FastAPI:
    """A new root app: its routes, its error handlers, and `output_storage` in its state (the jobs come when they start)."""
    app = FastAPI(title="comfybento jobs", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.output_storage = output_storage
    app.state.jobs = None
    app.state.front = None
    app.exception_handler(ComfyBentoError)(_error)
    app.exception_handler(HTTPException)(_refused)
    app.exception_handler(Exception)(_unexpected)
    for router in OWN_ROUTERS:
        app.include_router(router)
    comfy_v2.include(app)  # Comfy API v2 at /api/v2 (official SDKs)
    comfyui_api.install(app)  # ComfyUI's own routes (front/compat/comfyui/)
    openai_images.include(app)  # the OpenAI Images API at /v1 (front/compat/openai_images/)
    return app


async def _error(request: Request, exc: ComfyBentoError) -> JSONResponse:
    extra = {"items": [e.model_dump() for e in exc.errors]} if isinstance(exc, InvalidItems) else None
    return error_response(exc, extra=extra)


async def _refused(request: Request, exc: HTTPException) -> Response:
    """The framework's own refusals (no such route, a method it does not take, a body that is not JSON) in our error shape.

    A 405's Allow lists every method of the path (Starlette's names only the first route's). Under /api/v2 and ComfyUI's
    paths, in their contract's shape (front/renderers.py).
    """
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        routes = [r for router in OWN_ROUTERS for r in router.routes]
        matching = [r for r in routes if isinstance(r, APIRoute) and r.matches(request.scope)[0] != Match.NONE]
        # the path the router chose (the first that matches: /jobs/estimate, not /jobs/{job_id}) and its other methods
        methods = {m for r in matching if r.path_format == matching[0].path_format for m in r.methods or ()}
        headers["Allow"] = ", ".join(sorted(methods))
        exc = HTTPException(405, exc.detail, headers)
    return render_for(request.url.path, status_fields(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"),
                      headers=headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)  # logged there, with the traceback and the request id
