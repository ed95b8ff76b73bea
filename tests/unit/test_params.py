from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from comfybento.workflows.graph import load_graph
from comfybento.workflows.params import infer_outputs, infer_params
from comfybento.workflows.schema import build_input_model

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = ROOT / "tests" / "graphs"


def _params(graph, node_defs):
    return {p.name: p for p in infer_params("test", graph, node_defs)}


def test_default_graph_parameters_typed_from_node_definitions(node_defs):
    graph = load_graph(ROOT / "workflows" / "txt2img.json")
    params = _params(graph, node_defs)
    assert list(params) == ["prompt", "negative_prompt", "seed", "steps", "cfg", "sampler_name", "scheduler",
                            "denoise", "width", "height", "batch_size"]
    assert params["prompt"].node_id == "6" and params["negative_prompt"].node_id == "7"
    assert params["prompt"].default.startswith("beautiful scenery")
    assert params["steps"].minimum == 1 and params["steps"].maximum == 10000 and params["steps"].default == 20
    assert params["sampler_name"].choices == ("euler", "euler_ancestral", "heun", "dpmpp_2m", "ddim")
    assert params["width"].node_id == "5" and params["width"].step == 8
    assert params["seed"].role == "seed"
    assert all(p.description for p in params.values())


def test_non_sequential_ids_and_two_outputs(node_defs):
    graph = load_graph(GRAPHS / "two_outputs.json")
    params = _params(graph, node_defs)
    assert params["prompt"].node_id == "31" and params["negative_prompt"].node_id == "33"
    assert params["seed"].node_id == "200" and params["seed"].default == 7
    assert params["height"].default == 96
    outputs = infer_outputs(graph)
    assert [(o.name, o.node_id) for o in outputs] == [("original", "301"), ("inverted", "302")]


def test_img2img_graph_has_image_input_and_no_latent_size(node_defs):
    graph = load_graph(GRAPHS / "img2img.json")
    params = _params(graph, node_defs)
    assert params["image"].kind == "image" and params["image"].node_id == "10"
    assert "width" not in params and params["denoise"].default == 0.6
    model = build_input_model("img2img", list(params.values()))
    assert "image" in model.model_json_schema()["required"]


def test_comfy_pack_annotations_named_from_titles(node_defs):
    graph = load_graph(GRAPHS / "cpack.json")
    params = _params(graph, node_defs)
    assert list(params) == ["subject", "steps"]  # "Sampling Steps" is no identifier: named after the input it feeds
    assert params["subject"].default == "a lighthouse at dusk"
    assert params["steps"].minimum == 1 and params["steps"].maximum == 8
    assert [o.name for o in infer_outputs(graph)] == ["image"]


def test_renamed_titles_do_not_change_plain_names(node_defs):
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    graph["6"]["_meta"]["title"] = "My fancy prompt"
    params = _params(graph, node_defs)
    assert params["prompt"].node_id == "6"


def test_input_model_enforces_bounds_enums_and_unknown_fields(node_defs):
    graph = load_graph(ROOT / "workflows" / "txt2img.json")
    model = build_input_model("txt2img", infer_params("t", graph, node_defs))
    ok = model(prompt="x", steps=3, sampler_name="heun")
    assert ok.seed is None and ok.cfg == 8
    for bad in ({"steps": 0}, {"sampler_name": "nope"}, {"width": "wide"}, {"colour": "red"}, {"seed": -1}):
        with pytest.raises(ValidationError) as err:
            model(**bad)
        assert next(iter(bad)) in str(err.value)
    schema = model.model_json_schema()["properties"]
    assert schema["steps"]["minimum"] == 1 and "euler" in schema["sampler_name"]["enum"]
    assert all("description" in field for field in schema.values())
