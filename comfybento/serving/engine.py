"""The engine: turns a batch of requests for one workflow into ComfyUI executions.

Runs in the GPU-side service. BentoML's adaptive batcher hands it a list of
EngineItems; it binds each into the graph, groups items that can share an
execution (batching.shape_key), merges each group into one graph
(workflows/batchplan.py), executes it on the warm ComfyUI executor and splits
the images back per request.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfybento.errors import ComfyBentoError, InvalidRequest, ModelLockError, NodeExecutionError, OutOfMemory, WorkflowError
from comfybento.models.lock import verify_entry
from comfybento.outputs.encoding import b64, decode_b64, png_bytes, to_pil
from comfybento.runtime.executor import ComfyExecutor
from comfybento.scheduling.batcher import Batcher
from comfybento.serving import metrics
from comfybento.serving.messages import EngineItem, ItemResult
from comfybento.serving.project import Project
from comfybento.workflows.batchplan import BATCHABLE_ROLES, DETERMINISTIC_SAMPLERS, merge_graph
from comfybento.workflows.binding import bind, shape_key
from comfybento.workflows.catalog import WorkflowSpec
from comfybento.workflows.graph import Graph
from comfybento.workflows.schema import ImageOutput

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    item: EngineItem
    graph: Graph
    seed: int | None
    texts: dict[str, str]
    key: str
    can_batch: bool
    files: list[Path] = field(default_factory=list)


class Engine:
    def __init__(self, project: Project) -> None:
        self.project = project
        self.catalog = project.catalog
        self.executor = ComfyExecutor(project.runtime)
        self.batcher: Batcher[Prepared, ItemResult] = Batcher()
        self.input_dir = project.settings.work_dir / "input"

    # ------------------------------------------------------------ startup

    def start(self) -> None:
        """Verify model files, preload every checkpoint onto the device, warm up each workflow."""
        settings = self.project.settings
        used = {m for spec in self.catalog.values() for m in spec.models}
        problems = [p for m in sorted(used, key=lambda m: m.path) if (p := verify_entry(m, settings.models_dir, not settings.skip_hash_check))]
        if problems:
            raise ModelLockError("model files do not match models.lock: " + "; ".join(problems))
        for name in sorted({c for spec in self.catalog.values() for c in spec.checkpoints}):
            started = time.perf_counter()
            self.executor.preload_checkpoint(name)
            log.info("preloaded %s on %s in %.2fs", name, self.executor.device_name(), time.perf_counter() - started)
        for spec in self.catalog.values():
            metrics.WORKFLOW_BATCHABLE.labels(workflow=spec.name).set(1 if spec.batch_plan else 0)
            if settings.warmup:
                self._warm_up(spec)

    def _warm_up(self, spec: WorkflowSpec) -> None:
        values: dict[str, Any] = {}
        for param in spec.params:
            if param.kind == "image":
                values[param.name] = b64(png_bytes(to_pil([[[0.5, 0.5, 0.5]] * 64] * 64)))
        started = time.perf_counter()
        result = self.run(spec.name, [EngineItem(values=values, seed=0, submitted_at=time.time())])[0]
        if not result.ok:
            raise WorkflowError(f"{spec.path}: warm-up run with the graph's own values failed: {result.error}")
        log.info("warmed up %s in %.2fs", spec.name, time.perf_counter() - started)

    # ------------------------------------------------------------ requests

    def run(self, workflow: str, items: list[EngineItem]) -> list[ItemResult]:
        spec = self.catalog[workflow]
        started = time.time()
        prepared: list[Prepared | Exception] = []
        for item in items:
            try:
                prepared.append(self._prepare(spec, item))
            except ComfyBentoError as exc:
                prepared.append(exc)
        ok = [p for p in prepared if isinstance(p, Prepared)]
        try:
            outcomes = self.batcher.run(
                ok, key=lambda p: p.key, can_batch=lambda p: p.can_batch,
                execute=lambda chunk: self._execute(spec, chunk, started), max_batch=spec.max_batch_size,
            )
        finally:
            for p in ok:
                for path in p.files:
                    path.unlink(missing_ok=True)
        by_id = {id(p): o for p, o in zip(ok, outcomes, strict=True)}
        results = []
        for entry in prepared:
            outcome = by_id[id(entry)] if isinstance(entry, Prepared) else entry
            results.append(outcome if isinstance(outcome, ItemResult) else self._failure(spec, outcome, entry))
        return results

    def _prepare(self, spec: WorkflowSpec, item: EngineItem) -> Prepared:
        values = dict(item.values)
        files = []
        for param in spec.params:
            if param.kind == "image":
                if not values.get(param.name):
                    raise InvalidRequest(f"field '{param.name}': an image is required")
                path = self._store_image(param.name, values[param.name])
                files.append(path)
                values[param.name] = path.name
        graph = bind(spec.graph, spec.params, values, item.seed)
        texts = {p.role: str(values.get(p.name, p.default)) for p in spec.params if p.role in ("prompt", "negative_prompt")}
        sampler = graph[spec.batch_plan.sampler]["inputs"].get("sampler_name") if spec.batch_plan else None
        return Prepared(
            item=item, graph=graph, seed=item.seed, texts=texts,
            key=shape_key(spec.params, values, BATCHABLE_ROLES),
            can_batch=spec.batch_plan is not None and sampler in DETERMINISTIC_SAMPLERS,
            files=files,
        )

    def _store_image(self, field_name: str, data: str) -> Path:
        try:
            raw = decode_b64(data)
        except ValueError:
            raise InvalidRequest(f"field '{field_name}': not base64 image data") from None
        path = self.input_dir / f"cb_{hashlib.sha256(raw).hexdigest()[:24]}.png"
        self.input_dir.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        return path

    def _execute(self, spec: WorkflowSpec, chunk: list[Prepared], started: float) -> list[ItemResult]:
        exec_start = time.perf_counter()
        if len(chunk) == 1 or spec.batch_plan is None:
            graph, mode = chunk[0].graph, "single"
        else:
            graph = merge_graph(spec.batch_plan, chunk[0].graph, [p.texts for p in chunk], [int(p.seed or 0) for p in chunk])
            mode = "batched"
        images = self.executor.run(graph, spec.field_names)
        elapsed = time.perf_counter() - exec_start
        metrics.EXECUTIONS.labels(workflow=spec.name, mode=mode).inc()
        metrics.BATCH_SIZE.labels(workflow=spec.name).observe(len(chunk))
        metrics.EXECUTION_TIME.labels(workflow=spec.name).observe(elapsed)
        results = []
        for index, p in enumerate(chunk):
            queue_s = max(0.0, started - p.item.submitted_at) if p.item.submitted_at else 0.0
            metrics.QUEUE_WAIT.labels(workflow=spec.name).observe(queue_s)
            results.append(ItemResult(
                ok=True, seed=p.seed, images=self._images(spec, images, index, len(chunk)),
                queue_ms=queue_s * 1000, execution_ms=elapsed * 1000, batch_size=len(chunk),
            ))
        return results

    @staticmethod
    def _images(spec: WorkflowSpec, images: dict[str, Any], index: int, n: int) -> list[ImageOutput]:
        out = []
        batched = spec.batch_plan.batched_outputs if spec.batch_plan else frozenset()
        for output in spec.outputs:
            tensor = images.get(output.node_id)
            if tensor is None:
                continue
            if n > 1 and output.node_id in batched:
                per = tensor.shape[0] // n
                tensor = tensor[index * per:(index + 1) * per]
            for i, image in enumerate(tensor):
                pil = to_pil(image.numpy())
                out.append(ImageOutput(output=output.name, node_id=output.node_id, index=i,
                                       width=pil.width, height=pil.height, png=b64(png_bytes(pil))))
        return out

    @staticmethod
    def _failure(spec: WorkflowSpec, exc: Exception, prepared: Any) -> ItemResult:
        seed = prepared.seed if isinstance(prepared, Prepared) else None
        kind = "internal"
        extra: dict[str, Any] = {}
        if isinstance(exc, InvalidRequest):
            kind = "invalid"
        elif isinstance(exc, OutOfMemory):
            kind = "oom"
        elif isinstance(exc, NodeExecutionError):
            kind = "node"
            extra = {"node_id": exc.node_id, "class_type": exc.class_type}
        elif isinstance(exc, WorkflowError):
            kind = "workflow"
        if kind == "internal" and not isinstance(exc, ComfyBentoError):
            log.exception("workflow %s: unexpected error", spec.name, exc_info=exc)
            message = "internal error (see the server log)"
        else:
            message = str(exc)
        metrics.ITEM_ERRORS.labels(workflow=spec.name, kind=kind).inc()
        status = int(getattr(exc, "error_code", 500))
        return ItemResult(ok=False, seed=seed, status=status, error=message, error_kind=kind, **extra)  # type: ignore[arg-type]
