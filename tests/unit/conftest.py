"""Node definitions as ComfyUI declares them, written out so unit tests need no ComfyUI."""

from __future__ import annotations

import pytest

from comfybento.workflows.graph import InputDef, NodeDef

SAMPLERS = ("euler", "euler_ancestral", "heun", "dpmpp_2m", "ddim")
SCHEDULERS = ("normal", "karras", "simple")
UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")


def _d(class_type: str, inputs: list[InputDef], output: bool = False, returns: tuple[str, ...] = ()) -> NodeDef:
    return NodeDef(class_type=class_type, inputs={i.name: i for i in inputs}, output_node=output, return_types=returns)


def _i(name: str, typ: str, required: bool = True, choices: tuple[str, ...] = (), **opts: object) -> InputDef:
    return InputDef(name=name, type=typ, required=required, options=opts, choices=choices)


@pytest.fixture
def node_defs() -> dict[str, NodeDef]:
    defs = [
        _d("KSampler", [
            _i("model", "MODEL"), _i("seed", "INT", min=0, max=0xFFFFFFFFFFFFFFFF),
            _i("steps", "INT", min=1, max=10000), _i("cfg", "FLOAT", min=0.0, max=100.0, step=0.1),
            _i("sampler_name", "COMBO", choices=SAMPLERS), _i("scheduler", "COMBO", choices=SCHEDULERS),
            _i("positive", "CONDITIONING"), _i("negative", "CONDITIONING"), _i("latent_image", "LATENT"),
            _i("denoise", "FLOAT", min=0.0, max=1.0, step=0.01),
        ], returns=("LATENT",)),
        _d("CheckpointLoaderSimple", [_i("ckpt_name", "COMBO", choices=("tiny-sd.safetensors",))], returns=("MODEL", "CLIP", "VAE")),
        _d("EmptyLatentImage", [_i("width", "INT", min=16, max=16384, step=8), _i("height", "INT", min=16, max=16384, step=8),
                                _i("batch_size", "INT", min=1, max=4096)], returns=("LATENT",)),
        _d("CLIPTextEncode", [_i("text", "STRING", multiline=True), _i("clip", "CLIP")], returns=("CONDITIONING",)),
        _d("VAEDecode", [_i("samples", "LATENT"), _i("vae", "VAE")], returns=("IMAGE",)),
        _d("VAEEncode", [_i("pixels", "IMAGE"), _i("vae", "VAE")], returns=("LATENT",)),
        _d("ImageInvert", [_i("image", "IMAGE")], returns=("IMAGE",)),
        _d("SaveImage", [_i("images", "IMAGE"), _i("filename_prefix", "STRING")], output=True),
        _d("PreviewImage", [_i("images", "IMAGE")], output=True),
        _d("LoadImage", [_i("image", "COMBO", choices=("example.png",))], returns=("IMAGE", "MASK")),
        _d("CPackInputString", [_i("value", "STRING")], returns=("STRING",)),
        _d("ImageScaleBy", [_i("image", "IMAGE"), _i("upscale_method", "COMBO", choices=UPSCALE_METHODS),
                            _i("scale_by", "FLOAT", min=0.01, max=8.0, step=0.01)], returns=("IMAGE",)),
        _d("CPackInputInt", [_i("value", "INT"), _i("min", "INT", False), _i("max", "INT", False)], returns=("INT",)),
        _d("CPackInputAny", [_i("input", "*")], returns=("*",)),
        _d("CPackInputFile", [_i("path", "STRING")], returns=("*",)),
        _d("CPackInputImage", [_i("image", "COMBO", choices=("example.png",))], returns=("IMAGE", "MASK")),
        _d("CPackOutputImage", [_i("images", "IMAGE"), _i("filename_prefix", "STRING")], output=True),
    ]
    return {d.class_type: d for d in defs}
