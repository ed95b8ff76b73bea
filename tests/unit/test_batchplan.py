from __future__ import annotations

import json
from pathlib import Path

from comfybento.workflows.batchplan import merge_graph, plan_batching
from comfybento.workflows.binding import bind, shape_key
from comfybento.workflows.graph import load_graph
from comfybento.workflows.params import infer_params

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = ROOT / "tests" / "graphs"


def test_default_graph_is_batchable_and_merges(node_defs):
    graph = load_graph(ROOT / "workflows" / "txt2img.json")
    params = tuple(infer_params("t", graph, node_defs))
    plan, reason = plan_batching(graph, params)
    assert plan is not None and reason == "batched"
    assert plan.sampler == "3" and plan.positive_encoder == "6" and plan.batched_outputs == {"9"}
    bound = bind(graph, params, {}, 1)
    merged = merge_graph(plan, bound, [{"prompt": "a", "negative_prompt": "n"}, {"prompt": "b", "negative_prompt": "n"}], [1, 2])
    assert merged["3"]["class_type"] == "ComfyBentoBatchKSampler"
    assert json.loads(merged["3"]["inputs"]["seeds"]) == [1, 2]
    assert merged["6#0"]["inputs"]["text"] == "a" and merged["6#1"]["inputs"]["text"] == "b"
    assert "6" not in merged and merged["3#latent"]["inputs"]["amount"] == 2
    assert merged["3"]["inputs"]["positive"] == ["3#positive", 0]


def test_img2img_and_two_outputs_are_batchable(node_defs):
    for name in ("img2img.json", "two_outputs.json"):
        graph = load_graph(GRAPHS / name)
        plan, reason = plan_batching(graph, tuple(infer_params(name, graph, node_defs)))
        assert plan is not None, reason
    graph = load_graph(GRAPHS / "two_outputs.json")
    plan, _ = plan_batching(graph, tuple(infer_params("t", graph, node_defs)))
    assert plan.batched_outputs == {"301", "302"}


def test_unsafe_structures_fall_back_with_a_reason(node_defs):
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    graph["10"] = dict(graph["3"])  # a second sampler (hires-fix style)
    plan, reason = plan_batching(graph, tuple(infer_params("t", graph, node_defs)))
    assert plan is None and "2 samplers" in reason
    cpack = load_graph(GRAPHS / "cpack.json")
    plan, reason = plan_batching(cpack, tuple(infer_params("c", cpack, node_defs)))
    assert plan is None and "seed" in reason


def test_shape_key_ignores_only_batchable_fields(node_defs):
    graph = load_graph(ROOT / "workflows" / "txt2img.json")
    params = tuple(infer_params("t", graph, node_defs))
    roles = frozenset({"prompt", "negative_prompt", "seed"})
    a = shape_key(params, {"prompt": "x", "seed": 1}, roles)
    assert a == shape_key(params, {"prompt": "y", "seed": 2, "negative_prompt": "z"}, roles)
    assert a != shape_key(params, {"prompt": "x", "width": 64}, roles)
    assert a != shape_key(params, {"prompt": "x", "sampler_name": "heun"}, roles)
