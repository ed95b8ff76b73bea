"""Request preparation in the engine: a request bound into its graph, its uploads stored for ComfyUI, its shape key.

    prepare(spec, item, ...)   the models it chose checked, its images and files written into ComfyUI's input
                               folder (under fresh names), the graph bound and checked against the limits ->
                               Prepared, the scheduler's shape key (token-length bucket and image shapes
                               included) and whether it may share a batch

On any error the files already stored are deleted again; the engine deletes them once the request has finished.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfybento.engine.messages import EngineItem
from comfybento.errors import InvalidRequest, TooLarge
from comfybento.models.by_url import UrlModels
from comfybento.models.first_use import FirstUseCheck
from comfybento.models.lock import ModelEntry
from comfybento.outputs.encoding import Encoding, decode_b64
from comfybento.urlguard import AllowList
from comfybento.workflows.batchplan import BatchPlan
from comfybento.workflows.binding import bind, shape_key
from comfybento.workflows.catalog import ModelChoice, WorkflowSpec
from comfybento.workflows.graph import Graph, is_link
from comfybento.workflows.limits import check_graph_limits
from comfybento.workflows.params import NAMED_UPLOADS


@dataclass
class Prepared:
    """A request ready to run: its bound graph, and what encoding and clean-up need."""

    spec: WorkflowSpec
    item: EngineItem
    graph: Graph
    seed: int | None
    texts: dict[str, str]
    encoding: Encoding
    files: list[Path] = field(default_factory=list)
    # Called once the request has finished: the models by URL it holds may leave the cache again.
    leases: list[Callable[[], None]] = field(default_factory=list)


def prepare(spec: WorkflowSpec, item: EngineItem, models: FirstUseCheck, input_dir: Path,
            executor: Any = None, url_models: UrlModels | None = None) -> tuple[Prepared, str, bool]:
    """(the prepared request, its shape key, whether it may share a batch). Raises on a bad request (its stored files deleted).

    `models` fetches and hash-checks a chosen model on its first use; `url_models` downloads a model chosen by URL
    (its stored name then stands in the values: the shape key holds it, so only requests for the same file batch);
    `executor` (runtime/executor.py, None before the engine started) counts a prompt's tokens exactly when its
    checkpoint is loaded.
    """
    values = dict(item.values)
    files: list[Path] = []
    leases: list[Callable[[], None]] = []
    try:
        for entry in _chosen_models(spec, values, url_models, leases):
            models.ensure(entry)  # fetched and hash-checked before its first use; ModelLockError names the file
        _store_uploads(spec, item, values, input_dir, files)
        graph = bind(spec.graph, spec.params, values, item.seed)
        check_graph_limits(spec.name, graph, spec.limits)
    except Exception:
        for path in files:
            path.unlink(missing_ok=True)
        for release in leases:
            release()
        raise
    texts = {p.role: str(values.get(p.name, p.default)) for p in spec.params if p.role in ("prompt", "negative_prompt")}
    encoding = Encoding(format=item.output_format or spec.encoding.format,
                        quality=item.output_quality or spec.encoding.quality,
                        png_compress_level=spec.encoding.png_compress_level)
    prepared = Prepared(spec=spec, item=item, graph=graph, seed=item.seed, texts=texts, encoding=encoding, files=files,
                        leases=leases)
    plan = spec.batch_plan
    can_batch = plan is not None and plan.accepts(graph)
    key = f"{spec.name}|{shape_key(spec.params, values, plan.batchable_params if plan and can_batch else frozenset())}"
    if plan is not None and can_batch:
        key += f"|tokens={_token_bucket(plan, graph, executor)}|images={_image_shapes(plan, values, input_dir)}"
    return prepared, key, can_batch


def _store_uploads(spec: WorkflowSpec, item: EngineItem, values: dict[str, Any], input_dir: Path, files: list[Path]) -> None:
    """Write the request's uploads into ComfyUI's input folder (each path appended to `files`) and put their names in `values`."""
    for param in spec.params:
        if param.kind in NAMED_UPLOADS:  # images, masks, video, audio: the node gets the file's name
            path = store_upload(input_dir, param.name, values.get(param.name), item.file_suffixes.get(param.name) or ".png")
            files.append(path)
            values[param.name] = path.name
        elif param.kind == "file":  # CPackInputFile: the node gets the stored file's full path
            suffix = item.file_suffixes.get(param.name, "")
            path = store_upload(input_dir, param.name, values.get(param.name), suffix, spec.limits.max_upload_bytes)
            files.append(path)
            values[param.name] = str(path)


def store_upload(input_dir: Path, field_name: str, data: Any, suffix: str = ".png", max_bytes: int | None = None) -> Path:
    """An uploaded image or file (bytes or base64) in ComfyUI's input folder, under a fresh name."""
    what = "an image" if max_bytes is None else "a file"
    if isinstance(data, str):
        try:
            data = decode_b64(data)
        except ValueError:
            raise InvalidRequest(f"field '{field_name}': not base64 data") from None
    if not isinstance(data, bytes) or not data:
        raise InvalidRequest(f"field '{field_name}': {what} is required")
    if max_bytes is not None and len(data) > max_bytes:
        raise TooLarge(f"{field_name}: the file is {len(data)} bytes, more than the limit of {max_bytes} (max_upload_bytes)")
    if not re.fullmatch(r"\.[A-Za-z0-9]{1,16}", suffix):
        suffix = ""  # the client's name is never used, only a plain extension of it
    input_dir.mkdir(parents=True, exist_ok=True)
    path = input_dir / f"cb_{uuid.uuid4().hex}{suffix}"
    path.write_bytes(data)
    return path


