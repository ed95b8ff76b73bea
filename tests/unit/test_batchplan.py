from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfybento.workflows.batchplan import merge_graph, plan_batching
from comfybento.workflows.binding import bind, shape_key
from comfybento.workflows.graph import Graph, load_graph
from comfybento.workflows.params import Param, infer_params

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = ROOT / "tests" / "graphs"


def _param(name: str, node: str, input_name: str, kind: str = "string", role: str = "") -> Param:
    return Param(name=name, node_id=node, input_name=input_name, kind=kind, default=None, description="", role=role)  # type: ignore[arg-type]


def _bound(graph: Graph, params: tuple[Param, ...], values: list[dict[str, object]]) -> list[Graph]:
    return [bind(graph, params, v, v.get("seed")) for v in values]  # type: ignore[arg-type]


def test_default_graph_is_batchable_and_merges(node_defs):
    graph = load_graph(ROOT / "workflows" / "txt2img.json")
    params = tuple(infer_params("t", graph, node_defs))
    plan, reason = plan_batching(graph, params)
    assert plan is not None and reason == "batched"
    assert plan.samplers == ("3",) and plan.per_request == {"6", "7"} and plan.batched == {"3", "8", "9"}
    assert plan.batchable_params == {"prompt", "negative_prompt", "seed"} and plan.batched_outputs == {"9"}
    assert dict(plan.text_encoders) == {"prompt": "6", "negative_prompt": "7"}
    merged = merge_graph(plan, _bound(graph, params, [{"prompt": "a", "seed": 1}, {"prompt": "b", "seed": 2}]))
    assert merged["3"]["class_type"] == "ComfyBentoBatchKSampler" and "seed" not in merged["3"]["inputs"]
    assert json.loads(merged["3"]["inputs"]["seeds"]) == [1, 2]
    assert merged["6#0"]["inputs"]["text"] == "a" and merged["6#1"]["inputs"]["text"] == "b" and "6" not in merged
    join = merged["3"]["inputs"]["positive"][0]
    assert merged[join] == {"class_type": "ComfyBentoBatchConditioning", "inputs": {"item_0": ["6#0", 0], "item_1": ["6#1", 0]}}
    repeat = merged["3"]["inputs"]["latent_image"][0]
    assert merged[repeat] == {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["5", 0], "amount": 2}}
    assert merged["8"]["inputs"]["samples"] == ["3", 0] and merged["4"] == graph["4"]


def test_img2img_batches_per_request_images_in_request_order(node_defs):
    graph = load_graph(GRAPHS / "img2img.json")
    params = tuple(infer_params("i", graph, node_defs))
    plan, reason = plan_batching(graph, params)
    assert plan is not None, reason
    assert plan.per_request == {"10", "12", "6", "7"} and plan.image_params == ("image",)
    assert "image" in plan.batchable_params and "steps" not in plan.batchable_params
    merged = merge_graph(plan, _bound(graph, params, [{"image": f"in{i}.png", "seed": i} for i in range(3)]))
    assert [merged[f"10#{i}"]["inputs"]["image"] for i in range(3)] == ["in0.png", "in1.png", "in2.png"]
    assert merged["12#1"]["inputs"]["pixels"] == ["10#1", 0] and merged["12#1"]["inputs"]["vae"] == ["14", 2]
    join = merged["3"]["inputs"]["latent_image"][0]
    assert merged[join]["class_type"] == "ComfyBentoBatchLatents"
    assert merged[join]["inputs"] == {f"item_{i}": [f"12#{i}", 0] for i in range(3)}
    assert not any(n["class_type"] == "RepeatLatentBatch" for n in merged.values())


def test_inpainting_keeps_each_requests_mask(node_defs):
    graph = load_graph(GRAPHS / "inpaint_noise_mask.json")
    params = (*infer_params("m", graph, node_defs), _param("seed", "3", "seed", "int", "seed"))
    plan, reason = plan_batching(graph, params)
    assert plan is not None, reason
    assert {"10", "12", "13"} <= plan.per_request
    merged = merge_graph(plan, _bound(graph, params, [{"image": "a.png"}, {"image": "b.png"}]))
    assert merged["13#1"]["inputs"] == {"samples": ["12#1", 0], "mask": ["10#1", 1]}
    assert merged[merged["3"]["inputs"]["latent_image"][0]]["inputs"] == {"item_0": ["13#0", 0], "item_1": ["13#1", 0]}


