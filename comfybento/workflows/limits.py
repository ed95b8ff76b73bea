"""Server-side limits checked: what one request may ask of the machine.

The values (`Limits`, comfybento/limits.py) are set globally (COMFYBENTO_MAX_*
settings) and per workflow (the sidecar's `limits:` mapping). They apply in three places:
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
from typing import Any

from comfybento.errors import InvalidRequest, TooLarge
from comfybento.limits import Limits
from comfybento.workflows.binding import bind
from comfybento.workflows.graph import Graph, is_link
from comfybento.workflows.params import UPLOAD_KINDS, Param

# Node inputs that size the work of a request, wherever they appear in a graph.
WIDTH_INPUTS = ("width", "empty_latent_width")
HEIGHT_INPUTS = ("height", "empty_latent_height")
BATCH_INPUTS = ("batch_size", "amount")
STEP_INPUTS = ("steps",)


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
