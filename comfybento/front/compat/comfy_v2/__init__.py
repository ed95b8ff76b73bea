"""Comfy API v2 (Comfy-Org/comfy-python-sdk spec/openapi.yaml, version 2.0.0) over comfybento's jobs.

The official SDKs (`comfy-sdk` on PyPI, `@comfyorg/sdk` on npm) run against it unchanged: only COMFY_BASE_URL changes.
- assets.py: content-addressed assets (blake3) in the jobs' storage, under the key prefix `comfy-v2/`;
- views.py: a comfybento job as the spec's Job (status, progress, outputs as assets);
- events.py: the SSE stream of one job (live events of this replica, plus the store polled each second);
- routes.py: the APIRouter under /api/v2, with the spec's error envelope (errors.py).
"""

from __future__ import annotations

from fastapi import FastAPI

from comfybento.front.compat.comfy_v2.routes import router


def include(app: FastAPI) -> None:
    """Add the /api/v2 routes to `app` (a no-op when they are there already: services are built more than once in tests)."""
    if not any(route is router or getattr(route, "original_router", None) is router or getattr(route, "path", "").startswith(router.prefix)
               for route in app.routes):
        app.include_router(router)


__all__ = ["include", "router"]
