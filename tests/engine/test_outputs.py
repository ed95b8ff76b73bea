"""Every output node's results through the real engine on the CPU: images, animation, video, text, audio, files."""

from __future__ import annotations

import io
import zipfile

import av
import pytest
from PIL import Image

from comfybento.config import Settings
from comfybento.engine.engine import Engine
from comfybento.engine.messages import EngineItem
from comfybento.workflows.project import load_project
from tests.helpers import make_workflows_dir, service_env

pytestmark = pytest.mark.engine

# (output name, node id, index, kind, media type), in the order every answer gives them
EXPECTED = [
    ("still", "301", 0, "image", "image/png"),
    ("still", "301", 1, "image", "image/png"),
    ("animation", "302", 0, "animation", "image/webp"),
    ("clip", "303", 0, "video", "video/webm"),
    ("caption", "304", 0, "text", "text/plain"),
    ("tone", "305", 0, "audio", "audio/flac"),
    ("tone", "305", 1, "audio", "audio/flac"),
    ("notes", "306", 0, "text", "text/plain"),
    ("bundle", "307", 0, "file", "application/zip"),
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs_engine")
    settings = Settings.from_env(service_env(make_workflows_dir(root / "workflows", extra=("every_output",)), root / "work"))
    engine = Engine(settings, load_project(settings).catalog)
    engine.start()
    yield engine
    engine.stop(drain_s=10)


def _run(engine, seed):
    return engine.run("every_output", [EngineItem(values={}, seed=seed)], timeout=300)[0]


def check_outputs(outputs) -> None:
    """Every output decodes as what it says it is (shared with the e2e test)."""
    by = {(o.output, o.index): o for o in outputs}
    for i in (0, 1):
        assert Image.open(io.BytesIO(by["still", i].data)).size == (64, 64)
    animation = Image.open(io.BytesIO(by["animation", 0].data))
    assert animation.format == "WEBP" and animation.n_frames == 2 and by["animation", 0].width == 64
    with av.open(io.BytesIO(by["clip", 0].data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 2 and frames[0].shape == (64, 64, 3) and (by["clip", 0].width, by["clip", 0].height) == (64, 64)
    assert by["caption", 0].data.decode().startswith("2 images of 64x64, mean ")
    assert by["notes", 0].data == by["caption", 0].data
    for i in (0, 1):
        with av.open(io.BytesIO(by["tone", i].data)) as container:
            stream = container.streams.audio[0]
            samples = sum(frame.samples for frame in container.decode(audio=0))
        assert stream.codec_context.name == "flac" and stream.rate == 16000 and samples == 4000
    with zipfile.ZipFile(io.BytesIO(by["bundle", 0].data)) as archive:
        assert sorted(archive.namelist()) == ["image_00000.png", "image_00001.png", "text_00000.txt", "text_00001.txt"]
        assert archive.read("text_00001.txt") == b"fox"


def test_every_output_comes_back_named_typed_and_in_order(engine):
    spec = engine.catalog["every_output"]
    assert [(o.name, o.kind, o.media_type) for o in spec.outputs] == [
        ("still", "image", None), ("animation", "animation", "image/webp"), ("clip", "video", "video/webm"),
        ("caption", "text", "text/plain"), ("tone", "audio", "audio/flac"), ("notes", "text", "text/plain"),
        ("bundle", "file", "application/zip")]
    assert spec.batch_plan is None  # a file written from a merged batch could not be split between its requests
    result = _run(engine, seed=3)
    assert result.ok, result.error
    assert [(o.output, o.node_id, o.index, o.kind, o.media_type) for o in result.outputs] == EXPECTED
    check_outputs(result.outputs)


def test_outputs_are_fresh_each_run_and_leave_no_files(engine):
    """Output nodes run again for every request (never a cached UI result pointing at deleted files)."""
    a, b, again = _run(engine, seed=1), _run(engine, seed=2), _run(engine, seed=1)
    assert a.ok and b.ok and again.ok
    assert len(a.outputs) == len(b.outputs) == len(again.outputs) == len(EXPECTED)
    clip_a, clip_b = (next(o.data for o in r.outputs if o.output == "clip") for r in (a, b))
    caption_a, caption_b, caption_again = (next(o.data for o in r.outputs if o.output == "caption") for r in (a, b, again))
    assert caption_a != caption_b and caption_a == caption_again and clip_a != clip_b
    work = engine.settings.work_dir
    assert not [p for p in (work / "output").rglob("*") if p.is_file()]
    assert not [p for p in (work / "runs").rglob("*") if p.is_file()]
