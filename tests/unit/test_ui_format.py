"""UI-format conversion rules on small hand-made graphs and node definitions (no ComfyUI)."""

from __future__ import annotations

import json

import pytest

from comfybento.errors import WorkflowError
from comfybento.workflows.graph import InputDef, NodeDef, load_graph
from comfybento.workflows.ui_format import load_workflow_graph, ui_to_api

SEED = {"default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True}


def _def(class_type: str, inputs: list[InputDef], outputs: tuple[str, ...] = (), display: str = "", output_node: bool = False) -> NodeDef:
    return NodeDef(class_type, {i.name: i for i in inputs}, output_node=output_node, return_types=outputs, display_name=display)


NODE_DEFS = {
    "Loader": _def("Loader", [InputDef("ckpt_name", "COMBO", True, choices=("a.safetensors", "b.safetensors"))], ("MODEL", "CLIP"), "Load"),
    "Sampler": _def(
        "Sampler",
        [
            InputDef("model", "MODEL", True),
            InputDef("seed", "INT", True, SEED),
            InputDef("steps", "INT", True, {"default": 20}),
            InputDef("sampler_name", "COMBO", True, choices=("euler", "ddim")),
            InputDef("latent", "LATENT", True),
            InputDef("denoise", "FLOAT", False, {"default": 1.0}),
        ],
        ("LATENT",),
        "Sampler Title",
    ),
    "Latent": _def(
        "Latent", [InputDef("width", "INT", True, {"default": 512}), InputDef("height", "INT", True, {"default": 512})], ("LATENT",)
    ),
    "Upscale": _def("Upscale", [InputDef("samples", "LATENT", True), InputDef("scale", "FLOAT", True, {"default": 1.5})], ("LATENT",)),
    "Mix": _def("Mix", [InputDef("model", "MODEL", True), InputDef("clip", "CLIP", True)], ("CLIP", "MODEL")),
    "Save": _def("Save", [InputDef("latent", "LATENT", True), InputDef("prefix", "STRING", True, {"default": "out"})], output_node=True),
    "LoadMask": _def(
        "LoadMask",
        [
            InputDef("image", "COMBO", True, {"image_upload": True}, ("x.png",)),
            InputDef("channel", "COMBO", True, choices=("alpha", "red")),
            InputDef("blur", "INT", False, {"default": 0}),
        ],
        ("MASK",),
    ),
    "Noise": _def(
        "Noise", [InputDef("noise_seed", "INT", True, {"default": 0}), InputDef("sizes", "STRING", True, {"default": ""})], ("NOISE",)
    ),
    "Forced": _def("Forced", [InputDef("a", "INT", True, {"forceInput": True}), InputDef("b", "INT", True, {"default": 0})], ("INT",)),
}


def node(id_: int, type_: str, widgets=None, inputs=(), outputs=(), mode: int = 0, title: str = "") -> dict:
    raw = {"id": id_, "type": type_, "mode": mode, "inputs": list(inputs), "outputs": list(outputs)}
    if widgets is not None:
        raw["widgets_values"] = widgets
    if title:
        raw["title"] = title
    return raw


def slot(name: str, type_: str, link: int | None, widget: bool = False) -> dict:
    return {"name": name, "type": type_, "link": link, **({"widget": {"name": name}} if widget else {})}


def out(type_: str) -> dict:
    return {"name": type_, "type": type_, "links": []}


def txt2img(sampler_mode: int = 0, extra_nodes=(), extra_links=()) -> dict:
    """Loader -> Sampler <- Latent; Sampler -> Save."""
    nodes = [
        node(1, "Loader", ["a.safetensors"], outputs=[out("MODEL"), out("CLIP")]),
        node(2, "Latent", [64, 96], outputs=[out("LATENT")]),
        node(
            3,
            "Sampler",
            [7, "randomize", 4, "ddim", 0.5],
            [slot("model", "MODEL", 1), slot("latent", "LATENT", 2)],
            [out("LATENT")],
            mode=sampler_mode,
            title="My sampler",
        ),
        node(4, "Save", ["img"], [slot("latent", "LATENT", 3)]),
        *extra_nodes,
    ]
    links = [[1, 1, 0, 3, 0, "MODEL"], [2, 2, 0, 3, 1, "LATENT"], [3, 3, 0, 4, 0, "LATENT"], *extra_links]
    return {"nodes": nodes, "links": links, "groups": [{"title": "a group", "bounding": [0, 0, 10, 10]}], "version": 0.4}


def convert(data: dict) -> dict:
    return ui_to_api(data, NODE_DEFS, "wf.json")


def test_widget_values_fill_inputs_in_widget_order_skipping_the_control_value():
    graph = convert(txt2img())
    assert graph["3"] == {
        "inputs": {"seed": 7, "steps": 4, "sampler_name": "ddim", "denoise": 0.5, "model": ["1", 0], "latent": ["2", 0]},
        "class_type": "Sampler",
        "_meta": {"title": "My sampler"},
    }
    assert graph["1"]["_meta"]["title"] == "Load"  # the class's display name when the node has no title
    assert graph["2"]["_meta"]["title"] == "Latent"  # else the class name
    assert set(graph) == {"1", "2", "3", "4"}


def test_seed_named_int_has_a_control_value_and_a_file_without_it_still_maps():
    data = txt2img(extra_nodes=[node(5, "Noise", [11, "fixed", "1,2"], outputs=[out("NOISE")])])
    assert convert(data)["5"]["inputs"] == {"noise_seed": 11, "sizes": "1,2"}
    data = txt2img(extra_nodes=[node(5, "Noise", [11, "1,2"], outputs=[out("NOISE")])])  # saved without the control widget
    assert convert(data)["5"]["inputs"] == {"noise_seed": 11, "sizes": "1,2"}


def test_widget_values_as_an_object_and_missing_values_take_defaults():
    data = txt2img()
    data["nodes"][2]["widgets_values"] = {"seed": 9, "steps": 3, "sampler_name": "euler", "unknown_widget": 1}
    data["nodes"][1]["widgets_values"] = [32]  # a node def newer than the file: height gets its default
    graph = convert(data)
    assert graph["3"]["inputs"]["seed"] == 9 and graph["3"]["inputs"]["denoise"] == 1.0
    assert "unknown_widget" not in graph["3"]["inputs"]
    assert graph["2"]["inputs"] == {"width": 32, "height": 512}


def test_upload_widget_value_sits_after_the_required_widgets_and_is_not_an_input():
    data = txt2img(extra_nodes=[node(5, "LoadMask", ["x.png", "red", "image", 3], outputs=[out("MASK")])])
    assert convert(data)["5"]["inputs"] == {"image": "x.png", "channel": "red", "blur": 3}


def test_inputs_the_front_end_draws_as_its_own_widgets_take_their_place():
    defs = {**NODE_DEFS, "Webcam": _def("Webcam", [InputDef("image", "WEBCAM", True), InputDef("width", "INT", True)], ("IMAGE",))}
    data = txt2img(extra_nodes=[node(5, "Webcam", ["", 320], outputs=[out("IMAGE")])])
    assert ui_to_api(data, defs, "wf.json")["5"]["inputs"] == {"image": "", "width": 320}


def test_legacy_values_for_socket_only_inputs_are_skipped():
    data = txt2img(extra_nodes=[node(5, "Forced", [1, 2], outputs=[out("INT")])])
    assert convert(data)["5"]["inputs"] == {"b": 2}
    data = txt2img(extra_nodes=[node(5, "Forced", [2], outputs=[out("INT")])])
    assert convert(data)["5"]["inputs"] == {"b": 2}


def test_list_values_are_wrapped_so_they_are_not_read_as_links():
    data = txt2img()
    data["nodes"][3]["widgets_values"] = [["a", 1]]
    assert convert(data)["4"]["inputs"]["prefix"] == {"__value__": ["a", 1]}


def test_primitive_node_feeds_a_converted_widget_through_a_reroute():
    data = txt2img(
        extra_nodes=[
            node(6, "PrimitiveNode", [1234, "fixed"], outputs=[{"name": "INT", "type": "INT", "links": [10], "widget": {"name": "seed"}}]),
            node(7, "Reroute", None, [slot("", "*", 10)], [{"name": "", "type": "INT", "links": [11]}]),
        ],
        extra_links=[[10, 6, 0, 7, 0, "INT"], [11, 7, 0, 3, 2, "INT"]],
    )
    data["nodes"][2]["inputs"].append(slot("seed", "INT", 11, widget=True))
    graph = convert(data)
    assert graph["3"]["inputs"]["seed"] == 1234
    assert "6" not in graph and "7" not in graph


def test_reroutes_pass_links_through_and_converted_widgets_take_links():
    data = txt2img(
        extra_nodes=[node(8, "Reroute", None, [slot("", "*", 20)], [{"name": "", "type": "MODEL", "links": [21]}])],
        extra_links=[[20, 1, 0, 8, 0, "MODEL"], [21, 8, 0, 3, 0, "MODEL"]],
    )
    data["nodes"][2]["inputs"][0]["link"] = 21
    assert convert(data)["3"]["inputs"]["model"] == ["1", 0]


def test_a_bypassed_node_passes_on_its_input_of_the_matching_type():
    upscale = node(5, "Upscale", [2.0], [slot("samples", "LATENT", 30)], [out("LATENT")], mode=4)
    data = txt2img(extra_nodes=[upscale], extra_links=[[30, 2, 0, 5, 0, "LATENT"], [31, 5, 0, 3, 1, "LATENT"]])
    data["nodes"][2]["inputs"][1]["link"] = 31
    graph = convert(data)
    assert graph["3"]["inputs"]["latent"] == ["2", 0] and "5" not in graph


def test_a_bypassed_node_matches_by_type_not_by_slot():
    # Mix outputs (CLIP, MODEL) from inputs (model, clip): its MODEL output passes its model input on.
    mix = node(5, "Mix", None, [slot("model", "MODEL", 40), slot("clip", "CLIP", 41)], [out("CLIP"), out("MODEL")], mode=4)
    data = txt2img(extra_nodes=[mix], extra_links=[[40, 1, 0, 5, 0, "MODEL"], [41, 1, 1, 5, 1, "CLIP"], [42, 5, 1, 3, 0, "MODEL"]])
    data["nodes"][2]["inputs"][0]["link"] = 42
    assert convert(data)["3"]["inputs"]["model"] == ["1", 0]


def test_a_bypassed_node_without_a_matching_input_leaves_the_input_empty():
    upscale = node(5, "Upscale", [2.0], [], [out("LATENT")], mode=4)
    data = txt2img(extra_nodes=[upscale], extra_links=[[31, 5, 0, 3, 1, "LATENT"]])
    data["nodes"][2]["inputs"][1]["link"] = 31
    assert "latent" not in convert(data)["3"]["inputs"]


def test_muted_nodes_are_dropped_with_the_links_from_them_and_notes_are_ignored():
    data = txt2img(sampler_mode=2, extra_nodes=[node(9, "Note", ["read me"]), node(10, "MarkdownNote", ["# hi"])])
    graph = convert(data)
    assert "3" not in graph and "9" not in graph and "10" not in graph
    assert graph["4"]["inputs"] == {"prefix": "img"}


def _subgraph_workflow(instance_mode: int = 0) -> dict:
    """Loader -> [subgraph: Latent + Sampler] -> Save; the subgraph promotes Sampler's steps as a widget."""
    inner_nodes = [
        node(1, "Latent", [32, 32], outputs=[out("LATENT")]),
        node(
            2,
            "Sampler",
            [5, "fixed", 20, "euler", 1.0],
            [slot("model", "MODEL", 1), slot("latent", "LATENT", 2), slot("steps", "INT", 3, True)],
            [out("LATENT")],
        ),
    ]
    inner_links = [
        {"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "MODEL"},
        {"id": 2, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 1, "type": "LATENT"},
        {"id": 3, "origin_id": -10, "origin_slot": 1, "target_id": 2, "target_slot": 2, "type": "INT"},
        {"id": 4, "origin_id": 2, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "LATENT"},
    ]
    subgraph = {
        "id": "sub-uuid",
        "name": "Sample",
        "inputNode": {"id": -10},
        "outputNode": {"id": -20},
        "inputs": [{"name": "model", "type": "MODEL", "linkIds": [1]}, {"name": "steps", "type": "INT", "linkIds": [3]}],
        "outputs": [{"name": "LATENT", "type": "LATENT", "linkIds": [4]}],
        "nodes": inner_nodes,
        "links": inner_links,
    }
    nodes = [
        node(1, "Loader", ["a.safetensors"], outputs=[out("MODEL"), out("CLIP")]),
        node(2, "Latent", [8, 8], outputs=[out("LATENT")]),
        node(7, "sub-uuid", [12], [slot("model", "MODEL", 1), slot("steps", "INT", None, True)], [out("LATENT")], mode=instance_mode),
        node(4, "Save", ["img"], [slot("latent", "LATENT", 3)]),
    ]
    links = [[1, 1, 0, 7, 0, "MODEL"], [3, 7, 0, 4, 0, "LATENT"]]
    return {"nodes": nodes, "links": links, "definitions": {"subgraphs": [subgraph]}, "version": 0.4}


def test_subgraphs_are_flattened_with_path_ids_promoted_widgets_and_outer_links():
    graph = convert(_subgraph_workflow())
    assert set(graph) == {"1", "2", "4", "7:1", "7:2"}
    assert graph["7:2"]["inputs"] == {
        "seed": 5,
        "steps": 12,
        "sampler_name": "euler",
        "denoise": 1.0,
        "model": ["1", 0],
        "latent": ["7:1", 0],
    }
    assert graph["4"]["inputs"]["latent"] == ["7:2", 0]


def test_a_muted_subgraph_mutes_its_nodes_and_a_bypassed_one_passes_its_input_on():
    graph = convert(_subgraph_workflow(instance_mode=2))
    assert set(graph) == {"1", "2", "4"} and "latent" not in graph["4"]["inputs"]
    data = _subgraph_workflow(instance_mode=4)
    data["nodes"][2]["inputs"].insert(1, slot("latent", "LATENT", 5))  # a LATENT input for the bypass to pass on
    data["links"].append([5, 2, 0, 7, 1, "LATENT"])
    graph = convert(data)
    assert set(graph) == {"1", "2", "4"} and graph["4"]["inputs"]["latent"] == ["2", 0]


def test_a_subgraph_that_contains_itself_is_refused():
    data = _subgraph_workflow()
    data["definitions"]["subgraphs"][0]["nodes"].append(node(9, "sub-uuid", None))
    with pytest.raises(WorkflowError, match=r"deeper than"):
        convert(data)


def test_unknown_node_class_names_the_node():
    data = txt2img(extra_nodes=[node(12, "MagicUpscaler", [1], outputs=[out("IMAGE")])])
    with pytest.raises(WorkflowError, match=r"wf.json: node 12 \(MagicUpscaler\): unknown node class"):
        convert(data)
    data = txt2img(extra_nodes=[node(12, "MagicUpscaler", [1], outputs=[out("IMAGE")], mode=2)])
    assert "12" not in convert(data)  # muted: nothing to convert


def test_a_link_the_file_does_not_have_names_the_node_and_input():
    data = txt2img()
    data["nodes"][3]["inputs"][0]["link"] = 99
    with pytest.raises(WorkflowError, match=r"node 4 \(Save\): input 'latent' uses link 99"):
        convert(data)


def test_legacy_group_nodes_are_refused_by_name():
    data = txt2img()
    data["extra"] = {"groupNodes": {"my group": {}}}
    with pytest.raises(WorkflowError, match=r"legacy group nodes \(my group\)"):
        convert(data)


def test_load_graph_converts_ui_files_with_node_defs_and_explains_without(tmp_path):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(txt2img()))
    assert load_workflow_graph(path, NODE_DEFS)["3"]["inputs"]["seed"] == 7
    with pytest.raises(WorkflowError, match=r"UI-format workflow .* needs the node registry"):
        load_graph(path)
