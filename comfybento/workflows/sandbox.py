"""What a submitted graph that matches no served workflow may touch (COMFYBENTO_SUBMITTED_GRAPHS=any).

- Node types: `DEFAULT_NODES` (computations on tensors, numbers and strings; loaders whose files must be
  models.lock entries; output nodes whose files comfybento returns), plus those COMFYBENTO_GRAPH_NODES names
  (`*`: every type in the node registry).
- `DISK_NODES` read or write datasets, models, latents or pickles on the server's disk, or read its shared
  folders: refused, even with `*`, unless COMFYBENTO_GRAPH_NODES names each one.
- Path inputs (`filename_prefix`, `folder_name`, `folder`, ...) of an allowed node: a literal relative name,
  never absolute, never `..`, never a link (a value computed while the graph runs cannot be checked), and
  re-rooted in the request's own folder (`<folder>/...` inside ComfyUI's input, output and temp folders),
  which is new for each request and holds no links. The engine deletes that folder when the request ends,
  with whatever the graph wrote in it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from comfybento.workflows.graph import Graph, InputDef, NodeDefs, is_link, sorted_ids

# Node types an unmatched graph may use unless the operator adds others.
DEFAULT_NODES = frozenset({
    # loaders (workflows/catalog.py LOADER_FOLDERS: their file must be a models.lock entry)
    "CheckpointLoaderSimple", "ImageOnlyCheckpointLoader", "unCLIPCheckpointLoader", "LoraLoader", "LoraLoaderModelOnly",
    "VAELoader", "ControlNetLoader", "DiffControlNetLoader", "UpscaleModelLoader", "CLIPLoader", "DualCLIPLoader",
    "UNETLoader", "CLIPVisionLoader", "StyleModelLoader",
    # text and conditioning
    "CLIPTextEncode", "CLIPTextEncodeSDXL", "CLIPTextEncodeSDXLRefiner", "CLIPTextEncodeSD3", "CLIPTextEncodeFlux",
    "CLIPSetLastLayer", "ConditioningAverage", "ConditioningCombine", "ConditioningConcat", "ConditioningSetArea",
    "ConditioningSetAreaPercentage", "ConditioningSetAreaStrength", "ConditioningSetMask", "ConditioningSetTimestepRange",
    "ConditioningZeroOut", "ControlNetApply", "ControlNetApplyAdvanced", "ControlNetApplySD3", "FluxGuidance",
    "CLIPVisionEncode", "StyleModelApply", "unCLIPConditioning", "InpaintModelConditioning", "InstructPixToPixConditioning",
    # sampling
    "KSampler", "KSamplerAdvanced", "KSamplerSelect", "SamplerCustom", "SamplerCustomAdvanced", "BasicScheduler",
    "KarrasScheduler", "ExponentialScheduler", "PolyexponentialScheduler", "SDTurboScheduler", "AlignYourStepsScheduler",
    "BasicGuider", "CFGGuider", "DualCFGGuider", "RandomNoise", "DisableNoise", "SplitSigmas", "SplitSigmasDenoise",
    "FlipSigmas", "SamplerEulerAncestral", "SamplerDPMPP_2M_SDE", "SamplerDPMPP_SDE", "SamplerLMS",
    # model patches (in memory)
    "ModelSamplingDiscrete", "ModelSamplingSD3", "ModelSamplingFlux", "ModelSamplingAuraFlow", "RescaleCFG", "FreeU",
    "FreeU_V2", "PerturbedAttentionGuidance", "SelfAttentionGuidance", "DifferentialDiffusion", "PatchModelAddDownscale",
    # latents
    "EmptyLatentImage", "EmptySD3LatentImage", "LatentUpscale", "LatentUpscaleBy", "LatentComposite",
    "LatentCompositeMasked", "LatentBlend", "LatentAdd", "LatentSubtract", "LatentMultiply", "LatentInterpolate",
    "LatentBatch", "LatentFromBatch", "RepeatLatentBatch", "RebatchLatents", "LatentCrop", "LatentFlip", "LatentRotate",
    "SetLatentNoiseMask", "VAEDecode", "VAEEncode", "VAEDecodeTiled", "VAEEncodeTiled", "VAEEncodeForInpaint",
    # images and masks
    "ImageScale", "ImageScaleBy", "ImageScaleToTotalPixels", "ImageUpscaleWithModel", "ImageInvert", "ImageBatch",
    "ImageFromBatch", "RepeatImageBatch", "RebatchImages", "ImageCrop", "ImageFlip", "ImageRotate", "ImageBlend",
    "ImageBlur", "ImageSharpen", "ImageQuantize", "ImageCompositeMasked", "ImagePadForOutpaint", "ImageToMask",
    "MaskToImage", "EmptyImage", "GetImageSize", "Canny", "JoinImageWithAlpha", "SplitImageWithAlpha", "ImageStitch",
    "Morphology", "PorterDuffImageComposite", "SolidMask", "InvertMask", "CropMask", "MaskComposite", "FeatherMask",
    "GrowMask", "ThresholdMask", "ImageColorToMask",
    # values and strings (no regular expressions: a pattern can take exponential time)
    "PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveBoolean",
    "StringConcatenate", "StringReplace", "StringSubstring", "StringLength", "StringTrim", "CaseConverter",
    "StringCompare", "StringContains", "CPackInputString", "CPackInputInt",
    # outputs (comfybento collects images itself; the files of the others are returned and deleted)
    "SaveImage", "PreviewImage", "PreviewAny", "MaskPreview", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveWEBM",
    "CreateVideo", "SaveVideo", "SaveAudio", "SaveAudioMP3", "SaveAudioOpus", "PreviewAudio", "CPackOutputImage",
    "CPackOutputTextFile", "CPackOutputZip", "CPackOutputAudio", "CPackOutputVideo",
})

# Node types that touch the server's disk beyond a request's own outputs (ComfyUI 0.3.75's comfy_extras and
# nodes.py): never allowed by `*`, only when COMFYBENTO_GRAPH_NODES names them.
DISK_NODES = {
    "SaveImageDataSetToFolder": "writes a dataset",
    "SaveImageTextDataSetToFolder": "writes a dataset",
    "SaveTrainingDataset": "writes a dataset of pickles",
    "LoadImageDataSetFromFolder": "reads a dataset folder",
    "LoadImageTextDataSetFromFolder": "reads a dataset folder",
    "LoadTrainingDataset": "reads a dataset of pickles",
    "CheckpointSave": "writes a model",
    "ImageOnlyCheckpointSave": "writes a model",
    "ModelSave": "writes a model",
    "CLIPSave": "writes a model",
    "VAESave": "writes a model",
    "LoraSave": "writes a model",
    "SaveLoRA": "writes a model",
    "TrainLoraNode": "trains a model",
    "SaveLatent": "writes a latent file",
    "LoadLatent": "reads a latent file",
    "LoadImageOutput": "reads ComfyUI's output folder",
    "CPackOutputFile": "reads a file by its path",
}

# Inputs that name a file or folder on the server: those named so, and an output node's file-name prefix.
_PATH_NAMES = frozenset({"filename_prefix", "folder_name", "folder", "filename", "file", "path", "file_path",
                         "directory", "dir", "model_file", "output_path", "save_path"})
# Of these, the ones that name a folder: where a node has one, its other path inputs are names inside it.
_FOLDER_NAMES = frozenset({"folder_name", "folder", "directory", "dir"})


@dataclass(frozen=True)
class NodeRules:
    """The node types an unmatched graph may use: the defaults, plus the operator's (COMFYBENTO_GRAPH_NODES)."""

    extra: frozenset[str] = frozenset()

    @classmethod
    def from_names(cls, names: Iterable[str]) -> NodeRules:
        return cls(frozenset(names))

    def problem(self, node_id: str, class_type: str) -> str | None:
        """Why a node of this type may not run in an unmatched graph, or None."""
        label = f"node {node_id} ({class_type})"
        if class_type in DISK_NODES:
            if class_type in self.extra:
                return None
            return (f"{label} {DISK_NODES[class_type]} on the server's disk; an unmatched graph may use it only if "
                    f"COMFYBENTO_GRAPH_NODES names {class_type}")
        if class_type in DEFAULT_NODES or class_type in self.extra or "*" in self.extra:
            return None
        return (f"{label}: node type {class_type} is not allowed in a graph that matches no served workflow "
                "(COMFYBENTO_GRAPH_NODES adds node types; serve a workflow for it instead)")


