"""Full-size Stable Diffusion 1.5 and SDXL checkpoints with random weights, for GPU benchmarks.

No real weights can be downloaded where the benchmarks are prepared, so these
generators write single-file checkpoints with exactly the architecture (every
key and shape, hence the FLOPs and memory) of real SD1.5 and SDXL base
checkpoints, filled with deterministic random numbers. The images are noise,
but timing and memory use match the real models.

Every key and shape comes from ComfyUI's own classes, built on torch's ``meta``
device (no memory, no data): the ``UNetModel`` of ``comfy.supported_models.SD15``
/ ``SDXL``, the text encoders of ``comfy.sd1_clip`` / ``comfy.sdxl_clip`` and the
``AutoencoderKL`` that ``comfy.sd.VAE`` builds for SD checkpoints. The text
encoders are written in the original-checkpoint layout by the model config's
own ``process_clip_state_dict_for_saving`` (what ComfyUI's checkpoint saver
writes), which ``process_clip_state_dict`` reads back on load.

Each tensor is drawn from ``PCG64(seed + crc32(key))`` as float32 and stored as
little-endian float16; the safetensors file is written tensor by tensor, so
memory stays at about one tensor (the SDXL file is ~7 GB). The bytes depend only
on ComfyUI's architecture and numpy's ``Generator`` stream.

ComfyUI must already be importable (see ``comfybento.runtime.bootstrap``) before
any public function is called; ``comfy`` is imported lazily.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:
    import torch

SD15_CHECKPOINT_NAME = "sd15-random.safetensors"
SDXL_CHECKPOINT_NAME = "sdxl-random.safetensors"

#: Base seed of the random weights; every tensor gets ``seed + crc32(key)``.
FULL_SIZE_SEED = 20250215

#: Largest standard deviation of a weight matrix, conv kernel or embedding. Layers
#: with more than 2500 inputs get ``1/sqrt(fan_in)`` instead, so no layer amplifies
#: its input and activations stay well inside float16's range.
WEIGHT_STD = 0.02

#: SD v1 UNet hyperparameters in the original LDM config style (v1-inference.yaml);
#: ``comfy.model_detection.convert_config`` expands them, ``SD15.unet_extra_config``
#: adds the attention heads.
SD15_UNET_LDM_CONFIG: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "use_spatial_transformer": True,
    "transformer_depth": 1,
    "context_dim": 768,
    "use_linear_in_transformer": False,
    "adm_in_channels": None,
    "legacy": False,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}

#: SDXL base UNet hyperparameters in the LDM config style (sd_xl_base.yaml).
SDXL_UNET_LDM_CONFIG: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4],
    "use_spatial_transformer": True,
    "transformer_depth": [1, 2, 10],
    "context_dim": 2048,
    "use_linear_in_transformer": True,
    "adm_in_channels": 2816,
    "num_classes": "sequential",
    "legacy": False,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}

#: The SD1.x/SDXL first-stage (KL VAE) config, as ``comfy.sd.VAE`` builds it.
SD_VAE_DDCONFIG: dict[str, Any] = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}
SD_VAE_EMBED_DIM = 4

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

Shapes = dict[str, tuple[int, ...]]

_HEADER_ALIGN = 8


def _supported_model(kind: str) -> Any:
    """The ``comfy.supported_models`` class of ``kind`` ("sd15" or "sdxl")."""
    from comfy import supported_models

    return {"sd15": supported_models.SD15, "sdxl": supported_models.SDXL}[kind]


def _ldm_config(kind: str) -> dict[str, Any]:
    """A copy of the LDM-style UNet hyperparameters of ``kind``."""
    return dict({"sd15": SD15_UNET_LDM_CONFIG, "sdxl": SDXL_UNET_LDM_CONFIG}[kind])


def model_config(kind: str) -> Any:
    """An instance of ComfyUI's SD15/SDXL model config with the full UNet config."""
    import comfy.model_detection

    cls = _supported_model(kind)
    unet_config = comfy.model_detection.convert_config(_ldm_config(kind))
    if not cls.matches(unet_config):
        raise RuntimeError(f"{cls.__name__} does not match the {kind} UNet config {unet_config!r}")
    return cls(unet_config)


def _shapes(module: torch.nn.Module, prefix: str) -> Shapes:
    """Map ``prefix + name`` to the shape of every tensor in ``module.state_dict()``."""
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def _unet_shapes(config: Any) -> Shapes:
    """Key shapes of ComfyUI's ``UNetModel`` built from a model config, on ``meta``."""
    import comfy.ops
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(**config.unet_config, device="meta", operations=comfy.ops.disable_weight_init)
    return _shapes(unet, UNET_PREFIX)


def _vae_shapes() -> Shapes:
    """Key shapes of the SD ``AutoencoderKL`` that ``comfy.sd.VAE`` builds, on ``meta``."""
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=dict(SD_VAE_DDCONFIG), embed_dim=SD_VAE_EMBED_DIM)
    return _shapes(vae, VAE_PREFIX)


