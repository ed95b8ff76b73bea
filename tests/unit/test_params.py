from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from comfybento.errors import InvalidRequest, WorkflowError
from comfybento.limits import Limits
from comfybento.workflows.graph import NodeDef, load_graph
from comfybento.workflows.params import infer_outputs, infer_params
from comfybento.workflows.schema import DATA_URI_HEADER, build_input_model
from comfybento.workflows.uploads import read_input
from tests.unit.conftest import UPSCALE_METHODS

MAX_FILE_BYTES = Limits().max_upload_bytes

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
    outputs = infer_outputs(graph, node_defs)
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
    assert [o.name for o in infer_outputs(graph, node_defs)] == ["image"]


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


# ---------------------------------------------------------------- comfy-pack


def _cpack_int(value, lo, hi):
    return {
        "1": {"class_type": "CPackInputInt", "inputs": {"value": value, "min": lo, "max": hi}, "_meta": {"title": "steps"}},
        "2": {"class_type": "KSampler", "inputs": {"steps": ["1", 0]}},
    }


def test_comfy_pack_example_graph_is_typed_like_comfy_pack_types_it(node_defs):
    # comfy-pack's own example (tests/graphs/README.md): bounds from each CPackInputInt's min and max,
    # and its seed a CPackInputInt feeding the sampler's seed, whose min and max are beyond +-sys.maxsize.
    graph = load_graph(GRAPHS / "comfy_pack_example.json")
    params = _params(graph, node_defs)
    assert list(params) == ["prompt", "height", "width", "seed"]
    assert params["prompt"].kind == "string" and params["prompt"].default == "rose in a glass bottle"
    assert (params["width"].node_id, params["width"].default, params["width"].minimum, params["width"].maximum) == ("14", 512, 24, 2048)
    seed = params["seed"]
    assert (seed.node_id, seed.input_name, seed.kind, seed.role) == ("27", "value", "int", "seed")
    model = build_input_model("cpack_example", list(params.values()))
    request = model()
    assert request.seed is None and request.width == 512 and request.prompt == "rose in a glass bottle"
    assert model(seed=2**63).seed == 2**63
    for bad in ({"width": 23}, {"height": 2049}, {"seed": -1}, {"seed": 2**64}, {"prompt": 3}, {"ckpt_name": "x"}):
        with pytest.raises(ValidationError) as err:
            model(**bad)
        assert next(iter(bad)) in str(err.value)
    schema = model.model_json_schema()["properties"]
    assert schema["width"]["minimum"] == 24 and schema["width"]["maximum"] == 2048 and schema["seed"]["default"] is None


@pytest.mark.parametrize(("lo", "hi"), [(-sys.maxsize, sys.maxsize), (-9223372036854776000, 9223372036854776000), (None, None)])
def test_comfy_pack_int_without_bounds_keeps_those_of_the_input_it_feeds(node_defs, lo, hi):
    graph = _cpack_int(4, lo, hi)
    if lo is None:
        graph["1"]["inputs"] = {"value": 4}
    steps = _params(graph, node_defs)["steps"]
    assert (steps.kind, steps.minimum, steps.maximum, steps.role) == ("int", 1, 10000, "")


def test_comfy_pack_int_whose_min_exceeds_its_max_is_a_workflow_error(node_defs):
    with pytest.raises(WorkflowError, match="node 1 \\(CPackInputInt\\): its min 9 is greater than its max 2"):
        infer_params("w.json", _cpack_int(4, 9, 2), node_defs)


