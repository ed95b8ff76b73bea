"""The engine: one scheduler in front of ComfyUI's executor, output encoding beside it.

Runs only in the engine service, the one process that imports torch and ComfyUI.

    start()                        bootstrap ComfyUI, check and preload the models, start the loop, warm up
    submit(workflow, item, sink)   prepare the request (engine/prepare.py: bind it into its graph, store its
                                   files, compute its shape key), queue it
    executor thread                scheduler.run_forever(self._execute): one graph per batch
                                   (merged when several requests share it), uint8 images out, and
                                   the files and texts of every other output node
    encoding pool                  each request's share of the outputs (engine/collect.py): images ->
                                   PNG/WebP/JPEG, written files read (then deleted) -> OutputReady..., Done

Each request's sink gets its events: queued, started, progress (sampler steps),
one output per image, file or text as soon as it is ready, then done or failed.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from comfybento import metrics
from comfybento.config import Settings
from comfybento.engine.collect import Collector, Countdown, encode_and_finish, split_outputs
from comfybento.engine.messages import EngineItem, ItemResult
from comfybento.engine.prepare import Prepared, prepare
from comfybento.errors import (
    ERROR_KINDS,
    ComfyBentoError,
    EngineUnavailable,
    InvalidRequest,
    ModelLockError,
    TooLarge,
    WorkflowError,
    describe,
)
from comfybento.models.by_url import UrlModelLimits, UrlModels
from comfybento.models.fetch import transfer_limits
from comfybento.models.first_use import FirstUseCheck
from comfybento.outputs.encoding import png_bytes
from comfybento.runtime.generators import model_generators
from comfybento.scheduling.cost import HeavyRequests, graph_work
from comfybento.scheduling.events import Done, Event, Failed, Preview, Progress
from comfybento.scheduling.policy import OldestFirst
from comfybento.scheduling.scheduler import Job, Scheduler, Stats
from comfybento.workflows.batchplan import merge_graph
from comfybento.workflows.catalog import WorkflowSpec
from comfybento.workflows.free_graph import FREE_GRAPH, FreeGraphs, scratch_folder

log = logging.getLogger(__name__)

Sink = Callable[[Event], None]


class Engine:
    def __init__(self, settings: Settings, catalog: dict[str, WorkflowSpec]) -> None:
        self.settings = settings
        self.catalog = catalog
        self.scheduler: Scheduler[Prepared] = Scheduler(coalesce_max_s=settings.coalesce_ms / 1000, on_abandoned=self._interrupt,
                                                            policy=OldestFirst())
        self.input_dir = settings.work_dir / "input"
        self.comfy_folders: tuple[Path, ...] = ()  # ComfyUI's input, output and temp folders once started
        self.executor: Any = None  # runtime.executor.ComfyExecutor once started
        self._encoders = ThreadPoolExecutor(settings.encode_workers, thread_name_prefix="comfybento-encode")
        self._loop: Future[Any] | None = None
        self._stats = Stats(0.0, 0.0, 0.0, 0, 0, 0.0)
        self._heavy = HeavyRequests()
        self.max_execution_s = 0  # COMFYBENTO_MAX_EXECUTION_S once warmed up (0: none; see _within_budget)
        # Models a request chooses (spec.model_choices) are fetched and hash-checked on their first use.
        self.models = FirstUseCheck(settings.models_dir, settings.fetch_models, not settings.skip_hash_check,
                                    transfer_limits(settings), model_generators())
        # Models a request names by URL (a sidecar's `urls:`), downloaded into the models folder on first use.
        by_url = any(c.url_hosts is not None for spec in catalog.values() for c in spec.model_choices)
        self.url_models = UrlModels(settings.models_dir, UrlModelLimits(
            settings.model_url_max_bytes, settings.model_url_cache_bytes, transfer_limits(settings),
            settings.limits.max_url_redirects)) if by_url else None
        # COMFYBENTO_SUBMITTED_GRAPHS=any: graphs that match no workflow, run alone (workflows/free_graph.py)
        self.free_graphs = FreeGraphs(settings) if settings.runs_unmatched_graphs else None
        self._depth_lock = threading.Lock()
        self._depth_names = set(catalog) | ({FREE_GRAPH} if self.free_graphs is not None else set())
        self._export_queue_depth()
        for name in self._depth_names:  # every error series present at 0 from startup
            for kind in ERROR_KINDS:
                metrics.ITEM_ERRORS.labels(workflow=name, kind=kind)

    # ------------------------------------------------------------ startup

    def start(self) -> None:
        """Bootstrap ComfyUI, make sure models are present and intact, preload them, start the loop, warm up."""
        from comfybento.runtime.bootstrap import bootstrap
        from comfybento.runtime.executor import ComfyExecutor

        runtime = bootstrap(self.settings)
        self.input_dir = runtime.input_dir  # where LoadImage reads (ComfyUI's folder is one per process)
        self.comfy_folders = runtime.folders
        from comfybento.packs.inputs import stage_inputs

        for name in stage_inputs(self.settings.inputs_dir, self.input_dir):
            log.info("input file %s copied from %s into ComfyUI's input folder", name, self.settings.inputs_dir)
        self._check_models()
        self.executor = ComfyExecutor(runtime)
        self._configure_model_cache()
        for name in sorted({c for spec in self.catalog.values() for c in spec.checkpoints}):
            started = time.perf_counter()
            self.executor.preload_checkpoint(name)
            if self.settings.compile:
                self.executor.compile_checkpoint(name)
            log.info("preloaded %s on %s in %.2fs", name, self.executor.device_name(), time.perf_counter() - started)
        self._export_device_memory()
        self._loop = self.executor.start(self.scheduler.run_forever, self._execute)
        for spec in self.catalog.values():
            metrics.WORKFLOW_BATCHABLE.labels(workflow=spec.name).set(1 if spec.batch_plan else 0)
            if self.settings.warmup or self.settings.compile:
                self._warm_up(spec)
        self.max_execution_s = self.settings.max_execution_s  # requests' executions; a warm-up (compiling, too) may take longer

    def _check_models(self) -> None:
        from comfybento.models.fetch import fetch_entry
        from comfybento.models.lock import verify_entry

        settings = self.settings
        used = sorted({m for spec in self.catalog.values() for m in spec.models}, key=lambda m: m.path)
        if settings.fetch_models:
            for entry in used:
                log.info("%s: %s", entry.path, fetch_entry(entry, settings.models_dir, transfer_limits(settings), model_generators()))
        problems = [p for m in used if (p := verify_entry(m, settings.models_dir, not settings.skip_hash_check))]
        if problems:
            raise ModelLockError("model files do not match models.lock: " + "; ".join(problems)
                                 + " (run `python -m comfybento models fetch`)")
        self.models.mark_verified(used)

    def _configure_model_cache(self) -> None:
        """The checkpoint cache: the defaults (preloaded next) pinned, the others a request may choose loaded on demand."""
        entries = {m for spec in self.catalog.values() for m in (*spec.models, *(e for c in spec.model_choices for e in c.entries))}
        sizes = {m.filename: m.size for m in entries if m.folder == "checkpoints"}
        defaults = {c for spec in self.catalog.values() for c in spec.checkpoints}
        budget = self.executor.configure_checkpoints(self.settings.model_cache_bytes, sizes)
        pinned = sum(sizes[c] for c in defaults)
        log.info("model cache: %d bytes (COMFYBENTO_MODEL_CACHE_BYTES), %d of them the default checkpoints", budget, pinned)
        if len(sizes) > len(defaults) and pinned >= budget:
            log.warning("model cache: the default checkpoints take all of its %d bytes; a request choosing another "
                        "checkpoint will fail (raise COMFYBENTO_MODEL_CACHE_BYTES)", budget)

    def _warm_up(self, spec: WorkflowSpec) -> None:
        if any(p.kind in ("file", "video", "audio") for p in spec.params):
            log.info("no warm-up for %s: it takes a file, video or audio upload, which cannot be made up", spec.name)
            return
        grey = png_bytes(_grey_image())
        values: dict[str, Any] = {p.name: grey for p in spec.params if p.kind in ("image", "mask")}
        sizes = sorted({1, spec.max_batch_size}) if self.settings.compile and spec.batch_plan else [1]
        for size in sizes:  # with torch.compile, the largest batch is compiled before ready too
            started = time.perf_counter()
            items = [EngineItem(values=values, seed=i) for i in range(size)]
            result = self.run(spec.name, items)[0]
            if not result.ok:
                raise WorkflowError(f"{spec.path}: warm-up run with the graph's own values failed: {result.error}")
            log.info("warmed up %s (batch %d) in %.2fs", spec.name, size, time.perf_counter() - started)

    def stop(self, drain_s: float) -> None:
        """Finish what is queued for up to drain_s, then fail the rest with 503 and stop the loop."""
        self.scheduler.stop()
        if self._loop is not None:
            try:
                self._loop.result(timeout=drain_s)
            except Exception:  # the drain deadline passed (or the loop died): fail what is left
                failed = self.scheduler.fail_queued(EngineUnavailable("the engine is shutting down; retry"))
                log.warning("drain deadline of %ss passed; %d queued requests failed with 503", drain_s, failed)
            self._export_queue_depth()
        self._encoders.shutdown(wait=True)

    # ------------------------------------------------------------ requests

    def submit(self, workflow: str, item: EngineItem, sink: Sink) -> Job[Prepared] | None:
        """Queue one request (thread-safe). Errors in the request itself go to the sink as Failed."""
        spec = self.catalog.get(workflow)
        if spec is None and workflow == FREE_GRAPH and self.free_graphs is not None:
            try:  # an unmatched submitted graph: checked again here, its models hash-checked on first use; it runs alone
                spec, item = self.free_graphs.runnable(item.values), item.model_copy(update={"values": {}})
                for entry in spec.models:
                    self.models.ensure(entry)
            except Exception as exc:
                sink(Failed(exc))
                return None
        if spec is None:
            sink(Failed(InvalidRequest(f"unknown workflow {workflow!r}; known: {sorted(self.catalog)}")))
            return None
        try:
            prepared, key, can_batch = self._prepare(spec, item)
        except Exception as exc:
            self._finish_sink(spec, [], sink)(Failed(exc))
            return None
        scratch = [root / scratch_folder(spec) for root in self.comfy_folders] if spec.name == FREE_GRAPH else []
        # A job item, or a request far heavier than its workflow's recent ones, waits behind the live ones (scheduler point 4)
        background = self._heavy.is_heavy(spec.name, graph_work(prepared.graph)) or item.background
        job = Job(key=key, payload=prepared, max_batch=spec.max_batch_size, can_batch=can_batch, background=background,
                  sink=self._finish_sink(spec, prepared.files, sink, scratch, prepared.leases))
        self.scheduler.submit(job)
        self._export_queue_depth()
        return job

    def _interrupt(self) -> None:
        """Every caller of the running batch left: stop it at its next step (ComfyUI's interrupt flag)."""
        if self.executor is not None:
            self.executor.interrupt()

    def cancel(self, job: Job[Prepared]) -> None:
        if self.scheduler.cancel(job):
            self._export_queue_depth()

    def run(self, workflow: str, items: list[EngineItem], timeout: float | None = None) -> list[ItemResult]:
        """Submit several requests and wait for all (they may share batches). Not on the executor thread."""
        collectors = [Collector() for _ in items]
        for item, collector in zip(items, collectors, strict=True):
            self.submit(workflow, item, collector)
        return [c.wait(timeout) for c in collectors]

    def stats(self) -> Stats:
        return self.scheduler.stats()

    def _prepare(self, spec: WorkflowSpec, item: EngineItem) -> tuple[Prepared, str, bool]:
        """The request prepared (engine/prepare.py), its shape key, whether it may share a batch."""
        return prepare(spec, item, self.models, self.input_dir, self.executor, self.url_models)

    def _finish_sink(self, spec: WorkflowSpec, files: list[Path], sink: Sink, folders: list[Path] | None = None,
                     leases: list[Callable[[], None]] | None = None) -> Sink:
        """Wraps a request's sink: on its terminal event, delete its files (and folders), give back the models by URL it
        holds (`leases`) and count/log failures once."""

        def wrapped(event: Event) -> None:
            if isinstance(event, (Done, Failed)):
                for path in files:
                    path.unlink(missing_ok=True)
                for folder in folders or ():  # an unmatched graph's own folder, with whatever it wrote
                    shutil.rmtree(folder, ignore_errors=True)
                while leases:
                    leases.pop()()
            if isinstance(event, Failed):
                kind = describe(event.error)["error_kind"]
                if not isinstance(event.error, ComfyBentoError):
                    log.error("workflow %s: unexpected error", spec.name, exc_info=event.error)
                metrics.ITEM_ERRORS.labels(workflow=spec.name, kind=kind).inc()
            sink(event)

        return wrapped

    # ------------------------------------------------------------ executor thread

    def _execute(self, jobs: list[Job[Prepared]]) -> None:
        self._export_stats()
        self._export_queue_depth()  # this batch left the queue
        first = jobs[0].payload
        spec = first.spec
        started_at = time.monotonic()
        queue_s = [max(0.0, started_at - job.arrived) for job in jobs]
        for wait in queue_s:
            metrics.QUEUE_WAIT.labels(workflow=spec.name).observe(wait)
        if len(jobs) == 1 or spec.batch_plan is None:
            graph, mode = first.graph, "single"
        else:
            graph, mode = merge_graph(spec.batch_plan, [j.payload.graph for j in jobs]), "batched"

        def on_progress(event: str, data: dict[str, Any]) -> None:
            if event == "progress":
                step = Progress(int(data.get("value", 0)), int(data.get("max", 0)), data.get("node"))
                for job in jobs:
                    job.emit(step)
            elif event == "preview":  # a preview of the batch's first latent: the first request's own image
                jobs[0].emit(Preview(data["data"], data.get("media_type", "image/jpeg")))

        clock = time.perf_counter()
        executed = self._within_budget(lambda: self.executor.execute(graph, spec.field_names, on_progress))
        elapsed = time.perf_counter() - clock
        metrics.EXECUTIONS.labels(workflow=spec.name, mode=mode).inc()
        metrics.BATCH_SIZE.labels(workflow=spec.name).observe(len(jobs))
        metrics.EXECUTION_TIME.labels(workflow=spec.name).observe(elapsed)
        release = Countdown(len(jobs), executed.folder)
        for index, job in enumerate(jobs):
            timings = {"queue_ms": queue_s[index] * 1000, "execution_ms": elapsed * 1000, "batch_size": len(jobs)}
            self._encoders.submit(encode_and_finish, job, split_outputs(spec, executed, index, len(jobs)), timings, release)
        self._export_stats()
        self._export_device_memory()

    def _within_budget(self, run: Callable[[], Any]) -> Any:
        """Run an execution; past COMFYBENTO_MAX_EXECUTION_S, interrupt it (ComfyUI's flag, checked at each step) and
        fail it with a 413 naming the limit."""
        budget = self.max_execution_s
        if not budget:
            return run()
        over = threading.Event()

        def interrupt() -> None:
            over.set()
            self._interrupt()

        timer = threading.Timer(budget, interrupt)
        timer.daemon = True
        timer.start()
        try:
            return run()
        except Exception as exc:
            if over.is_set():
                metrics.BUDGET_EXCEEDED.inc()
                raise TooLarge(f"the execution ran longer than the limit of {budget} s and was interrupted "
                               "(COMFYBENTO_MAX_EXECUTION_S); ask for fewer steps, pixels or images") from exc
            raise
        finally:
            timer.cancel()

    def _export_stats(self) -> None:
        new, old = self.scheduler.stats(), self._stats
        metrics.EXECUTOR_BUSY.inc(max(0.0, new.busy_s - old.busy_s))
        metrics.ENGINE_BUSY.labels(engine=self.settings.engine_id).inc(max(0.0, new.busy_s - old.busy_s))
        metrics.EXECUTOR_IDLE_WHILE_QUEUED.inc(max(0.0, new.idle_with_work_s - old.idle_with_work_s))
        metrics.QUEUE_NONEMPTY.inc(max(0.0, new.queued_s - old.queued_s))
        metrics.EXECUTOR_COALESCING.inc(max(0.0, new.coalescing_s - old.coalescing_s))
        self._stats = new

    def _export_queue_depth(self) -> None:
        """comfybento_queue_depth: the requests queued (not running) per workflow, 0 for each known one."""
        with self._depth_lock:  # callers race (submits from the route's threads, the executor): the last count wins
            depths = self.scheduler.queued_by(lambda job: job.payload.spec.name)
            self._depth_names.update(depths)
            for name in self._depth_names:
                metrics.QUEUE_DEPTH.labels(workflow=name, engine=self.settings.engine_id).set(depths.get(name, 0))

    def _export_device_memory(self) -> None:
        """comfybento_gpu_memory_{used,total}_bytes of the engine's device (0 and device="cpu" on a CPU engine)."""
        if self.executor is None:
            return
        try:
            device, used, total = self.executor.device_memory()
        except Exception:  # a metric must never fail an execution
            log.exception("reading the device's memory failed")
            return
        metrics.GPU_MEMORY_USED.labels(device=device).set(used)
        metrics.GPU_MEMORY_TOTAL.labels(device=device).set(total)


def _grey_image() -> Any:
    from PIL import Image

    return Image.new("RGB", (64, 64), (128, 128, 128))
