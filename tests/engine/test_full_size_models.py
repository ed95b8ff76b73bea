"""Full-size SD1.5/SDXL random checkpoints: layout checked on meta tensors, no multi-GB files."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from comfybento.config import Settings
from comfybento.runtime.bootstrap import bootstrap
from tests.helpers import ROOT, service_env

pytestmark = pytest.mark.engine

UNET = "model.diffusion_model."
VAE = "first_stage_model."
TEXT_PREFIXES = {
    "sd15": ("cond_stage_model.transformer.text_model.",),
    "sdxl": ("conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.1.model."),
}


@pytest.fixture(scope="module")
def fsm(tmp_path_factory):
    root = tmp_path_factory.mktemp("full_size")
    bootstrap(Settings.from_env(service_env(root / "workflows", root / "work")))
    from comfybento.runtime import full_size_models

    return full_size_models


@pytest.fixture(scope="module")
def shapes(fsm):
    return {"sd15": fsm.sd15_state_dict_shapes(), "sdxl": fsm.sdxl_state_dict_shapes()}


def _params(shapes, prefix=""):
    return sum(math.prod(s) for k, s in shapes.items() if k.startswith(prefix))


def _module_shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_comfy_detects_the_unet_and_builds_exactly_its_keys(fsm, shapes, kind):
    import comfy.model_base
    import comfy.model_detection
    import comfy.ops
    import torch
    from comfy import supported_models
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    sd = fsm.meta_state_dict(shapes[kind])
    config = comfy.model_detection.model_config_from_unet(sd, UNET)
    assert type(config) is {"sd15": supported_models.SD15, "sdxl": supported_models.SDXL}[kind]
    assert config.model_type(sd, UNET) == comfy.model_base.ModelType.EPS
    assert config.unet_config == fsm.model_config(kind).unet_config
    # The UNet ComfyUI builds from the *detected* config has exactly the file's UNet keys.
    with torch.device("meta"):
        unet = UNetModel(**config.unet_config, device="meta", operations=comfy.ops.disable_weight_init)
    expected = {UNET + k: s for k, s in _module_shapes(unet).items()}
    assert expected == {k: s for k, s in shapes[kind].items() if k.startswith(UNET)}


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_text_encoder_keys_are_what_comfys_clip_loader_consumes(fsm, shapes, kind):
    import torch

    sd = fsm.meta_state_dict(shapes[kind])
    config = fsm.model_config(kind)
    left = dict(sd)
    clip_sd = config.process_clip_state_dict(left)  # pops what it takes from `left`
    with torch.device("meta"):
        clip = config.clip_target(state_dict=sd).clip(device="meta")
    wanted = _module_shapes(clip)
    # Every text-encoder tensor in the file is taken and loads with the right shape ...
    assert not [k for k in left if k.startswith(TEXT_PREFIXES[kind])]
    assert len(left) == len(sd) - sum(k.startswith(TEXT_PREFIXES[kind]) for k in sd)
    assert set(clip_sd) <= set(wanted)
    assert {k: tuple(v.shape) for k, v in clip_sd.items()} == {k: wanted[k] for k in clip_sd}
    # ... and only what ComfyUI itself leaves out of checkpoints is missing (it logs
    # those at debug level, like for the real SD1.5/SDXL files).
    missing = set(wanted) - set(clip_sd)
    assert missing == {"clip_l.logit_scale", "clip_l.transformer.text_projection.weight"}


def test_text_encoder_prefixes_are_the_original_checkpoint_layout(shapes):
    for kind, prefixes in TEXT_PREFIXES.items():
        other = [k for k in shapes[kind] if not k.startswith((UNET, VAE, *prefixes))]
        assert other == []
    assert "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight" in shapes["sdxl"]
    assert shapes["sdxl"]["conditioner.embedders.1.model.text_projection"] == (1280, 1280)


def test_vae_keys_are_exactly_comfys_sd_vae(fsm, shapes):
    import comfy.sd
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    vae_shapes = {k[len(VAE) :]: s for k, s in shapes["sd15"].items() if k.startswith(VAE)}
    assert vae_shapes == {k[len(VAE) :]: s for k, s in shapes["sdxl"].items() if k.startswith(VAE)}
    vae = comfy.sd.VAE(sd={k: torch.empty(s, dtype=torch.float16) for k, s in vae_shapes.items()})
    assert type(vae.first_stage_model) is AutoencoderKL
    assert _module_shapes(vae.first_stage_model) == vae_shapes
    assert (vae.latent_channels, vae.downscale_ratio) == (4, 8)


def test_parameter_counts_are_the_real_models(shapes):
    sd15, sdxl = shapes["sd15"], shapes["sdxl"]
    assert 855e6 < _params(sd15, UNET) < 865e6  # 859.5M
    assert 2.56e9 < _params(sdxl, UNET) < 2.58e9  # 2.567B
    assert 83e6 < _params(sd15, VAE) == _params(sdxl, VAE) < 84e6  # 83.65M
    assert 122e6 < _params(sd15, "cond_stage_model.") < 124e6  # CLIP-L 123.1M
    assert 690e6 < _params(sdxl, "conditioner.embedders.1.") < 700e6  # OpenCLIP bigG text 694.7M
    assert 1.06e9 < _params(sd15) < 1.07e9 and 3.46e9 < _params(sdxl) < 3.48e9


def test_random_tensors_are_deterministic_and_scaled(fsm, shapes):
    conv = "model.diffusion_model.input_blocks.0.0.weight"
    assert shapes["sd15"][conv] == (320, 4, 3, 3)
    a = fsm.random_tensor(conv, (320, 4, 3, 3))
    assert a.dtype == np.dtype("<f2") and a.shape == (320, 4, 3, 3)
    assert a.tobytes() == fsm.random_tensor(conv, (320, 4, 3, 3)).tobytes()
    # Pinned: the same bytes on every platform (and numpy version that keeps the stream).
    assert hashlib.sha256(a.tobytes()).hexdigest()[:16] == PINNED_CONV_SHA256_PREFIX
    assert abs(float(a.astype(np.float32).std()) - 0.02) < 0.001
    other = fsm.random_tensor(conv.replace("input_blocks.0", "input_blocks.9"), (320, 4, 3, 3))
    assert not np.array_equal(a, other)
    big = "model.diffusion_model.output_blocks.0.0.in_layers.2.weight"  # fan_in 23040
    assert abs(float(fsm.random_tensor(big, (64, 2560, 3, 3)).astype(np.float32).std()) - 23040**-0.5) < 1e-4
    assert not fsm.random_tensor("x.norm1.bias", (8,)).any()
    assert (fsm.random_tensor("x.norm1.weight", (8,)) == 1).all()
    assert fsm.random_tensor("conditioner.embedders.1.model.logit_scale", ()).shape == ()


def test_streamed_file_is_valid_safetensors_and_byte_identical(fsm, shapes, tmp_path):
    from safetensors.numpy import load_file

    sdxl = shapes["sdxl"]
    keys = [*[k for k in sdxl if math.prod(sdxl[k]) < 50_000][:40], "conditioner.embedders.1.model.logit_scale"]
    subset = {k: sdxl[k] for k in keys}
    files = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for path in files:
        with path.open("wb") as fh:
            fsm._write_stream(fh, subset, fsm.FULL_SIZE_SEED, {"format": "pt"})
    assert files[0].read_bytes() == files[1].read_bytes()
    header_len = int.from_bytes(files[0].read_bytes()[:8], "little")
    assert header_len % 8 == 0
    loaded = load_file(str(files[0]))
    assert set(loaded) == set(subset)
    for key, shape in subset.items():
        assert loaded[key].tobytes() == fsm.random_tensor(key, shape).tobytes()


def test_generators_are_registered_and_in_the_gpu_lock(fsm):
    from comfybento.models.lock import parse_lock
    from comfybento.runtime.generators import model_generators

    generators = model_generators()
    assert generators["sd15-random"] is fsm.generate_sd15_checkpoint
    assert generators["sdxl-random"] is fsm.generate_sdxl_checkpoint
    lock = parse_lock(ROOT / "bench" / "models.gpu.lock")
    by_path = {e.path: e.source.get("generator") for e in lock.entries}
    assert by_path == {
        "checkpoints/tiny-sd.safetensors": "tiny-sd",
        "checkpoints/sd15-random.safetensors": "sd15-random",
        "checkpoints/sdxl-random.safetensors": "sdxl-random",
    }


PINNED_CONV_SHA256_PREFIX = "892afb8b5af0763f"
