"""ComfyUI's core node modules (upscale models, canny/morphology, audio) with the tiny generated models, on the CPU."""

from __future__ import annotations

import copy
import json
import math
import shutil
import wave

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from comfybento.config import Settings
from comfybento.models.fetch import fetch_all
from comfybento.models.lock import parse_lock, sha256_file
from comfybento.runtime.bootstrap import bootstrap
from comfybento.runtime.executor import ComfyExecutor
from comfybento.runtime.generators import model_generators
from tests.helpers import GRAPHS, service_env

pytestmark = pytest.mark.engine

#: The comfy_extras modules that need spandrel, kornia, torchvision or torchaudio.
CORE_MODULES = ("nodes_upscale_model.py", "nodes_canny.py", "nodes_morphology.py", "nodes_audio.py", "nodes_audio_encoder.py")
CORE_NODES = ("UpscaleModelLoader", "ImageUpscaleWithModel", "Canny", "Morphology", "SaveAudio", "LoadAudio", "AudioEncoderLoader")
TONE_HZ, TONE_RATE = 440.0, 44100


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    root = tmp_path_factory.mktemp("core_nodes")
    return bootstrap(Settings.from_env(service_env(root / "workflows", root / "work")))


@pytest.fixture(scope="module")
def models(runtime, tmp_path_factory):
    """The tiny upscaler, LoRA and ControlNet, generated (and hash-checked) into ComfyUI's model folders."""
    import folder_paths

    models_dir = tmp_path_factory.mktemp("core_models")
    lock = parse_lock(GRAPHS / "core_models.lock")
    assert set(fetch_all(lock, models_dir, generators=model_generators()).values()) == {"fetched"}
    for entry in lock.entries:
        folder_paths.add_model_folder_path(entry.folder, str(models_dir / entry.folder))
    return {entry.folder: entry.local_path(models_dir) for entry in lock.entries}


@pytest.fixture(scope="module")
def executor(runtime, models):
    executor = ComfyExecutor(runtime)
    yield executor
    executor.shutdown()


def _graph(name: str, **overrides: dict) -> dict:
    graph = json.loads((GRAPHS / f"{name}.json").read_text())
    for node_id, inputs in overrides.items():
        graph[node_id]["inputs"].update(inputs)
    return graph


def _run(executor: ComfyExecutor, graph: dict) -> dict[str, np.ndarray]:
    return {slot: images.numpy().astype(np.int16) for slot, images in executor.call(executor.execute, copy.deepcopy(graph)).images.items()}


def test_core_node_modules_import_and_register(runtime):
    import nodes

    assert not set(CORE_MODULES) & set(runtime.import_failed), runtime.import_failed
    assert [n for n in CORE_NODES if n not in nodes.NODE_CLASS_MAPPINGS] == []


def test_generators_are_deterministic(models, tmp_path):
    from comfybento.runtime import tiny_extras

    lock = {e.folder: e for e in parse_lock(GRAPHS / "core_models.lock").entries}
    for folder, generate in (
        ("upscale_models", tiny_extras.generate_tiny_upscaler),
        ("loras", tiny_extras.generate_tiny_lora),
        ("controlnet", tiny_extras.generate_tiny_controlnet),
    ):
        again = tmp_path / f"{folder}.safetensors"
        generate(again)
        assert sha256_file(again) == lock[folder].sha256 == sha256_file(models[folder])


def test_spandrel_loads_the_upscaler_as_a_x2_compact(models):
    from spandrel import ImageModelDescriptor, ModelLoader

    model = ModelLoader().load_from_file(str(models["upscale_models"]))
    assert isinstance(model, ImageModelDescriptor)
    assert model.architecture.id == "Compact" and model.scale == 2 and model.input_channels == 3


def test_every_lora_key_maps_onto_the_tiny_model(runtime, models):
    import comfy.lora
    import comfy.utils

    from comfybento.runtime.nodes import pinned_checkpoint
    from comfybento.runtime.tiny_extras import lora_targets

    model, clip, _ = pinned_checkpoint("tiny-sd.safetensors")
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    lora = comfy.utils.load_torch_file(str(models["loras"]), safe_load=True)
    patches = comfy.lora.load_lora(lora, key_map)
    targets = lora_targets()
    assert len(patches) == len(targets) > 0
    patched = {k if isinstance(k, str) else k[0] for k in patches}
    assert any(k.startswith("diffusion_model.") for k in patched) and any(k.startswith("clip_l.") for k in patched)


