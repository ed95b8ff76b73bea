"""Every kind of input: images, masks, video, audio and files by upload, base64, data: URI or URL; their inference and schema."""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from comfybento.errors import InvalidRequest, TooLarge
from comfybento.limits import ENV_NAMES, Limits
from comfybento.urlguard import AllowList
from comfybento.workflows.graph import InputDef, NodeDef
from comfybento.workflows.params import infer_params
from comfybento.workflows.schema import build_input_model
from comfybento.workflows.sidecar import Sidecar, apply_sidecar
from comfybento.workflows.uploads import check_item_input, read_input
from tests.file_server import file_server
from tests.media_samples import png, video, wav

LOCAL = AllowList(["localhost"], "input url")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------- reading


def test_an_image_by_upload_base64_data_uri_and_url_reads_the_same(tmp_path):
    data = png()
    stored = tmp_path / "upload"
    stored.write_bytes(data)
    with file_server() as files:
        url = files.add("/cat", data, "image/png")
        found = [read_input("image", "image", source, Limits(), LOCAL)
                 for source in (stored, _b64(data), f"data:image/png;base64,{_b64(data)}", url, data)]
    assert {(f.data, f.suffix) for f in found} == {(data, ".png")}


def test_a_url_is_refused_where_no_allow_list_is_given():
    with pytest.raises(InvalidRequest, match=r"^image: a URL is not taken here"):
        read_input("image", "image", "https://example.com/x.png", Limits(), None)


def test_a_data_uri_must_be_base64_and_of_the_right_type():
    with pytest.raises(InvalidRequest, match=r"^mask: a data: URI must be data:<type>;base64,<data>"):
        read_input("mask", "mask", "data:image/png,abc", Limits(), None)
    with pytest.raises(InvalidRequest, match=r"^mask: the data: URI is text/plain, not a mask file"):
        read_input("mask", "mask", f"data:text/plain;base64,{_b64(png())}", Limits(), None)


def test_video_and_audio_are_sniffed_not_trusted():
    assert read_input("clip", "video", _b64(video()), Limits(), None).suffix == ".mp4"
    assert read_input("voice", "audio", _b64(wav()), Limits(), None).suffix == ".wav"
    with pytest.raises(InvalidRequest, match=r"^clip: the wav file has no video stream"):
        read_input("clip", "video", _b64(wav()), Limits(), None)
    with pytest.raises(InvalidRequest, match=r"^clip: a still image \(png_pipe\), not a video file"):
        read_input("clip", "video", _b64(png()), Limits(), None)
    with pytest.raises(InvalidRequest, match=r"^voice: not a readable audio file"):
        read_input("voice", "audio", _b64(b"RIFF" + b"\0" * 200), Limits(), None)
    with pytest.raises(InvalidRequest, match=r"^image: not a PNG, JPEG or WebP image"):
        read_input("image", "image", _b64(wav()), Limits(), None)


def test_media_limits_name_themselves():
    with pytest.raises(TooLarge, match=r"^voice: the audio is 3.0 s long, more than the limit of 2 s \(max_media_seconds\)"):
        read_input("voice", "audio", _b64(wav(3.0)), replace(Limits(), max_media_seconds=2), None)
    with pytest.raises(TooLarge, match=r"^clip: the video has 8 frames, more than the limit of 5 \(max_video_frames\)"):
        read_input("clip", "video", _b64(video(8)), replace(Limits(), max_video_frames=5), None)
    with pytest.raises(TooLarge, match=r"^clip: the video is 64 x 64 pixels a frame, .*\(max_upload_pixels\)"):
        read_input("clip", "video", _b64(video(2)), replace(Limits(), max_upload_pixels=1000), None)
    with pytest.raises(TooLarge, match=r"^clip: the upload is \d+ bytes, more than the limit of 100 \(max_upload_bytes\)"):
        read_input("clip", "video", _b64(video(2)), replace(Limits(), max_upload_bytes=100), None)


def test_the_new_limits_have_env_names():
    for name in ("max_url_seconds", "max_url_redirects", "max_media_seconds", "max_video_frames"):
        assert ENV_NAMES[name] == f"COMFYBENTO_{name.upper()}"


