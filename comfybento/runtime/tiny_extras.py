"""Tiny, deterministic companion models of the tiny checkpoint: an upscaler, a LoRA and a ControlNet.

Each one has the layout ComfyUI's own loaders expect, so the real loading code
runs on it:

- ``tiny-upscale``: a RealESRGAN "Compact" (SRVGG) x2 upscaler that spandrel
  detects and loads (``UpscaleModelLoader``). Its output is the nearest-neighbour
  2x image plus a small learned-looking residual.
- ``tiny-lora``: a rank-4 LoRA in the kohya layout (``lora_unet_*`` /
  ``lora_te_*`` with ``lora_up``/``lora_down``/``alpha``) over every attention
  and feed-forward projection of the tiny UNet and every projection of the tiny
  text encoder, the keys ComfyUI's ``comfy.lora`` key maps give for them.
- ``tiny-controlnet``: a ControlNet (LDM layout, ``zero_convs.*`` at the root)
  with the tiny UNet's shape; ComfyUI infers its config from the state dict and
  matches it to the tiny model config. Its zero convolutions are not zero, so
  it really changes the output.

Same seed, same bytes: every tensor comes from ``seed + crc32(key)`` and the
files are written with sorted keys and fixed metadata, so each generator gives
the same sha256 on every run. The LoRA and ControlNet generators take their
shapes from ComfyUI's modules, so ComfyUI must be importable (as for
:func:`comfybento.runtime.tiny_model.generate_tiny_checkpoint`); the upscaler
needs only torch and safetensors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from comfybento.runtime.tiny_model import (
    TINY_SEED,
    TINY_UNET_CONFIG,
    TINY_UNET_EXTRA_CONFIG,
    clip_shapes,
    init_tensor,
    unet_shapes,
)

if TYPE_CHECKING:
    import torch

TINY_UPSCALER_NAME = "tiny-upscale-x2.safetensors"
TINY_LORA_NAME = "tiny-sd-lora.safetensors"
TINY_CONTROLNET_NAME = "tiny-sd-controlnet.safetensors"

#: Compact (SRVGG) upscaler: scale, feature width and number of body convolutions.
UPSCALER_SCALE = 2
UPSCALER_FEATURES = 8
UPSCALER_CONVS = 2
#: Gain of the last (pixel-shuffle) convolution: the residual over the nearest-neighbour image.
_UPSCALER_OUT_GAIN = 0.1
#: PReLU slope, PyTorch's default init.
_PRELU_SLOPE = 0.25

#: LoRA rank and alpha (alpha / rank = 1: the delta is ``up @ down`` times the strength).
LORA_RANK = 4
LORA_ALPHA = 4.0
_LORA_UNET_TARGET = re.compile(r"transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))\.weight$")
_LORA_CLIP_TARGET = re.compile(r"encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))\.weight$")
_UNET_PREFIX = "model.diffusion_model."
_CLIP_PREFIX = "cond_stage_model.transformer."

#: Channels of the ControlNet's hint image (RGB) and the gain of its (non-zero) zero convolutions.
CONTROLNET_HINT_CHANNELS = 3
_CONTROLNET_ZERO_CONV_GAIN = 0.5


def _save(sd: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write ``sd`` with sorted keys and fixed metadata (byte-identical on every run)."""
    from safetensors.torch import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    save_file({k: sd[k] for k in sorted(sd)}, str(tmp), metadata={"format": "pt"})
    tmp.replace(target)


def _tensors(arrays: dict[str, np.ndarray], dtype: Any) -> dict[str, torch.Tensor]:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v.astype(dtype))) for k, v in sorted(arrays.items())}


def upscaler_shapes() -> dict[str, tuple[int, ...]]:
    """Keys of spandrel's ``SRVGGNetCompact`` (``body.N``: conv, PReLU, ..., conv to 3*scale^2)."""
    feat, out = UPSCALER_FEATURES, 3 * UPSCALER_SCALE**2
    shapes: dict[str, tuple[int, ...]] = {"body.0.weight": (feat, 3, 3, 3), "body.0.bias": (feat,), "body.1.weight": (feat,)}
    for i in range(UPSCALER_CONVS):
        n = 2 + 2 * i
        shapes.update({f"body.{n}.weight": (feat, feat, 3, 3), f"body.{n}.bias": (feat,), f"body.{n + 1}.weight": (feat,)})
    last = 2 + 2 * UPSCALER_CONVS
    shapes.update({f"body.{last}.weight": (out, feat, 3, 3), f"body.{last}.bias": (out,)})
    return shapes


