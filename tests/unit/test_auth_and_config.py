from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from comfybento.config import Settings
from comfybento.errors import ConfigError
from comfybento.runtime.bootstrap import find_comfyui_root
from comfybento.serving.auth import ApiKeyMiddleware


def _client(key: str) -> TestClient:
    app = Starlette(routes=[Route("/txt2img", lambda r: PlainTextResponse("ok"), methods=["POST"]),
                            Route("/readyz", lambda r: PlainTextResponse("ready"))])
    return TestClient(ApiKeyMiddleware(app, api_key=key))


def test_api_key_is_required_except_on_health_checks():
    client = _client("s3cret")
    assert client.post("/txt2img").status_code == 401
    assert client.post("/txt2img", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.post("/txt2img", headers={"Authorization": "Bearer s3cret"}).text == "ok"
    assert client.get("/readyz").status_code == 200
    assert _client("").post("/txt2img").status_code == 200  # no key configured: open


def test_settings_are_checked_with_actionable_messages(tmp_path):
    with pytest.raises(ConfigError, match="COMFYBENTO_MAX_BATCH_SIZE"):
        Settings.from_env({"COMFYBENTO_MAX_BATCH_SIZE": "many"})
    with pytest.raises(ConfigError, match="COMFYBENTO_REDIS_URL"):
        Settings.from_env({"COMFYBENTO_JOBS_BACKEND": "redis"})
    with pytest.raises(ConfigError, match="COMFYBENTO_STORAGE"):
        Settings.from_env({"COMFYBENTO_STORAGE": "ftp"})
    with pytest.raises(ConfigError, match="not a ComfyUI tree"):
        find_comfyui_root(Settings.from_env({"COMFYUI_PATH": str(tmp_path)}))
