"""The OpenAI Images API (POST /v1/images/generations, POST /v1/images/edits, GET /v1/models) over comfybento's engine.

The `openai` SDKs (PyPI and npm) run against it unchanged but for `base_url`:
- mapping.py: an OpenAI request as one workflow's typed fields (which workflows fit, which fields map to what);
- routes.py: the APIRouter under /v1, answering in OpenAI's shapes (errors included: front/renderers.py).
"""

from __future__ import annotations

from fastapi import FastAPI

from comfybento.front.compat.openai_images.routes import router


def include(app: FastAPI) -> None:
    """Add the /v1 routes to `app` (a no-op when they are there already: services are built more than once in tests)."""
    if not any(route is router or getattr(route, "original_router", None) is router for route in app.routes):
        app.include_router(router)


__all__ = ["include", "router"]
