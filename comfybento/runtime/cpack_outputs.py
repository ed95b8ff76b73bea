"""Our implementation of comfy-pack's file-writing output nodes (same class names and inputs).

Each writes into ComfyUI's output folder under a fresh name and reports the file
in its UI result, the way stock output nodes do; the executor finds every
output there (runtime/outputs.py). comfy-pack's own nodes find their files by
globbing a folder and print to stdout; these do neither.

    CPackOutputFile       copies a file made by an upstream node (from ComfyUI's input, output or temp folder only)
    CPackOutputTextFile   a text as a file (.txt unless file_extension says otherwise)
    CPackOutputZip        a zip of the images as PNG, each with the text beside it
    CPackOutputAudio      an AUDIO value as FLAC (written with PyAV; no torchaudio)
    CPackOutputVideo      a VIDEO value (comfy_api's VideoInput) as MP4
    CPackOutputZipSwitch  comfy-pack's "zip every output" flag: accepted, no effect (every output comes back anyway)
"""

from __future__ import annotations

import io
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import folder_paths
import numpy as np
import torch
from PIL import Image

_EXTENSION_RE = re.compile(r"^\.[A-Za-z0-9]{1,16}$")


def _new_file(filename_prefix: str, suffix: str, default_prefix: str) -> tuple[Path, dict[str, str]]:
    """A fresh path in ComfyUI's output folder for the prefix (ComfyUI's own naming and folder check), and its UI entry."""
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix or default_prefix,
                                                                           folder_paths.get_output_directory())
    Path(folder).mkdir(parents=True, exist_ok=True)
    while True:
        filename = f"{name}_{counter:05}_{suffix}"
        if not (Path(folder) / filename).exists():
            return Path(folder) / filename, {"filename": filename, "subfolder": subfolder, "type": "output"}
        counter += 1


class _Output:
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    CATEGORY = "ComfyPack/output"
    CPACK_NODE = True


class CPackOutputFile(_Output):
    FUNCTION = "save"
    DESCRIPTION = "Returns a file made by an upstream node (its path) as an output."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"filename": ("STRING", {"default": "", "forceInput": True}),
                             "filename_prefix": ("STRING", {"default": "cpack_output_"})}}

    def save(self, filename: str, filename_prefix: str = "cpack_output_") -> dict[str, Any]:
        source = Path(filename).resolve()
        roots = [Path(f).resolve() for f in (folder_paths.get_input_directory(), folder_paths.get_output_directory(),
                                             folder_paths.get_temp_directory())]
        if not any(source.is_relative_to(root) for root in roots) or not source.is_file():
            raise ValueError(f"CPackOutputFile: {filename!r} is not a file in ComfyUI's input, output or temp folder")
        path, entry = _new_file(filename_prefix, source.name, "cpack_output_")
        shutil.copyfile(source, path)
        return {"ui": {"files": [entry]}}


class CPackOutputTextFile(_Output):
    FUNCTION = "save"
    DESCRIPTION = "Returns a text as a file."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"text": ("STRING", {"forceInput": True}), "filename_prefix": ("STRING", {"default": "cpack_output_"})},
                "optional": {"file_extension": ("STRING", {"default": ".txt"})}}

    def save(self, text: str, filename_prefix: str = "cpack_output_", file_extension: str = ".txt") -> dict[str, Any]:
        if not _EXTENSION_RE.match(file_extension):
            raise ValueError(f"CPackOutputTextFile: file_extension {file_extension!r} is not a plain extension like '.txt'")
        path, entry = _new_file(filename_prefix, f"{file_extension}", "cpack_output_")
        path.write_text(text, encoding="utf-8", newline="\n")
        return {"ui": {"files": [entry]}}


class CPackOutputZip(_Output):
    FUNCTION = "save"
    DESCRIPTION = "Returns the images (PNG) and the text, one text file per image, as one zip."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "cpack_output_"}),
                             "text": ("STRING", {"default": ""})}}

    def save(self, images: torch.Tensor, filename_prefix: str = "cpack_output_", text: str = "") -> dict[str, Any]:
        path, entry = _new_file(filename_prefix, ".zip", "cpack_output_")
        pixels = (images.detach() * 255.0).clamp(0, 255).to(torch.uint8).cpu().numpy()
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for n, array in enumerate(pixels):
                buffer = io.BytesIO()
                Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(buffer, format="PNG", compress_level=4)
                archive.writestr(f"image_{n:05}.png", buffer.getvalue())
                archive.writestr(f"text_{n:05}.txt", text)
        return {"ui": {"files": [entry]}}


def write_flac(path: Path, waveform: torch.Tensor, sample_rate: int) -> None:
    """One (channels, samples) float waveform in [-1, 1] as a 16-bit FLAC file."""
    import av

    channels = int(waveform.shape[0])
    if channels not in (1, 2):
        raise ValueError(f"CPackOutputAudio: {channels} channels; mono or stereo only")
    samples = (waveform.detach().float().clamp(-1, 1) * 32767).round().to(torch.int16).cpu().numpy()
    with av.open(str(path), mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=sample_rate, layout="mono" if channels == 1 else "stereo")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T.reshape(1, -1)), format="s16",
                                           layout="mono" if channels == 1 else "stereo")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


class CPackOutputAudio(_Output):
    FUNCTION = "save"
    DESCRIPTION = "Returns audio as FLAC, one file per item of the batch."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"audio": ("AUDIO",), "filename_prefix": ("STRING", {"default": "audio/comfypack"})}}

    def save(self, audio: dict[str, Any], filename_prefix: str = "audio/comfypack") -> dict[str, Any]:
        entries = []
        for waveform in audio["waveform"]:
            path, entry = _new_file(filename_prefix, ".flac", "audio/comfypack")
            write_flac(path, waveform, int(audio["sample_rate"]))
            entries.append(entry)
        return {"ui": {"audio": entries}}


class CPackOutputVideo(_Output):
    FUNCTION = "save"
    DESCRIPTION = "Returns a video as MP4."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"video": ("VIDEO",), "filename_prefix": ("STRING", {"default": "video/comfypack"}),
                             "format": (["auto", "mp4"], {"default": "auto"}), "codec": (["auto", "h264"], {"default": "auto"})}}

    def save(self, video: Any, filename_prefix: str = "video/comfypack", format: str = "auto", codec: str = "auto") -> dict[str, Any]:
        path, entry = _new_file(filename_prefix, ".mp4", "video/comfypack")
        video.save_to(str(path), format=format, codec=codec)
        return {"ui": {"images": [entry], "animated": (True,)}}


class CPackOutputZipSwitch:
    RETURN_TYPES = ()
    FUNCTION = "noop"
    CATEGORY = "ComfyPack/output"
    CPACK_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {}

    def noop(self) -> tuple[()]:
        return ()


CPACK_OUTPUT_NODES: dict[str, type] = {
    "CPackOutputFile": CPackOutputFile,
    "CPackOutputTextFile": CPackOutputTextFile,
    "CPackOutputZip": CPackOutputZip,
    "CPackOutputAudio": CPackOutputAudio,
    "CPackOutputVideo": CPackOutputVideo,
    "CPackOutputZipSwitch": CPackOutputZipSwitch,
}
