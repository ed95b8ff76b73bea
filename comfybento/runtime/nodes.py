"""comfybento's own ComfyUI node classes, registered by `register()`.

- CPackInput*/CPackOutputImage: our implementation of comfy-pack's annotation
  nodes (same class names and inputs), so annotated graphs run without
  comfy-pack installed; its file-writing output nodes are in cpack_outputs.py.
- ComfyBentoCollectImages: replaces every image-saving node in the graphs we
  execute; hands the image tensors to the run that is executing instead of
  writing files into a shared output folder.
- ComfyBentoPinnedCheckpoint: replaces CheckpointLoaderSimple; returns the
  checkpoint from one bounded cache shared by every workflow: the defaults
  preloaded (pinned) at startup, others loaded on demand, LRU out.
- ComfyBentoBatch*: the nodes of a merged cross-request batch graph
  (runtime/batch_nodes.py, workflows/batchplan.py).
"""

from __future__ import annotations

import copy
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

import folder_paths
import nodes as comfy_nodes
import torch

from comfybento.runtime.batch_nodes import BATCH_NODES
from comfybento.runtime.cpack_outputs import CPACK_OUTPUT_NODES
from comfybento.runtime.model_cache import ModelCache

# ------------------------------------------------------------------ collection

_collect = threading.local()


def start_collecting() -> dict[str, list[torch.Tensor]]:
    """Begin a run: images reaching ComfyBentoCollectImages land in the returned dict."""
    bucket: dict[str, list[torch.Tensor]] = {}
    _collect.bucket = bucket
    return bucket


def stop_collecting() -> None:
    _collect.bucket = None


class AnyType(str):
    """A type name that matches every other type (for CPackInputAny)."""

    def __ne__(self, other: object) -> bool:
        return False


ANY = AnyType("*")


class CollectImages:
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "collect"
    CATEGORY = "comfybento"
    DESCRIPTION = "Hands images to the comfybento request that is running (replaces SaveImage)."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"images": ("IMAGE",), "slot": ("STRING", {"default": ""})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs: Any) -> float:
        return float("nan")  # always run: the images go to the current request

    def collect(self, images: torch.Tensor, slot: str) -> tuple[()]:
        bucket = getattr(_collect, "bucket", None)
        if bucket is not None:
            bucket.setdefault(slot, []).append(to_uint8(images))
        return ()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """IMAGE floats in [0, 1] -> uint8 on the device, then to the CPU (4x less to copy).

    Truncates like stock ComfyUI's SaveImage (numpy astype after * 255 and clip).
    """
    return (images.detach() * 255.0).clamp_(0, 255).to(torch.uint8).cpu()


# ------------------------------------------------------------------ checkpoints
#
# Every checkpoint goes through one ModelCache (runtime/model_cache.py), counted at its models.lock size:
# the workflows' defaults are pinned at startup; one a request chooses is loaded on first use (the engine has
# verified it) and leaves, least recently used first, when another needs its room. Leaving means ComfyUI's
# model management unloads it from the device and drops it from current_loaded_models; ComfyUI itself still
# decides what sits on the device while a graph runs.

_tokenizers: dict[str, Any] = {}  # ckpt name -> a private copy of its tokenizer (prompt_chunks)
_tokenizer_lock = threading.Lock()


def _release_checkpoint(ckpt_name: str, value: tuple[Any, ...]) -> None:
    import comfy.model_management as mm

    patchers = [p for p in (value[0], getattr(value[1], "patcher", None), getattr(value[2], "patcher", None)) if p is not None]
    for index in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[index]
        model = loaded.model
        if model is not None and any(model is p or model.is_clone(p) for p in patchers):
            if loaded.model_finalizer is not None:
                loaded.model_unload()
            mm.current_loaded_models.pop(index)
    mm.soft_empty_cache()
    _tokenizers.pop(ckpt_name, None)


_checkpoints: ModelCache[tuple[Any, ...]] = ModelCache(0, _release_checkpoint, setting="COMFYBENTO_MODEL_CACHE_BYTES")
_sizes: dict[str, int] = {}


def configure_checkpoints(budget_bytes: int, sizes: Mapping[str, int]) -> int:
    """Set the cache's budget (0: the device's memory less ComfyUI's inference reserve) and the models.lock sizes."""
    import comfy.model_management as mm

    if budget_bytes <= 0:
        budget_bytes = max(0, int(mm.get_total_memory(mm.get_torch_device()) - mm.minimum_inference_memory()))
    _checkpoints.budget_bytes = budget_bytes
    _sizes.update(sizes)
    return budget_bytes


def checkpoint_cache() -> ModelCache[tuple[Any, ...]]:
    return _checkpoints


def _size(ckpt_name: str) -> int:
    return _sizes.get(ckpt_name) or os.path.getsize(folder_paths.get_full_path_or_raise("checkpoints", ckpt_name))


def _load_checkpoint(ckpt_name: str) -> tuple[Any, ...]:
    return tuple(comfy_nodes.CheckpointLoaderSimple().load_checkpoint(ckpt_name)[:3])