def _chosen_models(spec: WorkflowSpec, values: dict[str, Any], url_models: UrlModels | None,
                   leases: list[Callable[[], None]]) -> list[ModelEntry]:
    """The models.lock entries of the model files a request chose (the front's schema has checked the names too).

    A model chosen by URL is downloaded (or found in the cache) now, leased (appended to `leases`), and its stored
    name put in `values`.
    """
    defaults = {p.name: p.default for p in spec.params}
    chosen = []
    for choice in spec.model_choices:
        name = values.get(choice.param, defaults.get(choice.param))
        if isinstance(name, dict):
            values[choice.param] = _model_by_url(spec, choice, name, url_models, leases)
            continue
        entry = choice.entry(str(name))
        if entry is None:
            raise InvalidRequest(f"field '{choice.param}': model {name!r} is not one of the {choice.folder}/ models in "
                                 f"models.lock: {[e.filename for e in choice.entries]}")
        chosen.append(entry)
    return chosen


def _model_by_url(spec: WorkflowSpec, choice: ModelChoice, value: dict[str, Any], url_models: UrlModels | None,
                  leases: list[Callable[[], None]]) -> str:
    """The stored name of a model by URL ({url, sha256}), downloaded if it is not in the cache yet."""
    url, sha256 = value.get("url"), value.get("sha256")
    if choice.url_hosts is None or url_models is None or not isinstance(url, str) or not isinstance(sha256, str | None):
        raise InvalidRequest(f"field '{choice.param}': of workflow '{spec.name}' takes one of the {choice.folder}/ models in "
                             f"models.lock, not a model by URL")
    model = url_models.resolve(choice.param, choice.folder, url, sha256, AllowList(choice.url_hosts, what=choice.param))
    leases.append(lambda: url_models.release(model))
    return model.name


def _token_bucket(plan: BatchPlan, graph: Graph, executor: Any) -> str:
    """Conditioning lengths (77-token chunks) of the per-request prompts: requests batch only with equal lengths."""
    chunks = []
    for _, encoder in plan.text_encoders:
        text = str(graph[encoder]["inputs"].get("text", ""))
        ckpt = _checkpoint_feeding(graph, encoder)
        exact = executor.prompt_chunks(ckpt, text) if ckpt is not None and executor is not None else None
        # A CLIP through other nodes (a LoRA), or a checkpoint not loaded yet: about 4 characters a token, 75 a chunk.
        chunks.append(exact if exact is not None else 1 + len(text) // 300)
    return ",".join(map(str, chunks))


def _checkpoint_feeding(graph: Graph, encoder: str) -> str | None:
    """The checkpoint whose CLIP feeds a text encoder directly, if it does."""
    clip = graph[encoder]["inputs"].get("clip")
    if not is_link(clip) or clip[0] not in graph:
        return None
    source = graph[clip[0]]
    if source["class_type"] != "CheckpointLoaderSimple":
        return None
    return str(source["inputs"].get("ckpt_name"))


def _image_shapes(plan: BatchPlan, values: dict[str, Any], input_dir: Path) -> str:
    """Size, bands and frames of each per-request image: only images of one shape share a batch."""
    from PIL import Image

    shapes = []
    for name in plan.image_params:
        try:
            with Image.open(input_dir / str(values[name])) as image:
                shapes.append(f"{image.size[0]}x{image.size[1]}:{''.join(image.getbands())}:{getattr(image, 'n_frames', 1)}")
        except (OSError, KeyError):
            shapes.append("?")  # LoadImage itself reports the problem
    return ",".join(shapes)