def build_upscaler_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    """The fp32 state dict of the tiny x2 Compact upscaler."""
    shapes = upscaler_shapes()
    last = f"body.{2 + 2 * UPSCALER_CONVS}.weight"
    arrays: dict[str, np.ndarray] = {}
    for key, shape in shapes.items():
        if len(shape) == 1 and key.endswith(".weight"):  # PReLU slopes
            arrays[key] = np.full(shape, _PRELU_SLOPE, dtype=np.float32)
        else:
            arrays[key] = init_tensor(key, shape, seed, _UPSCALER_OUT_GAIN if key == last else 1.0)
    return _tensors(arrays, np.float32)


def generate_tiny_upscaler(path: str | Path) -> None:
    """Write the tiny x2 upscaler (``models.lock`` generator ``tiny-upscale``)."""
    _save(build_upscaler_state_dict(), path)


def lora_targets() -> dict[str, tuple[int, int]]:
    """LoRA key prefix -> (out, in) of the checkpoint weight it patches, for the UNet and the text encoder."""
    targets: dict[str, tuple[int, int]] = {}
    for key, shape in unet_shapes().items():
        if _LORA_UNET_TARGET.search(key) and len(shape) == 2:
            targets["lora_unet_" + key[len(_UNET_PREFIX) : -len(".weight")].replace(".", "_")] = (shape[0], shape[1])
    for key, shape in clip_shapes().items():
        if _LORA_CLIP_TARGET.search(key) and len(shape) == 2:
            targets["lora_te_" + key[len(_CLIP_PREFIX) : -len(".weight")].replace(".", "_")] = (shape[0], shape[1])
    if not targets:
        raise RuntimeError("no LoRA targets found in the tiny model's layout")
    return targets


def build_lora_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    """The fp16 state dict of the tiny LoRA: ``lora_down`` (rank, in), ``lora_up`` (out, rank), ``alpha``."""
    arrays: dict[str, np.ndarray] = {}
    for prefix, (out_dim, in_dim) in lora_targets().items():
        arrays[f"{prefix}.lora_down.weight"] = init_tensor(f"{prefix}.lora_down.weight", (LORA_RANK, in_dim), seed)
        arrays[f"{prefix}.lora_up.weight"] = init_tensor(f"{prefix}.lora_up.weight", (out_dim, LORA_RANK), seed)
        arrays[f"{prefix}.alpha"] = np.array(LORA_ALPHA, dtype=np.float32)
    return _tensors(arrays, np.float16)


def generate_tiny_lora(path: str | Path) -> None:
    """Write the tiny LoRA (``models.lock`` generator ``tiny-lora``)."""
    _save(build_lora_state_dict(), path)


def controlnet_config() -> dict[str, Any]:
    """Arguments of ``comfy.cldm.cldm.ControlNet`` for the tiny UNet, as ComfyUI's loader builds them."""
    config = {**TINY_UNET_CONFIG, **TINY_UNET_EXTRA_CONFIG}
    config.pop("out_channels")
    config["hint_channels"] = CONTROLNET_HINT_CHANNELS
    return config


def controlnet_shapes() -> dict[str, tuple[int, ...]]:
    """Key shapes of ComfyUI's ``ControlNet`` built with the tiny UNet's config (no prefix)."""
    import comfy.cldm.cldm
    import comfy.ops

    model = comfy.cldm.cldm.ControlNet(**controlnet_config(), device="meta", operations=comfy.ops.disable_weight_init)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def build_controlnet_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    """The fp16 state dict of the tiny ControlNet (plain init; zero convolutions at a fixed gain)."""
    arrays: dict[str, np.ndarray] = {}
    for key, shape in controlnet_shapes().items():
        zero_conv = key.startswith(("zero_convs.", "middle_block_out.")) and key.endswith(".weight")
        arrays[key] = init_tensor(key, shape, seed, _CONTROLNET_ZERO_CONV_GAIN if zero_conv else 1.0)
    return _tensors(arrays, np.float16)


def _verify_controlnet_detection(sd: dict[str, torch.Tensor]) -> None:
    """ComfyUI must infer the tiny UNet's config back from the ControlNet and pick the tiny model config."""
    import comfy.model_detection

    detected = comfy.model_detection.detect_unet_config(sd, "")
    wanted = {k: v for k, v in TINY_UNET_CONFIG.items() if k != "transformer_depth_output"}
    if detected is None or {k: detected.get(k) for k in wanted} != wanted:
        raise RuntimeError(f"ControlNet config round trip failed: {detected!r}")


def generate_tiny_controlnet(path: str | Path) -> None:
    """Write the tiny ControlNet (``models.lock`` generator ``tiny-controlnet``)."""
    sd = build_controlnet_state_dict()
    _verify_controlnet_detection(sd)
    _save(sd, path)
