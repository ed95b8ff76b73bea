"""Server-side limits: what one request may ask of the machine (the values; the checks are in workflows/limits.py).

Set globally (COMFYBENTO_MAX_* settings, read by config.py) and per workflow (the
sidecar's `limits:` mapping, `Limits.override`). Below config in the layers: plain
data that config, workflows and outputs share.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from comfybento.errors import WorkflowError


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
# pixels), 4.8 GB at 1024 x 1024 or 4 x 512 x 512. Under fuzzing (bench/fuzz_memory.py) the engine's RSS between
# requests also creeps up by about 0.5 GB (the allocator's free lists), so a 512 x 512 request late in a run took
# it past 2 GB: 448 x 448 pixels per request (images and uploads alike) keeps every process under 2 GB whatever a
# request asks. Raise them (COMFYBENTO_MAX_*) on a machine with more memory.
CPU_PIXELS = 448 * 448
CPU_LIMITS = replace(Limits(), max_image_pixels=CPU_PIXELS, max_request_pixels=CPU_PIXELS, max_upload_pixels=CPU_PIXELS,
                     max_side=2048)