def test_comfys_controlnet_loader_infers_the_tiny_config(runtime, models):
    import comfy.controlnet
    import comfy.utils

    control = comfy.controlnet.load_controlnet(str(models["controlnet"]))
    stored = set(comfy.utils.load_torch_file(str(models["controlnet"]), safe_load=True))
    assert set(control.control_model.state_dict()) == stored
    assert control.control_model.model_channels == 32 and control.control_model.num_heads == 4


def test_upscale_graph_doubles_the_image(executor):
    out = _run(executor, _graph("upscale"))
    base, upscaled = out["9"], out["22"]
    assert base.shape == (1, 64, 64, 3) and upscaled.shape == (1, 128, 128, 3)
    nearest = base.repeat(2, axis=1).repeat(2, axis=2)
    diff = np.abs(upscaled - nearest).mean()
    assert 0.5 < diff < 40, diff  # the model's residual over the nearest-neighbour image: present, and small


def test_lora_changes_the_image(executor):
    on = _run(executor, _graph("lora"))["9"]
    off = _run(executor, _graph("lora", **{"10": {"strength_model": 0.0, "strength_clip": 0.0}}))["9"]
    unet_only = _run(executor, _graph("lora", **{"10": {"strength_clip": 0.0}}))["9"]
    assert on.shape == off.shape == (1, 64, 64, 3)
    assert np.abs(on - off).mean() > 2 and np.abs(unet_only - off).mean() > 2 and np.abs(on - unet_only).mean() > 0.5


def _shapes_image() -> Image.Image:
    """A white square and a grey disc on black: clear edges for Canny."""
    image = Image.new("RGB", (64, 64))
    draw = ImageDraw.Draw(image)
    draw.rectangle((8, 8, 28, 28), fill=(255, 255, 255))
    draw.ellipse((34, 30, 58, 54), fill=(128, 128, 128))
    return image


def test_canny_controlnet_changes_the_image(executor, runtime):
    _shapes_image().save(runtime.input_dir / "core_edges_source.png")
    on = _run(executor, _graph("controlnet"))
    off = _run(executor, _graph("controlnet", **{"14": {"strength": 0.0}}))
    edges = on["15"]
    assert edges.shape == (1, 64, 64, 3) and set(np.unique(edges)) >= {0, 255}
    assert 0.01 < (edges == 255).mean() < 0.9  # Canny found edges, not everything
    assert np.abs(on["9"] - off["9"]).mean() > 2
    assert np.array_equal(off["15"], edges)


def _write_tone(path, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(TONE_RATE * seconds)) / TONE_RATE
    samples = (0.5 * np.sin(2 * math.pi * TONE_HZ * t) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(TONE_RATE)
        fh.writeframes(samples.tobytes())
    return samples.astype(np.float32) / 32768


def _decode(path) -> tuple[np.ndarray, int]:
    """Mono samples in [-1, 1] and the sample rate of an audio file, decoded with PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [frame.to_ndarray().reshape(-1) if frame.format.is_packed else frame.to_ndarray()[0] for frame in container.decode(stream)]
    samples = np.concatenate(chunks)
    scale = float(np.iinfo(samples.dtype).max + 1) if np.issubdtype(samples.dtype, np.integer) else 1.0
    return samples.astype(np.float32) / scale, int(stream.rate)


def _dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def test_audio_round_trip_through_load_and_save_audio(executor, runtime):

    tone = _write_tone(runtime.input_dir / "core_tone.wav")
    executed = executor.call(executor.execute, _graph("audio_roundtrip"))
    assert executed.images == {}  # no image outputs: the audio files come back as produced files
    written = sorted(p.path for p in executed.produced if hasattr(p, "path"))
    flac = [p for p in written if p.suffix == ".flac"][-1]
    opus = [p for p in written if p.suffix == ".opus"][-1]
    lossless, rate = _decode(flac)
    assert rate == TONE_RATE and len(lossless) == len(tone) and np.abs(lossless - tone).max() < 1e-3
    resampled, rate = _decode(opus)  # opus has no 44.1 kHz: ComfyUI resamples to 48 kHz with torchaudio
    assert rate == 48000 and abs(_dominant_hz(resampled, rate) - TONE_HZ) < 5
    shutil.rmtree(executed.folder)  # the reader deletes the execution's folder


def test_torchvision_python_parts_work(runtime):
    import torchvision.transforms.functional as tvf

    image = torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(3, 8, 8)
    assert tuple(tvf.resize(image, [4, 4], antialias=True).shape) == (3, 4, 4)
    assert torch.equal(tvf.hflip(image), image.flip(-1))
