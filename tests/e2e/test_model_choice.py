"""Choosing the checkpoint per request through a real `bentoml serve`, over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import serving
from tests.helpers import png_array, service_env
from tests.model_choice import CORRUPT, DEFAULT, make_models, make_workflows

pytestmark = pytest.mark.e2e

ALT = "tiny-sd-alt.safetensors"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("model_choice_serve")
    models, lock = make_models(root)
    env = {**service_env(make_workflows(root), root / "work"), "COMFYBENTO_MODELS": str(models), "COMFYBENTO_MODELS_LOCK": str(lock)}
    with serving(env, root) as url:
        yield url


def test_the_schema_offers_the_models_lock_checkpoints_only(server):
    spec = httpx.get(f"{server}/docs.json").json()
    props = next(v for k, v in spec["components"]["schemas"].items() if k.startswith("ChooseModel"))["properties"]
    assert props["checkpoint"]["enum"] == sorted([DEFAULT, ALT, "tiny-sd-alt2.safetensors", CORRUPT])  # not rogue.safetensors
    assert props["checkpoint"]["default"] == DEFAULT and "models.lock" in props["checkpoint"]["description"]


def test_an_unknown_checkpoint_is_a_4xx_naming_the_field(server):
    resp = httpx.post(f"{server}/choose_model", json={"checkpoint": "rogue.safetensors", "steps": 2}, timeout=60)
    assert 400 <= resp.status_code < 500 and "checkpoint" in resp.text


def test_two_requests_with_different_checkpoints(server):
    body = {"prompt": "a lighthouse", "seed": 5, "width": 64, "height": 64, "steps": 3}
    default = httpx.post(f"{server}/choose_model", json=body, timeout=300)
    alternate = httpx.post(f"{server}/choose_model", json={**body, "checkpoint": ALT}, timeout=300)
    assert default.status_code == alternate.status_code == 200, (default.text, alternate.text)
    a, b = (png_array(r.json()["outputs"][0]["data"]) for r in (default, alternate))
    assert a.shape == b.shape == (64, 64, 3) and np.abs(a - b).mean() > 5


def test_a_corrupt_checkpoint_is_named_and_the_service_goes_on(server):
    resp = httpx.post(f"{server}/choose_model", json={"checkpoint": CORRUPT, "steps": 2, "width": 64, "height": 64}, timeout=300)
    assert resp.status_code == 500 and f"checkpoints/{CORRUPT}" in resp.json()["error"]
    assert httpx.post(f"{server}/choose_model", json={"steps": 2, "width": 64, "height": 64}, timeout=300).status_code == 200
