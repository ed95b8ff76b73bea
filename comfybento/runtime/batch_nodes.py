"""The node classes of a merged cross-request batch graph (see workflows/batchplan.py).

- ComfyBentoBatchConditioning / Latents / Images / Masks / Noise join the N
  per-request copies of a value (inputs item_0 ... item_{N-1}) into one batch,
  in request order. Latents keep their noise masks, each repeated over its
  request's own images; noise generators stay per request.
- ComfyBentoBatchKSampler / ComfyBentoBatchKSamplerAdvanced: KSampler and
  KSamplerAdvanced over a latent batch where each request's noise comes from
  its own seed, exactly as the stock node draws it alone.

A join that cannot give each request its solo result (shapes that differ, a
request with several images where conditioning cannot follow) raises
ValueError: the scheduler then runs the batch's requests one by one.
"""

from __future__ import annotations

import json
from typing import Any

import comfy.sample
import comfy.utils
import latent_preview
import nodes as comfy_nodes
import torch

MAX_CONCAT_REPEAT = 4  # ComfyUI's CONDCrossAttn.can_concat refuses to pad beyond 4x too


class _ItemInputs(dict):  # type: ignore[type-arg]
    """An 'optional' inputs table that accepts item_0, item_1, ... of one type."""

    def __init__(self, type_name: str) -> None:
        super().__init__()
        self.type_name = type_name

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.startswith("item_")

    def __getitem__(self, key: str) -> Any:
        return (self.type_name,)


def _ordered(items: dict[str, Any]) -> list[Any]:
    return [items[k] for k in sorted(items, key=lambda k: int(k.split("_")[1]))]


def _same_shapes(what: str, tensors: list[torch.Tensor]) -> None:
    shapes = {tuple(t.shape[1:]) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"per-request {what} of different shapes {sorted(shapes)} cannot share a batch")


class _Join:
    TYPE = ""
    FUNCTION = "join"
    CATEGORY = "comfybento"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {}, "optional": _ItemInputs(cls.TYPE)}

    def join(self, **items: Any) -> tuple[Any]:
        return (self.combine(_ordered(items)),)

    def combine(self, values: list[Any]) -> Any:
        raise NotImplementedError


