"""OpenAI Images API requests as typed fields (front/compat/openai_images/mapping.py) and OpenAI's error shape."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from comfybento.config import Settings
from comfybento.errors import TooLarge
from comfybento.front.compat.openai_images.mapping import OpenAIFieldError, fits, openai_param, pick_workflow, plan
from comfybento.front.compat.openai_images.routes import _with_mask_alpha
from comfybento.front.renderers import contract_of, openai, status_fields
from comfybento.models.lock import parse_lock
from comfybento.workflows.catalog import load_workflow
from tests.helpers import sample_image

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def catalog(node_defs):
    settings = Settings.from_env({"COMFYBENTO_MODELS": str(ROOT / "models")})
    lock = parse_lock(ROOT / "models.lock")
    return {name: load_workflow(path, node_defs, lock, settings)
            for name, path in (("txt2img", ROOT / "workflows" / "txt2img.json"), ("img2img", ROOT / "tests" / "graphs" / "img2img.json"))}


def test_generations_fit_text_to_image_and_edits_fit_image_to_image(catalog):
    assert fits(catalog["txt2img"], "generations") and not fits(catalog["txt2img"], "edits")
    assert fits(catalog["img2img"], "edits") and not fits(catalog["img2img"], "generations")
    assert pick_workflow(catalog, None, "generations").name == "txt2img"
    assert pick_workflow(catalog, None, "edits").name == "img2img"
    with pytest.raises(OpenAIFieldError, match="models that fit: img2img") as wrong:
        pick_workflow(catalog, "txt2img", "edits")
    assert wrong.value.param == "model" and int(wrong.value.error_code) == 404


def test_n_is_the_batch_size_of_one_item_and_size_is_width_and_height(catalog):
    todo = plan(catalog["txt2img"], {"prompt": "a fox", "n": 3, "size": "96x64", "quality": "fast", "output_format": "webp",
                                     "output_compression": 0})
    assert todo.items == [{"prompt": "a fox", "width": 96, "height": 64, "preset": "fast", "output_format": "webp",
                           "output_quality": 1, "batch_size": 3}]
    assert todo.output == "save_image" and todo.size == "96x64"
    auto = plan(catalog["txt2img"], {"prompt": "a fox", "size": "auto", "quality": "auto", "output_format": "png", "output_compression": 50})
    assert auto.items == [{"prompt": "a fox", "output_format": "png", "batch_size": 1}] and auto.size is None


def test_without_a_batch_size_n_is_n_items(catalog):
    todo = plan(catalog["img2img"], {"prompt": "a wall", "n": 2}, {"image": "aGVsbG8="})
    assert len(todo.items) == 2 and all(item["image"] == "aGVsbG8=" and "batch_size" not in item for item in todo.items)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"size": "big"}, "size"),
        ({"size": "0x64"}, "size"),
        ({"quality": "hd"}, "quality"),
        ({"background": "transparent"}, "background"),
        ({"style": "vivid"}, "style"),
        ({"stream": True}, "stream"),
    ],
)
def test_fields_without_a_counterpart_are_refused_by_name(catalog, fields, param):
    with pytest.raises(OpenAIFieldError) as refused:
        plan(catalog["txt2img"], {"prompt": "x", **fields})
    assert refused.value.param == param and int(refused.value.error_code) == 400 and param in str(refused.value)


def test_size_on_a_workflow_without_width_and_height_is_refused(catalog):
    with pytest.raises(OpenAIFieldError, match="no width and height"):
        plan(catalog["img2img"], {"prompt": "x", "size": "64x64"}, {"image": "aGVsbG8="})


def test_more_images_than_the_limit_is_a_413(catalog):
    with pytest.raises(OpenAIFieldError, match="max_images") as refused:
        plan(catalog["img2img"], {"prompt": "x", "n": catalog["img2img"].limits.max_images + 1}, {"image": "aGVsbG8="})
    assert int(refused.value.error_code) == 413


def test_workflow_fields_are_named_as_the_openai_fields_they_came_from():
    assert [openai_param(f) for f in ("width", "batch_size", "output_quality", "preset", "prompt")] == \
        ["size", "n", "output_compression", "quality", "prompt"]


def test_openai_error_shape():
    assert contract_of("/v1/images/generations") == "openai" and contract_of("/v1") == "comfybento"
    status, body = openai(status_fields(422, "n: must be at least 1", details={"errors": [{"loc": ["body", "n"], "msg": "x"}]}))
    assert status == 400 and body["error"]["param"] == "n" and body["error"]["type"] == "invalid_request_error"
    assert openai(status_fields(401, "no key"))[1]["error"]["type"] == "authentication_error"
    assert openai(status_fields(507, "full"))[0] == 503
    status, body = openai({"status": 413, "error_kind": "too_large", "error": str(TooLarge("over max_request_pixels"))})
    assert status == 413 and body["error"]["code"] == "too_large" and body["error"]["param"] is None


def _png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def test_the_mask_alpha_becomes_the_image_alpha():
    mask = Image.new("RGBA", (16, 16), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 8, 16))  # the left half transparent: to be edited
    combined = Image.open(io.BytesIO(_with_mask_alpha(_png(sample_image(16, 16)), _png(mask))))
    assert combined.mode == "RGBA" and combined.getpixel((2, 2))[3] == 0 and combined.getpixel((12, 2))[3] == 255
    with pytest.raises(OpenAIFieldError, match="no alpha"):
        _with_mask_alpha(_png(sample_image(16, 16)), _png(sample_image(16, 16)))
    with pytest.raises(OpenAIFieldError, match="not the image's size"):
        _with_mask_alpha(_png(sample_image(16, 16)), _png(Image.new("RGBA", (8, 8))))