def test_comfy_pack_any_is_typed_by_its_options(node_defs):
    graph = load_graph(GRAPHS / "cpack_inputs.json")
    params = _params(graph, node_defs)
    scale, method = params["scale"], params["method"]
    assert (scale.kind, scale.minimum, scale.maximum, scale.input_name) == ("float", 0.01, 8, "input")
    assert method.kind == "enum" and method.choices == UPSCALE_METHODS and method.default == "nearest-exact"
    model = build_input_model("cpack_inputs", list(params.values()), images_as_base64=True)
    assert model(picture="aGVsbG8=", scale=0.5).scale == 0.5
    for bad in ({"scale": 9}, {"scale": 0}, {"scale": "big"}, {"method": "warp"}):
        with pytest.raises(ValidationError) as err:
            model(picture="aGVsbG8=", **bad)
        assert next(iter(bad)) in str(err.value)
    # comfy-pack's rule: a number without a round below 1 is an int (its UI writes round 1 for INT widgets)
    graph["4"]["_meta"]["options"] = {"min": 0, "max": 4, "step": 10, "round": 1, "precision": 0}
    scale = _params(graph, node_defs)["scale"]
    assert (scale.kind, scale.minimum, scale.maximum) == ("int", 0.01, 4)  # and within the input it feeds


def test_comfy_pack_any_without_options_takes_the_definition_of_the_input_it_feeds(node_defs):
    graph = load_graph(GRAPHS / "cpack_inputs.json")
    for node_id in ("4", "5"):
        del graph[node_id]["_meta"]["options"]
    params = _params(graph, node_defs)
    assert (params["scale"].kind, params["scale"].minimum, params["scale"].maximum) == ("float", 0.01, 8.0)
    assert params["method"].kind == "enum" and params["method"].choices == UPSCALE_METHODS
    graph["6"]["class_type"] = "SomethingUnknownToUs"
    graph["6"]["inputs"] = {"a": ["4", 0], "b": ["5", 0]}
    node_defs = {**node_defs, "SomethingUnknownToUs": NodeDef("SomethingUnknownToUs", {})}
    params = _params(graph, node_defs)
    assert (params["scale"].kind, params["method"].kind) == ("int", "string")  # the type of the node's own value


def test_comfy_pack_file_is_an_upload_never_a_server_path(node_defs):
    graph = load_graph(GRAPHS / "cpack_inputs.json")
    picture = _params(graph, node_defs)["picture"]
    assert (picture.kind, picture.node_id, picture.input_name, picture.default) == ("file", "1", "path", None)
    params = infer_params("t", graph, node_defs)
    endpoint = build_input_model("cpack_inputs", params)
    schema = endpoint.model_json_schema()
    assert schema["properties"]["picture"]["type"] == "file" and "picture" in schema["required"]
    # A string is base64 (or a data: URI, or a URL): never a path on the server.
    assert endpoint(picture="/etc/passwd").picture == "/etc/passwd"
    with pytest.raises(InvalidRequest, match="picture: not base64"):
        read_input("picture", "file", "/etc/passwd", Limits(), None)
    with pytest.raises(ValidationError, match="picture"):
        endpoint()
    with pytest.raises(ValidationError, match="picture"):
        endpoint(picture="  ")
    item = build_input_model("cpack_inputs", params, images_as_base64=True)
    assert item(picture="aGVsbG8=").picture == "aGVsbG8="
    for bad in ("not base64!", "../../etc/passwd?"):
        with pytest.raises(InvalidRequest, match="picture: not base64"):
            read_input("picture", "file", item(picture=bad).picture, Limits(), None)
    with pytest.raises(ValidationError, match="picture"):
        item(picture="")
    assert item.model_json_schema()["properties"]["picture"]["maxLength"] == 4 * math.ceil(MAX_FILE_BYTES / 3) + DATA_URI_HEADER


@pytest.mark.parametrize("title", ["png", "stream"])
def test_an_output_titled_like_a_route_of_its_own_is_renamed(node_defs, title):
    graph = load_graph(GRAPHS / "two_outputs.json")
    graph["302"]["_meta"] = {"title": title}  # /<workflow>/png and /<workflow>/stream are other routes
    names = [o.name for o in infer_outputs(graph, node_defs)]
    assert title not in names and len(set(names)) == 2
