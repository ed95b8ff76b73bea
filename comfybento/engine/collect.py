"""Result collection in the engine: a batch's outputs split per request, encoded, and sent to each request's sink.

    split_outputs(spec, executed, i, n)   request i's share of what the batch of n made, in output order
    encode_and_finish(job, pieces, ...)   in the encoding pool: each output as soon as it is ready
                                          (an image encoded, a written file read, a text), then Done
    Countdown                             deletes the batch's folder of written files once every request read them
    Collector                             a sink that gathers one request's events into an ItemResult
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

from comfybento.engine.messages import ItemResult, OutputBlob
from comfybento.engine.prepare import Prepared
from comfybento.errors import EngineUnavailable
from comfybento.outputs.encoding import Encoding, encode_image
from comfybento.outputs.media import KNOWN_OUTPUTS, ProducedFile, ProducedText, dimensions, kind_of, media_type_of
from comfybento.scheduling.events import Done, Event, Failed, OutputReady
from comfybento.scheduling.scheduler import Job
from comfybento.workflows.catalog import WorkflowSpec

# One output of one request, before encoding: (output name, node id, index in that node, what the node made:
# a uint8 HWC image array, a file it wrote, or a text).
Piece = tuple[str, str, int, Any]


def split_outputs(spec: WorkflowSpec, executed: Any, index: int, n: int) -> list[Piece]:
    """The outputs of request `index` of n, in output order (node id order, then index in the node)."""
    out: list[Piece] = []
    batched = spec.batch_plan.batched_outputs if spec.batch_plan else frozenset()
    for output in spec.outputs:
        if not output.encoded_by_us:
            made = [p for p in executed.produced if p.node_id == output.node_id]
            out.extend((output.name, output.node_id, i, p) for i, p in enumerate(made))
            continue
        tensor = executed.images.get(output.node_id)
        if tensor is None:
            continue
        if n > 1 and output.node_id in batched:
            per = tensor.shape[0] // n
            tensor = tensor[index * per:(index + 1) * per]
        out.extend((output.name, output.node_id, i, image.numpy()) for i, image in enumerate(tensor))
    return out


def encode_and_finish(job: Job[Prepared], pieces: list[Piece], timings: dict[str, Any], release: Countdown) -> None:
    """In the encoding pool: each output as soon as it is ready, then Done."""
    prepared = job.payload
    try:
        for piece in pieces:
            job.emit(OutputReady(_blob(prepared.spec, piece, prepared.encoding)))
    except Exception as exc:
        release.done()
        job.emit(Failed(exc))
        return
    release.done()  # before Done: once a caller has its answer, the execution's written files are gone
    job.emit(Done(ItemResult(ok=True, seed=prepared.seed, **timings)))


def _blob(spec: WorkflowSpec, piece: Piece, encoding: Encoding) -> OutputBlob:
    """One piece as bytes: an image encoded in the request's format, a written file read, a text as UTF-8."""
    name, node_id, index, made = piece
    if isinstance(made, ProducedText):
        return OutputBlob(output=name, node_id=node_id, index=index, media_type="text/plain", kind="text", data=made.text.encode())
    if isinstance(made, ProducedFile):
        data = made.path.read_bytes()
        media_type = media_type_of(made.path.name)
        known = next((o.kind for o in spec.outputs if o.node_id == node_id and o.class_type in KNOWN_OUTPUTS), None)
        width, height = dimensions(data, media_type)
        return OutputBlob(output=name, node_id=node_id, index=index, width=width, height=height, media_type=media_type,
                          kind=known or kind_of(media_type, made.animated), data=data)
    return OutputBlob(output=name, node_id=node_id, index=index, width=int(made.shape[1]), height=int(made.shape[0]),
                      media_type=encoding.media_type, kind="image", data=encode_image(made, encoding))


class Countdown:
    """Deletes an execution's folder of written outputs once every request of its batch has read them."""

    def __init__(self, users: int, folder: Path | None) -> None:
        self._left, self._folder, self._lock = users, folder, threading.Lock()

    def done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last and self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


class Collector:
    """A sink that gathers one request's events into an ItemResult (tests, warm-up, BentoML's batcher)."""

    def __init__(self) -> None:
        self.outputs: list[OutputBlob] = []
        self.events: list[Event] = []
        self.result: ItemResult | None = None
        self._done = threading.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, OutputReady):
            self.outputs.append(event.output)
        elif isinstance(event, Done):
            self.result = event.result.model_copy(update={"outputs": list(self.outputs)})
            self._done.set()
        elif isinstance(event, Failed):
            self.result = ItemResult.failure(event.error)
            self._done.set()

    def wait(self, timeout: float | None = None) -> ItemResult:
        if not self._done.wait(timeout):
            return ItemResult.failure(EngineUnavailable(f"no result within {timeout} s"))
        assert self.result is not None
        return self.result
