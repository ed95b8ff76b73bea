"""Frames between the front and the engine: raw bytes once, any chunking, typed events."""

from __future__ import annotations

import asyncio

import pytest

from comfybento.engine.messages import EngineItem, ItemResult, OutputBlob, event_to_frame, item_from_frame, item_to_frame
from comfybento.engine.wire import FrameReader, WireError, decode_frame, encode_frame, read_frames
from comfybento.errors import InvalidRequest, NodeExecutionError
from comfybento.scheduling.events import Done, Failed, OutputReady, Progress, Queued, Started


def test_a_frame_carries_binary_parts_without_base64():
    blob = bytes(range(256)) * 1000
    frame = encode_frame({"event": "output", "name": "x"}, [blob, b""])
    assert len(frame) < len(blob) + 200  # raw bytes, no base64 inflation
    header, parts = decode_frame(frame)
    assert header == {"event": "output", "name": "x"} and parts == [blob, b""]


@pytest.mark.parametrize("chunk", [1, 7, 4096, 10**7])
def test_frames_reassemble_from_chunks_of_any_size(chunk):
    frames = [encode_frame({"i": i}, [bytes([i]) * (i * 1000)]) for i in range(5)]
    stream = b"".join(frames)

    async def chunks():
        for at in range(0, len(stream), chunk):
            yield stream[at:at + chunk]

    async def collect():
        return [frame async for frame in read_frames(chunks())]

    got = asyncio.run(collect())
    assert [(h["i"], len(p[0])) for h, p in got] == [(i, i * 1000) for i in range(5)]


def test_truncated_and_garbage_frames_are_errors():
    frame = encode_frame({"a": 1}, [b"12345"])
    reader = FrameReader()
    assert reader.feed(frame[:-2]) == [] and reader.pending
    with pytest.raises(WireError):
        decode_frame(frame[:-2])
    with pytest.raises(WireError):
        FrameReader().feed(b"\x00\x00\x00\x05nope!")


def test_engine_item_round_trip_keeps_uploads_as_bytes():
    item = EngineItem(values={"prompt": "a cat", "steps": 4, "image": b"\x89PNG..."}, seed=7, output_format="webp",
                      output_quality=80, request_id="r1")
    header, parts = item_to_frame("img2img", item)
    assert parts == [b"\x89PNG..."] and "image" not in header["values"]
    workflow, back = item_from_frame(*decode_frame(encode_frame(header, parts)))
    assert workflow == "img2img" and back == item


def test_events_become_frames_with_outputs_as_raw_parts():
    blob = OutputBlob(output="save", node_id="9", index=0, width=8, height=8, media_type="image/webp", data=b"RIFF...")
    assert event_to_frame(Queued(3)) == ({"event": "queued", "position": 3}, [])
    assert event_to_frame(Started(4, 12.5))[0] == {"event": "started", "batch_size": 4, "queue_ms": 12.5}
    assert event_to_frame(Progress(2, 20, "3"))[0] == {"event": "progress", "value": 2, "max": 20, "node_id": "3"}
    header, parts = event_to_frame(OutputReady(blob))
    assert parts == [b"RIFF..."] and header["media_type"] == "image/webp" and "data" not in header
    done, _ = event_to_frame(Done(ItemResult(ok=True, seed=5, batch_size=4)))
    assert done["event"] == "done" and done["result"]["seed"] == 5 and "outputs" not in done["result"]


def test_failures_say_status_kind_and_node_but_never_internal_details():
    node, _ = event_to_frame(Failed(NodeExecutionError("10", "RaiseOnText", "asked to fail")))
    assert node["result"]["status"] == 500 and node["result"]["error_kind"] == "node" and node["result"]["node_id"] == "10"
    bad, _ = event_to_frame(Failed(InvalidRequest("field 'image': not an image")))
    assert bad["result"]["status"] == 422 and "field 'image'" in bad["result"]["error"]
    internal, _ = event_to_frame(Failed(RuntimeError("/secret/path/model.py exploded")))
    assert internal["result"]["status"] == 500 and "/secret" not in internal["result"]["error"]