def test_a_job_item_url_is_checked_for_its_form_at_submit_and_base64_in_full():
    check_item_input("image", "image", "https://example.com/a.png", Limits())  # fetched when the item runs
    with pytest.raises(InvalidRequest, match=r"^image: not an http"):
        check_item_input("image", "image", "https://", Limits())
    with pytest.raises(InvalidRequest, match=r"^image: not a PNG"):
        check_item_input("image", "image", _b64(b"hello there"), Limits())
    check_item_input("clip", "video", _b64(video(2)), Limits())


# ---------------------------------------------------------------- inference


def _i(name: str, typ: str, choices: tuple[str, ...] = (), **opts: object) -> InputDef:
    return InputDef(name=name, type=typ, required=True, options=opts, choices=choices)


# As ComfyUI 0.3.75 declares them (nodes.py, comfy_extras/nodes_video.py, nodes_audio.py).
DEFS = {
    "LoadImage": NodeDef("LoadImage", {"image": _i("image", "COMBO", ("a.png",), image_upload=True)}, return_types=("IMAGE", "MASK")),
    "LoadImageMask": NodeDef("LoadImageMask", {"image": _i("image", "COMBO", ("a.png",), image_upload=True),
                                               "channel": _i("channel", "COMBO", ("alpha", "red", "green", "blue"))},
                             return_types=("MASK",)),
    "LoadVideo": NodeDef("LoadVideo", {"file": _i("file", "COMBO", ("a.mp4",), video_upload=True)}, return_types=("VIDEO",)),
    "LoadAudio": NodeDef("LoadAudio", {"audio": _i("audio", "COMBO", ("a.wav",), audio_upload=True)}, return_types=("AUDIO",)),
    "MyLoader": NodeDef("MyLoader", {"clip": _i("clip", "COMBO", ("a.mp4",), video_upload=True)}, return_types=("VIDEO",)),
    "SetLatentNoiseMask": NodeDef("SetLatentNoiseMask", {"samples": _i("samples", "LATENT"), "mask": _i("mask", "MASK")}),
    "ImageScale": NodeDef("ImageScale", {
        "image": _i("image", "IMAGE"), "upscale_method": _i("upscale_method", "COMBO", ("nearest-exact", "bilinear")),
        "width": _i("width", "INT", min=0, max=16384), "height": _i("height", "INT", min=0, max=16384),
        "crop": _i("crop", "COMBO", ("disabled", "center"))}),
    "ImageBlend": NodeDef("ImageBlend", {"image1": _i("image1", "IMAGE"), "image2": _i("image2", "IMAGE"),
                                         "blend_factor": _i("blend_factor", "FLOAT", min=0.0, max=1.0, step=0.01),
                                         "blend_mode": _i("blend_mode", "COMBO", ("normal", "multiply"))}),
    "Flip": NodeDef("Flip", {"image": _i("image", "IMAGE"), "vertical": _i("vertical", "BOOLEAN", default=False)}),
    "CPackInputImage": NodeDef("CPackInputImage", {"image": _i("image", "COMBO", ("a.png",), image_upload=True)},
                               return_types=("IMAGE", "MASK")),
}

GRAPH = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
    "2": {"class_type": "LoadImageMask", "inputs": {"image": "a.png", "channel": "alpha"}},
    "3": {"class_type": "LoadVideo", "inputs": {"file": "a.mp4"}},
    "4": {"class_type": "LoadAudio", "inputs": {"audio": "a.wav"}},
    "5": {"class_type": "MyLoader", "inputs": {"clip": "a.mp4"}},
    "6": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["9", 0], "mask": ["1", 1]}},
    "7": {"class_type": "ImageBlend", "inputs": {"image1": ["1", 0], "image2": ["1", 0], "blend_factor": 0.5, "blend_mode": "normal"}},
    "8": {"class_type": "Flip", "inputs": {"image": ["7", 0], "vertical": False}},
}


