"""Server-side limits: what one request may ask of the machine.

Set globally (COMFYBENTO_MAX_* settings) and per workflow (the sidecar's
`limits:` mapping). They apply in three places:
  - the request schema: text fields get `max_length`, and the inferred
    steps / width / height / batch_size fields get a lower `maximum`, so the
    OpenAPI states them and a bad value is refused naming its field;
  - `check_graph_limits`, on the bound graph, whatever the parameter is called
    (comfy-pack inputs and sidecar-added ones included): pixels per image and
    per request, images per request, steps;
  - input files (workflows/uploads.py), whether uploaded, base64 or by URL:
    bytes, pixels and frames read from the image header before any pixel is
    decoded; a video's or audio's length and frames from its container; a
    URL's download time and redirects.
An over-limit request gets a 413 naming the limit and how to raise it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from comfybento.errors import InvalidRequest, TooLarge, WorkflowError
from comfybento.workflows.binding import bind
from comfybento.workflows.graph import Graph, is_link
from comfybento.workflows.params import UPLOAD_KINDS, Param

# Node inputs that size the work of a request, wherever they appear in a graph.
WIDTH_INPUTS = ("width", "empty_latent_width")
HEIGHT_INPUTS = ("height", "empty_latent_height")
BATCH_INPUTS = ("batch_size", "amount")
STEP_INPUTS = ("steps",)


@dataclass(frozen=True)
class Limits:
    # Pixels of one generated image (width x height): 4096 x 4096 (512 x 512 on a CPU engine: see CPU_LIMITS).
    max_image_pixels: int = 4096 * 4096
    # Pixels of all images one request makes (width x height x batch_size): 16 images of 1024 x 1024. Memory grows
    # with them: the VAE works at full resolution on every image of the batch at once.
    max_request_pixels: int = 16 * 1024 * 1024
    # Longest side of a generated image, and the largest ratio of its long side to its short one (a 11776 x 128
    # image is within a pixel limit but costs as much time as a square one many times its area).
    max_side: int = 8192
    max_aspect_ratio: int = 8
    # Shortest side of a generated image: the VAE makes a latent of side / 8 and the UNet halves it three times, so
    # below 64 pixels a layer's feature map is a single cell (models fail inside the sampler there).
    min_side: int = 64
    # Images one request may ask for (a latent's batch_size).
    max_images: int = 16
    # Sampling steps of one sampler.
    max_steps: int = 150
    # Characters of any text field (prompts).
    max_text_chars: int = 20_000
    # Bytes of one uploaded file, and its pixels (width x height x frames) read from its header.
    max_upload_bytes: int = 25 * 1024 * 1024
    max_upload_pixels: int = 4096 * 4096
    # Smallest side of an uploaded image (the VAE works in 8-pixel cells).
    min_upload_side: int = 8
    # Bytes of a whole request body (multipart uploads included).
    max_body_bytes: int = 64 * 1024 * 1024
    # Nesting of arrays and objects in a JSON body, measured before it is parsed (the service-wide value applies).
    max_json_depth: int = 64
    # Input files given by URL: seconds for the whole download (connection, headers, body, redirects included),
    # the bytes a second it must keep up over any 5 s (comfybento/transfer.py), and redirects followed.
    # Their bytes count against max_upload_bytes like an upload's.
    max_url_seconds: int = 20
    min_url_bytes_per_s: int = 16 * 1024
    max_url_redirects: int = 5
    # Video and audio inputs: length in seconds, and frames of a video, read from the container's header.
    max_media_seconds: int = 600
    max_video_frames: int = 10_000

    def override(self, values: dict[str, Any], where: str) -> Limits:
        """These limits with a sidecar's `limits:` mapping applied (positive integers, known names)."""
        known = {f.name for f in fields(self)}
        unknown = set(values) - known
        if unknown:
            raise WorkflowError(f"{where}: unknown limits {sorted(unknown)}; known: {sorted(known)}")
        for name, value in values.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise WorkflowError(f"{where}: limits.{name} must be a positive integer, got {value!r}")
        return replace(self, **values)