def pinned_checkpoint(ckpt_name: str) -> tuple[Any, ...]:
    """(model, clip, vae) of a workflow's default checkpoint, loaded once and kept for the life of the process."""
    return _checkpoints.pin(ckpt_name, _size(ckpt_name), lambda: _load_checkpoint(ckpt_name))


def cached_checkpoint(ckpt_name: str) -> tuple[Any, ...]:
    """(model, clip, vae): a pinned checkpoint, or one loaded on demand into the bounded cache."""
    return _checkpoints.get_or_load(ckpt_name, _size(ckpt_name), lambda: _load_checkpoint(ckpt_name))


def prompt_chunks(ckpt_name: str, text: str) -> int | None:
    """How many 77-token chunks the checkpoint's text encoder makes of a prompt (its conditioning length).

    Runs beside the executor (when a request is queued), on a private copy of the tokenizer: the
    executor thread uses the original at the same time. None while the checkpoint is not loaded
    (this never loads one: loading is the executor thread's).
    """
    with _tokenizer_lock:
        if ckpt_name not in _tokenizers:
            loaded = _checkpoints.peek(ckpt_name)
            if loaded is None:
                return None
            _tokenizers[ckpt_name] = copy.deepcopy(loaded[1].tokenizer)
        tokens = _tokenizers[ckpt_name].tokenize_with_weights(text)
    return max((len(chunks) for chunks in tokens.values()), default=1) if isinstance(tokens, dict) else 1


class PinnedCheckpoint:
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "comfybento"
    DESCRIPTION = "CheckpointLoaderSimple through comfybento's model cache (defaults pinned, others least recently used out)."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}

    def load(self, ckpt_name: str) -> tuple[Any, ...]:
        return cached_checkpoint(ckpt_name)


# ------------------------------------------------------------------ comfy-pack


def _identity_node(name: str, spec: dict[str, Any], return_type: Any, extra_opt: dict[str, Any] | None = None) -> type:
    key = next(iter(spec))

    def identity(self: Any, **kwargs: Any) -> tuple[Any]:
        return (kwargs[key],)

    inputs: dict[str, Any] = {"required": spec}
    if extra_opt:
        inputs["optional"] = extra_opt
    return type(
        name,
        (),
        {
            "INPUT_TYPES": classmethod(lambda cls: inputs),
            "RETURN_TYPES": (return_type,),
            "RETURN_NAMES": ("value",),
            "FUNCTION": "identity",
            "CATEGORY": "ComfyPack/input",
            "CPACK_NODE": True,
            "identity": identity,
        },
    )


class CPackInputImage(comfy_nodes.LoadImage):
    CATEGORY = "ComfyPack/input"
    CPACK_NODE = True


class CPackOutputImage:
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "save"
    CATEGORY = "ComfyPack/output"
    CPACK_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE",),
                "filename_prefix": ("STRING", {"default": "cpack_output_"}),
            }
        }

    def save(self, images: torch.Tensor, filename_prefix: str = "") -> dict[str, Any]:
        return comfy_nodes.SaveImage().save_images(images, filename_prefix or "cpack_output_")  # type: ignore[no-any-return]


class CPackInputFile:
    """A file the request uploaded: the engine stores it in the input folder and binds its path here."""

    RETURN_TYPES = (ANY,)
    RETURN_NAMES = ("path",)
    FUNCTION = "identity"
    CATEGORY = "ComfyPack/input"
    CPACK_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"path": ("STRING", {"default": ""})}}

    def identity(self, path: str) -> tuple[str]:
        return (path,)


def _cpack_nodes() -> dict[str, type]:
    # comfy-pack's CPackInputInt declares value, min and max without bounds (its min and max
    # default to -sys.maxsize and sys.maxsize, and graphs exported by its UI carry values
    # beyond them); ComfyUI checks literal INT inputs against declared bounds, so declare none.
    return {
        "CPackInputString": _identity_node("CPackInputString", {"value": ("STRING", {"default": ""})}, "STRING"),
        "CPackInputInt": _identity_node(
            "CPackInputInt",
            {"value": ("INT", {"default": 0})},
            "INT",
            {"min": ("INT", {"default": -sys.maxsize}), "max": ("INT", {"default": sys.maxsize})},
        ),
        "CPackInputAny": _identity_node("CPackInputAny", {"input": (ANY, {})}, ANY),
        "CPackInputFile": CPackInputFile,
        "CPackInputImage": CPackInputImage,
        "CPackOutputImage": CPackOutputImage,
        **CPACK_OUTPUT_NODES,
    }


OUR_NODES: dict[str, type] = {
    "ComfyBentoCollectImages": CollectImages,
    "ComfyBentoPinnedCheckpoint": PinnedCheckpoint,
    **BATCH_NODES,
}


def register() -> None:
    """Add our node classes to ComfyUI's registry (comfy-pack's only where it is absent)."""
    mapping = comfy_nodes.NODE_CLASS_MAPPINGS
    for name, cls in OUR_NODES.items():
        mapping[name] = cls
    for name, cls in _cpack_nodes().items():
        mapping.setdefault(name, cls)