def _text_encoder_shapes(config: Any) -> Shapes:
    """Text-encoder key shapes in the original-checkpoint layout.

    The model config's own text encoder (``SD1ClipModel`` for SD15, ``SDXLClipModel``
    for SDXL) is built on ``meta`` and its state dict converted by the
    model config's ``process_clip_state_dict_for_saving``, the layout ComfyUI's own
    checkpoint saver writes. Non-float entries it adds (``position_ids``) are
    dropped: ComfyUI's text encoders have no such buffer and ignore it on load.
    """
    import torch

    with torch.device("meta"):
        clip = config.clip_target(state_dict={}).clip(device="meta")
        saved = config.process_clip_state_dict_for_saving(dict(clip.state_dict()))
    return {k: tuple(v.shape) for k, v in saved.items() if v.is_floating_point()}


def _state_dict_shapes(kind: str) -> Shapes:
    config = model_config(kind)
    shapes = {**_unet_shapes(config), **_text_encoder_shapes(config), **_vae_shapes()}
    return {k: shapes[k] for k in sorted(shapes)}


def sd15_state_dict_shapes() -> Shapes:
    """Every key of the SD1.5 checkpoint with its shape (sorted; no data is allocated)."""
    return _state_dict_shapes("sd15")


def sdxl_state_dict_shapes() -> Shapes:
    """Every key of the SDXL checkpoint with its shape (sorted; no data is allocated)."""
    return _state_dict_shapes("sdxl")


def meta_state_dict(shapes: Shapes) -> dict[str, torch.Tensor]:
    """float16 ``meta`` tensors of the given shapes, for ComfyUI's shape-only detection."""
    import torch

    return {k: torch.empty(s, dtype=torch.float16, device="meta") for k, s in shapes.items()}


def init_std(key: str, shape: tuple[int, ...]) -> float | None:
    """Standard deviation of a random tensor, or None for a constant one.

    Biases (``.bias``, ``in_proj_bias``) are zeros; 1-D weights (GroupNorm and
    LayerNorm scales) and scalars (``logit_scale``) are ones; everything else is
    ``N(0, std)`` with ``std = min(WEIGHT_STD, 1/sqrt(fan_in))``.
    """
    if key.endswith("bias") or len(shape) <= 1:
        return None
    fan_in = math.prod(shape[1:])
    return min(WEIGHT_STD, 1.0 / math.sqrt(fan_in))


def random_tensor(key: str, shape: tuple[int, ...], seed: int = FULL_SIZE_SEED) -> np.ndarray:
    """The deterministic little-endian float16 values of one checkpoint tensor."""
    std = init_std(key, shape)
    if std is None:
        fill = 0.0 if key.endswith("bias") else 1.0
        return np.full(shape, fill, dtype="<f2")
    rng = np.random.Generator(np.random.PCG64(seed + zlib.crc32(key.encode("utf-8"))))
    values = rng.standard_normal(size=shape, dtype=np.float32)
    values *= np.float32(std)
    return values.astype("<f2")


def safetensors_header(shapes: Shapes, metadata: dict[str, str] | None = None) -> bytes:
    """Length prefix plus JSON header of a float16 safetensors file, keys in ``shapes`` order.

    The JSON is padded with spaces to a multiple of 8 bytes (as the reference
    writer does), so every tensor starts 8-byte aligned in the file.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata or {})}
    offset = 0
    for key, shape in shapes.items():
        nbytes = 2 * math.prod(shape)
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % _HEADER_ALIGN)
    return struct.pack("<Q", len(raw)) + raw


def _write_stream(fh: BinaryIO, shapes: Shapes, seed: int, metadata: dict[str, str]) -> None:
    """Write the header, then each tensor as it is generated (one tensor in memory)."""
    fh.write(safetensors_header(shapes, metadata))
    for key, shape in shapes.items():
        array = random_tensor(key, shape, seed)
        if array.shape != shape or array.dtype != np.dtype("<f2"):
            raise RuntimeError(f"{key}: generated {array.dtype}{array.shape}, expected F16{shape}")
        fh.write(np.ascontiguousarray(array).tobytes())


def verify_detection(kind: str, shapes: Shapes) -> Any:
    """Check ComfyUI detects ``shapes`` as exactly SD15/SDXL; returns the detected config."""
    import comfy.model_detection

    detected = comfy.model_detection.model_config_from_unet(meta_state_dict(shapes), UNET_PREFIX)
    expected = _supported_model(kind)
    if type(detected) is not expected:
        raise RuntimeError(f"ComfyUI detects {type(detected).__name__}, not {expected.__name__}")
    return detected


def write_checkpoint(kind: str, path: str | Path, seed: int = FULL_SIZE_SEED) -> None:
    """Write the ``kind`` ("sd15"/"sdxl") checkpoint to ``path``, byte-identical on every run."""
    shapes = _state_dict_shapes(kind)
    verify_detection(kind, shapes)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    metadata = {"format": "pt", "comfybento_generator": f"{kind}-random", "comfybento_seed": str(seed)}
    with tmp.open("wb") as fh:
        _write_stream(fh, shapes, seed, metadata)
    tmp.replace(target)


def generate_sd15_checkpoint(path: str | Path) -> None:
    """Write the full-size SD1.5 random-weight checkpoint (~2.1 GB) to ``path``."""
    write_checkpoint("sd15", path)


def generate_sdxl_checkpoint(path: str | Path) -> None:
    """Write the full-size SDXL base random-weight checkpoint (~6.9 GB) to ``path``."""
    write_checkpoint("sdxl", path)
