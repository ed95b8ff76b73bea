"""Server-side limits (workflows/limits.py) and upload checks (workflows/uploads.py), without ComfyUI."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from comfybento.config import Settings
from comfybento.errors import InvalidRequest, TooLarge, WorkflowError
from comfybento.limits import CPU_LIMITS, Limits
from comfybento.workflows.limits import check_graph_limits
from comfybento.workflows.uploads import check_image, read_upload


def _graph(width: int = 512, height: int = 512, batch_size: int = 1, steps: int = 20) -> dict:
    return {
        "3": {"class_type": "KSampler", "inputs": {"steps": steps, "latent_image": ["5", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch_size}},
    }


def _png(image: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **save)
    return buf.getvalue()


def test_sidecar_overrides_are_checked():
    assert Limits().override({"max_steps": 60}, "w.yaml").max_steps == 60
    with pytest.raises(WorkflowError, match="unknown limits"):
        Limits().override({"max_stepz": 60}, "w.yaml")
    with pytest.raises(WorkflowError, match="max_steps must be a positive integer"):
        Limits().override({"max_steps": "lots"}, "w.yaml")


@pytest.mark.parametrize(
    ("graph", "named"),
    [
        (_graph(width=8192, height=4096), "max_image_pixels"),
        (_graph(batch_size=17), "max_images"),
        (_graph(steps=151), "max_steps"),
        (_graph(width=2048, height=2048, batch_size=8), "max_request_pixels"),
    ],
)
def test_a_graph_over_a_limit_is_refused_naming_it(graph, named):
    with pytest.raises(TooLarge, match=named) as refused:
        check_graph_limits("txt2img", graph, Limits())
    assert int(refused.value.error_code) == 413


def test_a_graph_within_the_limits_passes_and_links_are_not_sizes():
    check_graph_limits("txt2img", _graph(width=1024, height=1024, batch_size=16, steps=150), Limits())
    linked = _graph()
    linked["5"]["inputs"]["width"] = ["9", 0]  # a link, not a number
    check_graph_limits("txt2img", linked, Limits())


def test_a_latent_smaller_than_min_side_is_refused_but_a_thumbnail_is_not():
    # A fuzzer's 16 x 16 image made a UNet layer a single cell and KSampler failed (a 500).
    with pytest.raises(InvalidRequest, match="min_side") as refused:
        check_graph_limits("txt2img", _graph(width=16, height=512), Limits())
    assert int(refused.value.error_code) == 422 and "16 x 512 at node 5 (EmptyLatentImage)" in str(refused.value)
    thumbnail = _graph() | {"7": {"class_type": "ImageScale", "inputs": {"width": 32, "height": 32, "image": ["6", 0]}}}
    check_graph_limits("txt2img", thumbnail, Limits())
    check_graph_limits("txt2img", _graph(width=64, height=64), Limits())


def test_a_bomb_is_refused_from_its_header():
    bomb = _png(Image.new("1", (13000, 13000)), optimize=True)
    assert len(bomb) < 64 * 1024
    with pytest.raises(TooLarge, match=r"13000 x 13000.*max_upload_pixels"):
        check_image("image", bomb, Limits())


def test_frames_count_towards_the_pixels():
    frames = [Image.new("RGB", (1024, 1024), (i, 0, 0)) for i in range(20)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(TooLarge, match="20 frame"):
        check_image("image", buf.getvalue(), Limits())


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (_png(Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)))[:5000], InvalidRequest, "truncated or corrupt"),
        (os.urandom(3000), InvalidRequest, "not a PNG, JPEG or WebP"),
        (_png(Image.new("RGB", (4, 64))), InvalidRequest, "at least 8"),
    ],
)
def test_bad_images_are_refused(data, error, message):
    with pytest.raises(error, match=message):
        check_image("image", data, Limits())


def test_read_upload_sizes_and_base64():
    good = _png(Image.new("RGB", (32, 32), (10, 20, 30)))
    assert read_upload("image", good, Limits()) == good
    with pytest.raises(TooLarge, match="max_upload_bytes"):
        read_upload("image", good, Limits(max_upload_bytes=len(good) - 1))
    with pytest.raises(InvalidRequest, match="not base64"):
        read_upload("image", "not base64!", Limits())
    with pytest.raises(InvalidRequest, match="required"):
        read_upload("image", None, Limits())


# The shapes that exhausted memory or the engine's time on a 2-core, 24 GB CPU machine (hostile-input issue, point 2),
# each refused under the CPU engine's defaults by the limit that names it.
@pytest.mark.parametrize(
    ("graph", "named"),
    [
        (_graph(width=4096, height=4096, steps=1), "max_side"),  # engine >= 9 GB in 14 s
        (_graph(width=1024, height=1024, batch_size=16), "max_image_pixels"),  # >= 8.9 GB
        (_graph(width=128, height=6496, batch_size=16), "max_side"),  # 7.9 GB and > 300 s
        (_graph(width=11776, height=128), "max_side"),  # 1.5 Mpx: 253 s and 7.1 GB
        (_graph(width=1936, height=128, steps=66), "max_aspect_ratio"),  # a fuzzer's 311 s item
        (_graph(width=384, height=384, batch_size=2), "max_request_pixels"),  # 2 x 0.6 GB over the process's base
        (_graph(width=512, height=512), "max_image_pixels"),  # 1.1 GB over a base that crept to 1.1 GB under fuzzing
        (_graph(width=2048, height=128), "max_aspect_ratio"),
    ],
)
def test_cpu_defaults_refuse_the_shapes_that_exhausted_the_machine(graph, named):
    with pytest.raises(TooLarge, match=named):
        check_graph_limits("txt2img", graph, CPU_LIMITS)


def test_cpu_defaults_allow_what_fits_in_2_gb():
    for graph in (_graph(width=448, height=448), _graph(width=224, height=224, batch_size=4), _graph(width=1024, height=128),  # 8:1
                  _graph(width=128, height=96, batch_size=16)):
        check_graph_limits("txt2img", graph, CPU_LIMITS)


def test_the_engine_device_picks_the_defaults():
    assert Settings.from_env({"COMFYBENTO_CPU": "1"}).limits == CPU_LIMITS
    assert Settings.from_env({"COMFYBENTO_GPU": "1"}).limits == Limits()
    assert Settings.from_env({"COMFYBENTO_GPU": "1", "COMFYBENTO_MAX_SIDE": "4096"}).limits.max_side == 4096
    cpu = Settings.from_env({"COMFYBENTO_CPU": "1", "COMFYBENTO_MAX_REQUEST_PIXELS": str(1024 * 1024)})
    assert cpu.limits.max_request_pixels == 1024 * 1024 and cpu.limits.max_side == 2048
    assert Settings.from_env({"COMFYBENTO_CPU": "1"}).max_execution_s == 120
    assert Settings.from_env({"COMFYBENTO_GPU": "1"}).max_execution_s == 600