def test_hires_fix_gives_every_sampler_its_own_seeds():
    graph = load_graph(GRAPHS / "hires_fix.json")
    params = (
        _param("prompt", "6", "text", role="prompt"),
        _param("seed", "3", "seed", "int", "seed"),
        _param("hires_seed", "11", "seed", "int"),
        _param("steps", "3", "steps", "int"),
    )
    plan, reason = plan_batching(graph, params)
    assert plan is not None, reason
    assert plan.samplers == ("3", "11") and plan.sampler_name_nodes == ("3", "11")
    assert plan.batchable_params == {"prompt", "seed", "hires_seed"} and plan.batched >= {"3", "10", "11", "12", "13"}
    merged = merge_graph(plan, _bound(graph, params, [{"seed": 1, "hires_seed": 10}, {"seed": 2, "hires_seed": 20}]))
    assert json.loads(merged["3"]["inputs"]["seeds"]) == [1, 2] and json.loads(merged["11"]["inputs"]["seeds"]) == [10, 20]
    assert merged["11"]["inputs"]["latent_image"] == ["10", 0]  # already batched: no repeat
    assert merged["10"]["inputs"]["samples"] == ["3", 0]
    assert plan.accepts(graph)
    ancestral = json.loads(json.dumps(graph))
    ancestral["11"]["inputs"]["sampler_name"] = "euler_ancestral"
    assert not plan.accepts(ancestral)


def test_ksampler_advanced_keeps_its_steps_and_noise_options():
    graph = load_graph(GRAPHS / "ksampler_advanced.json")
    params = (_param("prompt", "6", "text", role="prompt"), _param("seed", "10", "noise_seed", "int", "seed"))
    plan, reason = plan_batching(graph, params)
    assert plan is not None, reason
    merged = merge_graph(plan, _bound(graph, params, [{"seed": 4}, {"seed": 5}, {"seed": 6}]))
    base, refine = merged["10"], merged["11"]
    assert base["class_type"] == refine["class_type"] == "ComfyBentoBatchKSamplerAdvanced"
    assert json.loads(base["inputs"]["seeds"]) == [4, 5, 6] and json.loads(refine["inputs"]["seeds"]) == [0, 0, 0]
    assert (base["inputs"]["end_at_step"], base["inputs"]["return_with_leftover_noise"]) == (4, "enable")
    assert (refine["inputs"]["add_noise"], refine["inputs"]["start_at_step"]) == ("disable", 4)
    assert "noise_seed" not in base["inputs"]


def test_sampler_custom_advanced_joins_noise_and_guider_conditioning():
    graph = load_graph(GRAPHS / "custom_advanced.json")
    params = (_param("prompt", "6", "text"), _param("seed", "20", "noise_seed", "int"), _param("sampler_name", "22", "sampler_name"))
    plan, reason = plan_batching(graph, params)
    assert plan is not None, reason
    assert plan.per_request == {"6", "20"} and plan.sampler_name_nodes == ("22",)
    assert plan.batchable_params == {"prompt", "seed"}
    merged = merge_graph(plan, _bound(graph, params, [{"seed": 8, "prompt": "x"}, {"seed": 9, "prompt": "y"}]))
    noise = merged[merged["24"]["inputs"]["noise"][0]]
    assert noise["class_type"] == "ComfyBentoBatchNoise" and noise["inputs"] == {"item_0": ["20#0", 0], "item_1": ["20#1", 0]}
    assert [merged[f"20#{i}"]["inputs"]["noise_seed"] for i in range(2)] == [8, 9]
    assert merged[merged["21"]["inputs"]["positive"][0]]["class_type"] == "ComfyBentoBatchConditioning"
    assert merged["21"]["inputs"]["negative"] == ["7", 0]  # a shared prompt broadcasts
    assert merged[merged["24"]["inputs"]["latent_image"][0]]["class_type"] == "RepeatLatentBatch"
    assert merged["24"]["class_type"] == "SamplerCustomAdvanced" and merged["23"] == graph["23"]