def test_loaders_are_typed_uploads():
    params = {p.name: p for p in infer_params("t", GRAPH, DEFS)}
    kinds = {name: (p.kind, p.node_id, p.input_name) for name, p in params.items()}
    assert kinds == {"image": ("image", "1", "image"), "mask": ("mask", "2", "image"), "video": ("video", "3", "file"),
                     "audio": ("audio", "4", "audio"), "video__5": ("video", "5", "clip")}
    assert "MASK output" in params["image"].description  # its mask feeds node 6
    model = build_input_model("t", list(params.values()))
    schema = model.model_json_schema()["properties"]
    assert [schema[n].get("content_type") for n in ("image", "mask", "video", "audio")] == ["image/*", "image/*", "video/*", "audio/*"]
    assert "http(s) URL" in schema["video"]["description"] and "max_url_seconds" in schema["video"]["description"]
    assert model.multipart_fields == ["image", "mask", "video", "audio", "video__5"]
    values = model(image="aGk=", mask=Path("/tmp/x"), video="https://example.com/v.mp4", audio="data:audio/wav;base64,aGk=",
                   video__5="aGk=")
    assert values.image == "aGk=" and values.video.startswith("https://")  # strings stay strings, read later
    with pytest.raises(ValidationError, match="image"):
        model(image=" ", mask="a", video="a", audio="a", video__5="a")


def test_cpack_image_with_its_mask_is_typed_as_comfy_pack_types_it():
    graph = {"1": {"class_type": "CPackInputImage", "inputs": {"image": "a.png"}, "_meta": {"title": "photo"}},
             "2": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["9", 0], "mask": ["1", 1]}}}
    (param,) = infer_params("t", graph, DEFS)
    assert (param.name, param.kind, param.input_name) == ("photo", "image", "image") and "MASK output" in param.description
    item = build_input_model("t", [param], images_as_base64=True)
    assert item(photo="https://example.com/a.png").photo == "https://example.com/a.png"


def test_sidecar_exposes_booleans_floats_combos_and_loader_files_typed():
    sidecar = Sidecar(entries=(
        {"node": "8", "input": "vertical"}, {"node": "7", "input": "blend_factor", "name": "blend"},
        {"node": "7", "input": "blend_mode"}, {"node": "2", "input": "channel"},
    ))
    params = {p.name: p for p in apply_sidecar("t", sidecar, GRAPH, DEFS, infer_params("t", GRAPH, DEFS))}
    assert (params["vertical"].kind, params["blend"].kind, params["blend_mode"].kind) == ("bool", "float", "enum")
    model = build_input_model("t", list(params.values()))
    props = model.model_json_schema()["properties"]
    assert props["vertical"]["type"] == "boolean" and props["vertical"]["default"] is False
    assert (props["blend"]["type"], props["blend"]["minimum"], props["blend"]["maximum"]) == ("number", 0.0, 1.0)
    assert props["blend_mode"]["enum"] == ["normal", "multiply"] and props["channel"]["enum"] == ["alpha", "red", "green", "blue"]
    files = {"image": "aGk=", "mask": "aGk=", "video": "aGk=", "audio": "aGk=", "video__5": "aGk="}
    ok = model(**files, vertical=True, blend=0.25, blend_mode="multiply", channel="red")
    assert (ok.vertical, ok.blend, ok.blend_mode, ok.channel) == (True, 0.25, "multiply", "red")
    for field, bad in (("vertical", "maybe"), ("blend", 1.5), ("blend_mode", "screen"), ("channel", "cyan")):
        with pytest.raises(ValidationError, match=field):
            model(**files, **{field: bad})


def test_a_sidecar_naming_a_loaders_file_input_gets_an_upload_never_a_file_list():
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": ["0", 0]}},  # linked: not inferred
             "2": {"class_type": "LoadVideo", "inputs": {"file": "a.mp4"}}}
    sidecar = Sidecar(entries=({"node": "2", "input": "file", "name": "clip"},))
    (param,) = apply_sidecar("t", sidecar, graph, DEFS, [])
    assert (param.name, param.kind, param.choices) == ("clip", "video", ())


def test_a_text_field_of_a_form_is_its_text_even_when_it_reads_as_json():
    from starlette.datastructures import FormData

    from comfybento.workflows.schema import _form_values, _text_fields

    params = {p.name: p for p in infer_params("t", GRAPH, DEFS)}
    model = build_input_model("t", [*params.values()])
    assert {"output_format", "output_delivery"} <= _text_fields(model) and "output_quality" not in _text_fields(model)
    form = FormData([("output_delivery", "7"), ("output_format", '"png"'), ("output_quality", "80")])
    # `-F x=7` is the text "7"; `"png"` is JSON of the text png (the documented part encoding); a number is a number
    assert _form_values([], form, _text_fields(model)) == {"output_delivery": "7", "output_format": "png", "output_quality": 80}
