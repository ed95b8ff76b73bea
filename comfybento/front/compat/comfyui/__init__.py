"""ComfyUI's own server API (/prompt, /ws, /history, /view, /upload, /object_info, /queue ...), at /x and /api/x.

A /prompt graph that matches a served workflow becomes a one-item job of that
workflow (prompt_id = the job id): durable, run by the same job runner, and
batched on the engine with typed-endpoint traffic. Third-party ComfyUI clients
(comfy-cli's `comfy run`, comfy-api-simplified, @saintno/comfyui-sdk) work unchanged.
"""

from __future__ import annotations

from fastapi import FastAPI

from comfybento.front.compat.comfyui import editor_routes as editor_routes  # its routes join the router
from comfybento.front.compat.comfyui.routes import router
from comfybento.front.compat.comfyui.ws import Sockets

__all__ = ["install", "router"]


def install(app: FastAPI) -> None:
    """Add the routes to the entry service's app, once (FastAPI keeps an included router whole, or copies its routes),
    and the app's /ws state (ws.py `Sockets`)."""
    if not isinstance(getattr(app.state, "comfyui_sockets", None), Sockets):
        app.state.comfyui_sockets = Sockets()
    if not any(getattr(r, "original_router", None) is router or getattr(r, "path", None) == "/prompt" for r in app.router.routes):
        app.include_router(router)
