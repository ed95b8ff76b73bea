"""Output kinds, media types and extensions (outputs/media.py), and output naming (workflows/params.py)."""

from __future__ import annotations

import io

from PIL import Image

from comfybento.outputs.media import KNOWN_OUTPUTS, OUTPUT_IMAGE_CLASSES, dimensions, extension_for, kind_of, media_type_of
from comfybento.workflows.graph import NodeDef
from comfybento.workflows.params import OutputSpec, infer_outputs


def test_media_types_kinds_and_extensions():
    assert [media_type_of(n) for n in ("a.webm", "a.mp4", "a.flac", "a.opus", "a.txt", "a.zip", "a.weird")] == [
        "video/webm", "video/mp4", "audio/flac", "audio/ogg", "text/plain", "application/zip", "application/octet-stream"]
    assert kind_of("image/webp") == "image" and kind_of("image/webp", animated=True) == "animation"
    assert [kind_of(m) for m in ("video/mp4", "audio/mpeg", "text/plain", "application/zip")] == ["video", "audio", "text", "file"]
    assert [extension_for(m) for m in ("image/jpeg", "video/webm", "audio/mpeg", "text/plain", "application/x-nothing")] == [
        "jpg", "webm", "mp3", "txt", "bin"]


def test_the_images_comfybento_encodes_are_the_image_rows_of_the_one_output_table():
    """One table of output kinds (KNOWN_OUTPUTS): a new image output node added there is collected and encoded too."""
    assert OUTPUT_IMAGE_CLASSES == ("SaveImage", "PreviewImage", "CPackOutputImage")
    assert all(KNOWN_OUTPUTS[c][0] == "image" for c in OUTPUT_IMAGE_CLASSES)
    assert [c for c in KNOWN_OUTPUTS if OutputSpec("o", "1", c).encoded_by_us] == list(OUTPUT_IMAGE_CLASSES)


def test_dimensions_from_headers():
    buf = io.BytesIO()
    Image.new("RGB", (40, 24)).save(buf, format="WEBP")
    assert dimensions(buf.getvalue(), "image/webp") == (40, 24)
    assert dimensions(b"not an image", "image/png") == (None, None) and dimensions(b"x", "audio/flac") == (None, None)


def test_every_output_node_is_an_output_named_in_node_order():
    defs = {"SaveImage": NodeDef("SaveImage", {}, output_node=True), "SaveWEBM": NodeDef("SaveWEBM", {}, output_node=True),
            "MyWriter": NodeDef("MyWriter", {}, output_node=True), "VAEDecode": NodeDef("VAEDecode", {})}
    graph = {
        "9": {"class_type": "SaveWEBM", "inputs": {}},
        "10": {"class_type": "MyWriter", "inputs": {}, "_meta": {"title": "PNG"}},
        "2": {"class_type": "SaveImage", "inputs": {}},
        "3": {"class_type": "VAEDecode", "inputs": {}},
    }
    outputs = infer_outputs(graph, defs)
    assert [(o.name, o.node_id, o.kind, o.media_type) for o in outputs] == [
        ("saveimage", "2", "image", None), ("savewebm", "9", "video", "video/webm"), ("png__10", "10", "file", None)]