def test_shared_noise_generator_is_still_drawn_per_request():
    graph = load_graph(GRAPHS / "custom_advanced.json")
    plan, _ = plan_batching(graph, (_param("prompt", "6", "text"),))
    assert plan is not None and "20" not in plan.per_request
    merged = merge_graph(plan, _bound(graph, (_param("prompt", "6", "text"),), [{}, {}, {}]))
    noise = merged[merged["24"]["inputs"]["noise"][0]]
    assert noise["class_type"] == "ComfyBentoBatchNoise" and set(map(tuple, noise["inputs"].values())) == {("20", 0)}


def test_lora_and_controlnet_nodes_do_not_stop_batching():
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    graph["30"] = {
        "class_type": "LoraLoader",
        "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "l.safetensors", "strength_model": 1.0, "strength_clip": 1.0},
    }
    graph["31"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "c.safetensors"}}
    graph["32"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
    graph["33"] = {
        "class_type": "ControlNetApplyAdvanced",
        "inputs": {
            "positive": ["6", 0],
            "negative": ["7", 0],
            "control_net": ["31", 0],
            "image": ["32", 0],
            "strength": 1.0,
            "start_percent": 0.0,
            "end_percent": 1.0,
        },
    }
    graph["3"]["inputs"].update(model=["30", 0], positive=["33", 0], negative=["33", 1])
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["30", 1]
    params = (
        _param("prompt", "6", "text", role="prompt"),
        _param("seed", "3", "seed", "int", "seed"),
        _param("hint", "32", "image", "image"),
        _param("lora_strength", "30", "strength_model", "float"),
    )
    plan, reason = plan_batching(graph, params)
    assert plan is not None, reason
    assert plan.per_request == {"6", "32"} and {"33", "3"} <= plan.batched and "30" not in plan.batched
    assert plan.batchable_params == {"prompt", "seed", "hint"}  # the LoRA strength stays in the shape key
    merged = merge_graph(plan, _bound(graph, params, [{"hint": "a.png"}, {"hint": "b.png"}]))
    assert merged[merged["33"]["inputs"]["image"][0]]["class_type"] == "ComfyBentoBatchImages"
    assert merged[merged["33"]["inputs"]["positive"][0]]["class_type"] == "ComfyBentoBatchConditioning"
    assert merged["33"]["inputs"]["negative"] == ["7", 0] and merged["6#0"]["inputs"]["clip"] == ["30", 1]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda g: g.update({"8": {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["3", 0]}}}),
            "node 8 (ImageBatch) after a sampler is not known to work image by image",
        ),
        (
            lambda g: g["3"]["inputs"].update(seed=["40", 0]) or g.update({"40": {"class_type": "PrimitiveInt", "inputs": {"value": 1}}}),
            "the seed of node 3 (KSampler) comes from another node",
        ),
        (lambda g: g.update({"3": {**g["3"], "class_type": "SamplerCustom"}}), "node 3 (SamplerCustom) cannot be batched"),
    ],
)
def test_unbatchable_graphs_name_the_node_that_prevents_it(node_defs, change, reason):
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    params = tuple(infer_params("t", graph, node_defs))
    change(graph)
    plan, why = plan_batching(graph, params)
    assert plan is None and reason in why, why


def test_a_custom_sampler_that_is_not_ksamplerselect_is_named():
    graph = load_graph(GRAPHS / "custom_advanced.json")
    graph["22"]["class_type"] = "SamplerEulerAncestral"
    plan, reason = plan_batching(graph, (_param("prompt", "6", "text"),))
    assert plan is None and "node 22 (SamplerEulerAncestral)" in reason


def test_nothing_per_request_means_no_plan(node_defs):
    cpack = load_graph(GRAPHS / "cpack.json")
    plan, reason = plan_batching(cpack, tuple(infer_params("c", cpack, node_defs)))
    assert plan is None and "seed" in reason


def test_shape_key_ignores_only_batchable_fields(node_defs):
    graph = load_graph(ROOT / "workflows" / "txt2img.json")
    params = tuple(infer_params("t", graph, node_defs))
    names = frozenset({"prompt", "negative_prompt", "seed"})
    a = shape_key(params, {"prompt": "x", "seed": 1}, names)
    assert a == shape_key(params, {"prompt": "y", "seed": 2, "negative_prompt": "z"}, names)
    assert a != shape_key(params, {"prompt": "x", "width": 64}, names)
    assert a != shape_key(params, {"prompt": "x", "sampler_name": "heun"}, names)
    assert shape_key(params, {"prompt": "x"}, frozenset()) != shape_key(params, {"prompt": "y"}, frozenset())