# ------------------------------------------------------------------ conditioning


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def cat_conditioning(conds: list[Any]) -> Any:
    """Batch single-entry conditionings: [[tensor(1,T,D), {...}]] x N -> [[tensor(N,T',D), {...}]].

    The scheduler's token buckets give equal lengths; should they differ, each is
    repeated to their least common multiple, but never more than 4x (the batch
    then fails and the scheduler runs its requests one by one).
    """
    if any(len(c) != 1 for c in conds):
        raise ValueError("a per-request conditioning with several entries cannot share a batch")
    tensors = [c[0][0] for c in conds]
    length = 1
    for t in tensors:
        length = length * t.shape[1] // _gcd(length, t.shape[1])
    if length > MAX_CONCAT_REPEAT * min(t.shape[1] for t in tensors):
        raise ValueError(f"prompt lengths {sorted({t.shape[1] for t in tensors})} are too different to share a batch")
    # Repeating a whole token sequence k times leaves cross-attention unchanged.
    tensors = [t.repeat(1, length // t.shape[1], 1) if t.shape[1] != length else t for t in tensors]
    extras: dict[str, Any] = {}
    for key, value in conds[0][0][1].items():
        extras[key] = torch.cat([c[0][1][key] for c in conds]) if isinstance(value, torch.Tensor) else value
    return [[torch.cat(tensors), extras]]


def expand_conditioning(cond: Any, items: int, per_item: int) -> Any:
    """Repeat each request's conditioning over its images, when a request has several."""
    if per_item == 1 or len(cond) != 1 or cond[0][0].shape[0] != items:
        return cond
    tensor, extras = cond[0]
    extras = {
        k: v.repeat_interleave(per_item, dim=0) if isinstance(v, torch.Tensor) and v.shape[0] == items else v for k, v in extras.items()
    }
    return [[tensor.repeat_interleave(per_item, dim=0), extras]]


class BatchConditioning(_Join):
    TYPE = "CONDITIONING"
    RETURN_TYPES = ("CONDITIONING",)

    def combine(self, values: list[Any]) -> Any:
        return cat_conditioning(values)


# ------------------------------------------------------------------ images, masks, latents


class BatchImages(_Join):
    TYPE = "IMAGE"
    RETURN_TYPES = ("IMAGE",)

    def combine(self, values: list[torch.Tensor]) -> torch.Tensor:
        _same_shapes("images", values)
        return torch.cat(values)


class BatchMasks(_Join):
    TYPE = "MASK"
    RETURN_TYPES = ("MASK",)

    def combine(self, values: list[torch.Tensor]) -> torch.Tensor:
        masks = [m.reshape(-1, m.shape[-2], m.shape[-1]) for m in values]
        _same_shapes("masks", masks)
        return torch.cat(masks)


class BatchLatents(_Join):
    TYPE = "LATENT"
    RETURN_TYPES = ("LATENT",)

    def combine(self, values: list[dict[str, Any]]) -> dict[str, Any]:
        if any("batch_index" in v for v in values):
            raise ValueError("per-request latents with a batch_index cannot share a batch")
        samples = [v["samples"] for v in values]
        _same_shapes("latents", samples)
        out = dict(values[0])
        out["samples"] = torch.cat(samples)
        if any("noise_mask" in v for v in values):
            out["noise_mask"] = torch.cat([_mask_for(v) for v in values])
        return out


def _mask_for(latent: dict[str, Any]) -> torch.Tensor:
    """A latent's noise mask as (batch, 1, h, w), one per image of the latent (all ones if it has none)."""
    samples = latent["samples"]
    mask = latent.get("noise_mask")
    if mask is None:
        return torch.ones((samples.shape[0], 1, samples.shape[-2], samples.shape[-1]), dtype=samples.dtype)
    mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    return comfy.utils.repeat_to_batch_size(mask, samples.shape[0])


# ------------------------------------------------------------------ noise


class _BatchedNoise:
    """A NOISE object for SamplerCustomAdvanced: request i's generator makes request i's part of the batch."""

    def __init__(self, generators: list[Any]) -> None:
        self.generators = generators
        self.seed = generators[0].seed

    def generate_noise(self, input_latent: dict[str, Any]) -> torch.Tensor:
        samples = input_latent["samples"]
        n = len(self.generators)
        if samples.shape[0] != n or "batch_index" in input_latent:
            raise ValueError(f"a latent batch of {samples.shape[0]} for {n} requests: each request must have one image")
        return torch.cat([g.generate_noise({"samples": samples[i : i + 1]}) for i, g in enumerate(self.generators)])


class BatchNoise(_Join):
    TYPE = "NOISE"
    RETURN_TYPES = ("NOISE",)

    def combine(self, values: list[Any]) -> Any:
        return _BatchedNoise(values)


# ------------------------------------------------------------------ samplers


def _sample(
    model: Any, seeds: str, latent_image: dict[str, Any], positive: Any, negative: Any, steps: int, add_noise: bool = True, **kwargs: Any
) -> tuple[Any]:
    """common_ksampler of stock ComfyUI, with request i's noise drawn from seeds[i] over its part of the batch."""
    seed_list = [int(s) for s in json.loads(seeds)]
    if "batch_index" in latent_image:
        raise ValueError("a latent with a batch_index cannot share a batch")
    latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
    per_item = latent.shape[0] // len(seed_list)
    if per_item * len(seed_list) != latent.shape[0]:
        raise ValueError(f"a latent batch of {latent.shape[0]} does not split over {len(seed_list)} requests")
    if per_item > 1 and any("control" in c[1] for c in (*positive, *negative)):
        raise ValueError("a ControlNet hint batch cannot follow requests of several images each")
    if add_noise:
        noise = torch.cat([comfy.sample.prepare_noise(latent[i * per_item : (i + 1) * per_item], seed) for i, seed in enumerate(seed_list)])
    else:
        noise = torch.zeros(latent.size(), dtype=latent.dtype, layout=latent.layout, device="cpu")
    positive = expand_conditioning(positive, len(seed_list), per_item)
    negative = expand_conditioning(negative, len(seed_list), per_item)
    samples = comfy.sample.sample(
        model,
        noise,
        steps,
        kwargs.pop("cfg"),
        kwargs.pop("sampler_name"),
        kwargs.pop("scheduler"),
        positive,
        negative,
        latent,
        disable_noise=not add_noise,
        noise_mask=latent_image.get("noise_mask"),
        callback=latent_preview.prepare_callback(model, steps),
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=seed_list[0],
        **kwargs,
    )
    out = dict(latent_image)
    out["samples"] = samples
    return (out,)


def _inputs_with_seeds(stock: type, seed_input: str) -> dict[str, Any]:
    inputs = dict(stock.INPUT_TYPES())  # type: ignore[attr-defined]
    required = dict(inputs["required"])
    required.pop(seed_input)
    required["seeds"] = ("STRING", {"default": "[]"})
    inputs["required"] = required
    return inputs


class BatchKSampler:
    """KSampler over a latent batch where each request keeps its own seed's noise."""

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "comfybento"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _inputs_with_seeds(comfy_nodes.KSampler, "seed")

    def sample(
        self,
        model: Any,
        seeds: str,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        positive: Any,
        negative: Any,
        latent_image: dict[str, Any],
        denoise: float = 1.0,
    ) -> tuple[Any]:
        return _sample(
            model, seeds, latent_image, positive, negative, steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, denoise=denoise
        )


class BatchKSamplerAdvanced:
    """KSamplerAdvanced over a latent batch where each request keeps its own noise_seed's noise."""

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "comfybento"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return _inputs_with_seeds(comfy_nodes.KSamplerAdvanced, "noise_seed")

    def sample(
        self,
        model: Any,
        add_noise: str,
        seeds: str,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        positive: Any,
        negative: Any,
        latent_image: dict[str, Any],
        start_at_step: int,
        end_at_step: int,
        return_with_leftover_noise: str,
        denoise: float = 1.0,
    ) -> tuple[Any]:
        return _sample(
            model,
            seeds,
            latent_image,
            positive,
            negative,
            steps,
            add_noise=add_noise != "disable",
            cfg=cfg,
            sampler_name=sampler_name,
            scheduler=scheduler,
            denoise=denoise,
            start_step=start_at_step,
            last_step=end_at_step,
            force_full_denoise=return_with_leftover_noise != "enable",
        )


BATCH_NODES: dict[str, type] = {
    "ComfyBentoBatchConditioning": BatchConditioning,
    "ComfyBentoBatchLatents": BatchLatents,
    "ComfyBentoBatchImages": BatchImages,
    "ComfyBentoBatchMasks": BatchMasks,
    "ComfyBentoBatchNoise": BatchNoise,
    "ComfyBentoBatchKSampler": BatchKSampler,
    "ComfyBentoBatchKSamplerAdvanced": BatchKSamplerAdvanced,
}
