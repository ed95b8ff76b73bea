"""A tiny, deterministic Stable-Diffusion-1.5-architecture checkpoint for tests.

The checkpoint has the SD1.5 layout (``model.diffusion_model.*`` UNet,
``cond_stage_model.transformer.text_model.*`` CLIP text encoder and a
TAESD-style VAE under ``first_stage_model.``) but with tiny dimensions, so
ComfyUI can load and sample it on CPU in well under a second.

ComfyUI must already be importable (its root on ``sys.path``, ``comfy.options``
imported and ``comfy.cli_args.args`` configured) before either public function
is called; ``comfy`` is imported lazily so importing this module is free.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch

TINY_CHECKPOINT_NAME = "tiny-sd.safetensors"

#: Base seed of the random weights; every tensor gets ``seed + crc32(key)``.
TINY_SEED = 20240611

#: Shape of the tiny text encoder (``comfy.clip_model.CLIPTextModel`` config).
TINY_CLIP_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "hidden_act": "quick_gelu",
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "eos_token_id": 49407,
    "bos_token_id": 0,
    "pad_token_id": 1,
    "projection_dim": 64,
    "layer_norm_eps": 1e-05,
    "model_type": "clip_text_model",
}

#: Exactly what ``comfy.model_detection.detect_unet_config`` infers from the UNet.
TINY_UNET_CONFIG: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1],
    "channel_mult": [1, 2],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 64,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}

#: Attention heads of the tiny UNet (replaces SD15's ``num_heads=8``).
TINY_UNET_EXTRA_CONFIG: dict[str, Any] = {"num_heads": 4, "num_head_channels": -1}

#: Keys a detected UNet config must match to select the tiny model config.
#: ``model_channels`` 32 / ``context_dim`` 64 alone already exclude real SD1.5.
_MATCH_KEYS = (
    "context_dim",
    "model_channels",
    "use_linear_in_transformer",
    "adm_in_channels",
    "use_temporal_attention",
    "in_channels",
    "channel_mult",
    "num_res_blocks",
    "transformer_depth",
)

#: Gain and bias of the TAESD decoder's last (RGB) conv, the only exceptions to
#: the plain init: pixels are ``clamp(conv_out, 0, 1)``, so a zero bias would
#: clip about half of them to black; this keeps images mid-grey with structure.
_VAE_OUT_GAIN = 0.35
_VAE_OUT_BIAS = 0.5

_CLASSES: dict[str, Any] = {}


def _build_clip_classes() -> dict[str, Any]:
    """Define the tiny text-encoder classes on top of ``comfy.sd1_clip``."""
    from comfy import sd1_clip

    class TinyClipModel(sd1_clip.SDClipModel):
        """``SDClipModel`` with the tiny text-encoder configuration."""

        def __init__(
            self,
            device: Any = "cpu",
            dtype: Any = None,
            model_options: dict | None = None,
        ) -> None:
            """Build the tiny CLIP text model (no projected pooled output, like SD1.5)."""
            super().__init__(
                device=device,
                dtype=dtype,
                textmodel_json_config=dict(TINY_CLIP_CONFIG),
                return_projected_pooled=False,
                model_options=model_options or {},
            )

    class TinySD1ClipModel(sd1_clip.SD1ClipModel):
        """``SD1ClipModel`` (``clip_l`` slot) wrapping :class:`TinyClipModel`."""

        def __init__(
            self,
            device: Any = "cpu",
            dtype: Any = None,
            model_options: dict | None = None,
            **kwargs: Any,
        ) -> None:
            """Same signature as ``SD1ClipModel``; forces the tiny inner model."""
            super().__init__(
                device=device,
                dtype=dtype,
                model_options=model_options or {},
                clip_model=TinyClipModel,
                **kwargs,
            )

    return {"TinyClipModel": TinyClipModel, "TinySD1ClipModel": TinySD1ClipModel}


def _build_model_config(clip_cls: Any) -> Any:
    """Define the tiny ``SD15`` model config whose text encoder is ``clip_cls``."""
    from comfy import sd1_clip, supported_models, supported_models_base

    class TinySD15(supported_models.SD15):
        """SD1.5 model config that matches only the tiny UNet of this module."""

        unet_config: ClassVar[dict[str, Any]] = {k: TINY_UNET_CONFIG[k] for k in _MATCH_KEYS}
        unet_extra_config: ClassVar[dict[str, Any]] = dict(TINY_UNET_EXTRA_CONFIG)
        comfybento_tiny: ClassVar[bool] = True

        def clip_target(self, state_dict: dict | None = None) -> Any:
            """Stock SD1 tokenizer plus the tiny CLIP text encoder."""
            return supported_models_base.ClipTarget(sd1_clip.SD1Tokenizer, clip_cls)

    return TinySD15


def _tiny_classes() -> dict[str, Any]:
    """Build (once) and cache the tiny CLIP and model-config classes."""
    if not _CLASSES:
        clip_classes = _build_clip_classes()
        tiny_sd15 = _build_model_config(clip_classes["TinySD1ClipModel"])
        _CLASSES.update(clip_classes, TinySD15=tiny_sd15)
    return _CLASSES


def register_tiny_config() -> None:
    """Insert the tiny SD1.5 config at the front of ``comfy.supported_models.models``.

    Idempotent: a previously registered copy (also from a reloaded module) is
    replaced, so the list holds exactly one tiny config, at index 0.
    """
    from comfy import supported_models

    tiny = _tiny_classes()["TinySD15"]
    models = supported_models.models
    if models and models[0] is tiny and sum(getattr(m, "comfybento_tiny", False) for m in models) == 1:
        return
    models[:] = [m for m in models if not getattr(m, "comfybento_tiny", False)]
    models.insert(0, tiny)


def _shapes(module: torch.nn.Module, prefix: str) -> dict[str, tuple[int, ...]]:
    """Map ``prefix + name`` to the shape of every tensor in ``module.state_dict()``."""
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def unet_shapes() -> dict[str, tuple[int, ...]]:
    """Key shapes of ComfyUI's ``UNetModel`` built with the tiny config."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    cfg = {**TINY_UNET_CONFIG, **TINY_UNET_EXTRA_CONFIG}
    unet = UNetModel(**cfg, device="meta", operations=comfy.ops.disable_weight_init)
    return _shapes(unet, "model.diffusion_model.")