ENV_NAMES = {f.name: f"COMFYBENTO_{f.name.upper()}" for f in fields(Limits)}

# The defaults on an engine without a GPU. On a CPU, memory grows by about 4.2 KB per pixel of every image of a
# request (fp32; VAE decode and encode at full resolution). Measured with the tiny SD model on a 2-core, 24 GB
# machine, the engine's peak RSS is 0.72 GB at 256 x 256, 1.66 GB at 512 x 512 (and at 2048 x 128, the same
# pixels), 4.8 GB at 1024 x 1024 or 4 x 512 x 512: 512 x 512 pixels per request (images and uploads alike) keeps
# every process under 2 GB whatever a request asks. Raise them (COMFYBENTO_MAX_*) on a machine with more memory.
CPU_LIMITS = replace(Limits(), max_image_pixels=512 * 512, max_request_pixels=512 * 512, max_upload_pixels=512 * 512,
                     max_side=2048)


def _literal_ints(graph: Graph, node_id: str, names: tuple[str, ...]) -> Iterator[tuple[str, int]]:
    inputs = graph[node_id].get("inputs", {})
    for name in names:
        value = inputs.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and not is_link(value):
            yield name, int(value)


def check_request_limits(workflow: str, graph: Graph, params: tuple[Param, ...], values: Mapping[str, Any], limits: Limits,
                         seed: int | None = None) -> None:
    """Refuse request values (uploads aside: they are checked on their own) that make the graph go over a limit."""
    plain = {p.name: values[p.name] for p in params if p.kind not in UPLOAD_KINDS and p.name in values}
    check_graph_limits(workflow, bind(graph, params, plain, seed), limits)


def check_graph_limits(workflow: str, graph: Graph, limits: Limits) -> None:
    """Refuse a bound graph that asks for more pixels, images or steps than the limits allow."""
    total = 0
    for node_id, node in graph.items():
        where = f"node {node_id} ({node.get('class_type')})"
        sizes = dict(_literal_ints(graph, node_id, WIDTH_INPUTS + HEIGHT_INPUTS + BATCH_INPUTS + STEP_INPUTS))
        width = next((sizes[n] for n in WIDTH_INPUTS if n in sizes), None)
        height = next((sizes[n] for n in HEIGHT_INPUTS if n in sizes), None)
        images = next((sizes[n] for n in BATCH_INPUTS if n in sizes), 1)
        for name in STEP_INPUTS:
            if sizes.get(name, 0) > limits.max_steps:
                raise TooLarge(f"{name}: {sizes[name]} steps at {where} is more than the limit of {limits.max_steps} "
                               "(max_steps)")
        if images > limits.max_images:
            raise TooLarge(f"batch_size: {images} images at {where} is more than the limit of {limits.max_images} (max_images)")
        if width is None or height is None:
            continue
        makes_latent = any(n in sizes for n in BATCH_INPUTS)  # a resize to a thumbnail is not held to min_side
        if makes_latent and 0 < min(width, height) < limits.min_side:
            raise InvalidRequest(f"width x height: {width} x {height} at {where}: a side is shorter than the minimum of "
                                 f"{limits.min_side} pixels (min_side)")
        if max(width, height) > limits.max_side:
            raise TooLarge(f"width x height: {width} x {height} at {where}: a side is longer than the limit of "
                           f"{limits.max_side} pixels (max_side)")
        if min(width, height) > 0 and max(width, height) > limits.max_aspect_ratio * min(width, height):
            raise TooLarge(f"width x height: {width} x {height} at {where} is more elongated than the limit of "
                           f"{limits.max_aspect_ratio}:1 (max_aspect_ratio)")
        if width * height > limits.max_image_pixels:
            raise TooLarge(f"width x height: {width} x {height} at {where} is more than the limit of "
                           f"{limits.max_image_pixels} pixels per image (max_image_pixels)")
        total += width * height * max(1, images)
    if total > limits.max_request_pixels:
        raise TooLarge(f"{workflow}: this request makes {total} pixels, more than the limit of {limits.max_request_pixels} "
                       "pixels per request (max_request_pixels; lower width, height or batch_size)")