def path_inputs(class_type: str, node_defs: NodeDefs) -> dict[str, InputDef]:
    """A node type's inputs that name a file or folder on the server."""
    node_def = node_defs.get(class_type)
    if node_def is None:
        return {}
    return {name: d for name, d in node_def.inputs.items() if d.type in ("STRING", "COMBO") and (
        name in _PATH_NAMES or (node_def.output_node and (name == "prefix" or name.endswith("_prefix"))))}


def is_path_input(class_type: str, input_name: str, node_defs: NodeDefs) -> bool:
    return input_name in path_inputs(class_type, node_defs)


def _path_problem(value: Any, rooted: bool) -> str | None:
    if is_link(value):
        return "takes a link; a path must be a literal name (one computed while the graph runs cannot be checked)"
    if not isinstance(value, str):
        return f"is {value!r}, not a string"
    if "\\" in value or "\x00" in value or value.startswith("~"):
        return f"is {value!r}: a path is a relative name with '/' between its parts"
    if value.startswith("/") or re.match(r"[A-Za-z]:", value):
        return f"is {value!r}, an absolute path; a path is relative to the request's own folder"
    if ".." in value.split("/"):
        return f"is {value!r}: '..' may not leave the request's own folder"
    if not rooted and "/" in value:
        return f"is {value!r}: a name inside the node's folder, without '/'"
    return None


def sandbox_problems(graph: Graph, node_defs: NodeDefs, rules: NodeRules) -> list[str]:
    """What an unmatched graph may not do: node types outside the allowed set, path inputs that leave its folder."""
    problems = []
    for node_id in sorted_ids(graph):
        node = graph[node_id]
        class_type = node["class_type"]
        refused = rules.problem(node_id, class_type)
        if refused:
            problems.append(refused)
            continue
        paths = path_inputs(class_type, node_defs)
        folders = _FOLDER_NAMES & set(paths)
        for name in sorted(paths):
            if name in node["inputs"]:
                problem = _path_problem(node["inputs"][name], rooted=not folders or name in folders)
                if problem:
                    problems.append(f"node {node_id} ({class_type}) input '{name}' {problem}")
    return problems


def confine(graph: Graph, node_defs: NodeDefs, folder: str) -> Graph:
    """The graph with each path input that is relative to ComfyUI's folders moved into `folder` (checked first).

    A path input left out gets its declared default there: the node's own default would be outside.
    """
    confined = copy.deepcopy(graph)
    for node in confined.values():
        paths = path_inputs(node["class_type"], node_defs)
        folders = _FOLDER_NAMES & set(paths)
        for name, input_def in paths.items():
            value = node["inputs"].get(name, input_def.options.get("default"))
            if isinstance(value, str) and (not folders or name in folders):
                node["inputs"][name] = f"{folder}/{value}"
    return confined