def clip_shapes() -> dict[str, tuple[int, ...]]:
    """Key shapes of the tiny text model, as stored in an SD1.5 checkpoint."""
    import comfy.clip_model
    import comfy.ops

    model = comfy.clip_model.CLIPTextModel_(dict(TINY_CLIP_CONFIG), None, "meta", comfy.ops.disable_weight_init)
    return _shapes(model, "cond_stage_model.transformer.text_model.")


def _vae_shapes() -> dict[str, tuple[int, ...]]:
    """Key shapes of ComfyUI's TAESD (encoder, decoder, ``vae_scale``/``vae_shift``)."""
    import comfy.taesd.taesd
    import torch

    with torch.device("meta"):
        taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    return _shapes(taesd, "first_stage_model.")


def _vae_out_key(shapes: dict[str, tuple[int, ...]]) -> str:
    """Key of the TAESD decoder's final (RGB, 3 output channels) conv weight."""
    prefix = "first_stage_model.taesd_decoder."
    keys = [k for k, s in shapes.items() if k.startswith(prefix) and k.endswith(".weight") and s[:1] == (3,)]
    if len(keys) != 1:
        raise RuntimeError(f"unexpected TAESD decoder layout: {keys}")
    return keys[0]


def init_tensor(key: str, shape: tuple[int, ...], seed: int, gain: float = 1.0) -> np.ndarray:
    """Deterministic init: gain*N(0,1)/sqrt(fan_in) weights, zero biases, unit norms.

    1-D ``weight`` tensors are GroupNorm/LayerNorm scales and ``vae_scale`` is
    TAESD's latent scale: both are ones; biases and ``vae_shift`` are zeros.
    """
    if key.endswith("vae_scale") or (key.endswith(".weight") and len(shape) == 1):
        return np.ones(shape, dtype=np.float32)
    if key.endswith((".bias", "vae_shift")):
        return np.zeros(shape, dtype=np.float32)
    rng = np.random.RandomState((seed + zlib.crc32(key.encode("utf-8"))) % (2**32))
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
    values = rng.standard_normal(size=shape) * (gain / np.sqrt(max(fan_in, 1)))
    return values.astype(np.float32)


def tiny_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """All checkpoint keys with their shapes, taken from ComfyUI's own modules."""
    return {**unet_shapes(), **clip_shapes(), **_vae_shapes()}


def build_tiny_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    """Build the deterministic fp16 state dict of the tiny checkpoint."""
    import torch

    shapes = tiny_state_dict_shapes()
    out_weight = _vae_out_key(shapes)
    out_bias = out_weight[: -len("weight")] + "bias"
    sd: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        array = init_tensor(key, shapes[key], seed, _VAE_OUT_GAIN if key == out_weight else 1.0)
        if key == out_bias:
            array = np.full(shapes[key], _VAE_OUT_BIAS, dtype=np.float32)
        sd[key] = torch.from_numpy(np.ascontiguousarray(array.astype(np.float16)))
    return sd


def _verify_detection(sd: dict[str, torch.Tensor]) -> None:
    """Check ComfyUI infers ``TINY_UNET_CONFIG`` back and picks the tiny config."""
    import comfy.model_detection

    detected = comfy.model_detection.detect_unet_config(sd, "model.diffusion_model.")
    if detected != TINY_UNET_CONFIG:
        raise RuntimeError(f"UNet config round trip failed: {detected!r}")
    if not _tiny_classes()["TinySD15"].matches(detected, sd):
        raise RuntimeError("tiny model config does not match its own checkpoint")


def generate_tiny_checkpoint(path: str | Path) -> None:
    """Write the tiny checkpoint to ``path`` (byte-identical on every run)."""
    from safetensors.torch import save_file

    sd = build_tiny_state_dict()
    _verify_detection(sd)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    save_file({k: sd[k] for k in sorted(sd)}, str(tmp), metadata={"format": "pt"})
    tmp.replace(target)
