"""Run graphs through ComfyUI's own executor: one per process, kept warm, on one thread.

All ComfyUI work runs on one dedicated thread: ComfyUI's executor and model
management are process-global, and torch's CPU thread pool (OpenMP) is owned
by the thread that uses it; switching threads between calls leaves the old
pool spinning and halves CPU speed. The engine runs its scheduler loop on this
thread (`start`), so `execute` is called there directly.

`execute(graph)` validates the graph with ComfyUI's validator, swaps
image-saving nodes for collectors and checkpoint loaders for pinned ones,
executes, and returns each image output node's images as uint8 tensors on the
CPU, and what every other output node produced (files, texts: runtime/outputs.py).
"""

from __future__ import annotations

import copy
import logging
import shutil
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from comfybento.outputs.media import OUTPUT_IMAGE_CLASSES, Produced
from comfybento.runtime import errors as runtime_errors
from comfybento.runtime.bootstrap import ComfyRuntime, run_coroutine
from comfybento.runtime.errors import FieldNames
from comfybento.workflows.graph import Graph, sorted_ids

log = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], None]
T = TypeVar("T")
THREAD_NAME = "comfy-executor"


def _preload(ckpt_name: str) -> None:
    import comfy.model_management as mm

    from comfybento.runtime.nodes import pinned_checkpoint

    mm.load_models_gpu([pinned_checkpoint(ckpt_name)[0]])


def _compile(ckpt_name: str) -> None:
    """torch.compile the diffusion model through ComfyUI's own model patching (applied at sample time)."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    from comfybento.runtime.nodes import pinned_checkpoint

    set_torch_compile_wrapper(pinned_checkpoint(ckpt_name)[0], backend="inductor")


def prepare_for_execution(graph: Graph) -> Graph:
    """Image-saving nodes -> collectors (slot = node id); CheckpointLoaderSimple -> pinned."""
    prepared = copy.deepcopy(graph)
    for node_id, node in prepared.items():
        class_type = node["class_type"]
        if class_type in OUTPUT_IMAGE_CLASSES:
            node["class_type"] = "ComfyBentoCollectImages"
            node["inputs"] = {"images": node["inputs"].get("images"), "slot": node_id}
        elif class_type == "CheckpointLoaderSimple":
            node["class_type"] = "ComfyBentoPinnedCheckpoint"
    return prepared


@dataclass
class Executed:
    """What one execution produced: image tensors by collector slot (output node id); other outputs in output order."""

    images: dict[str, torch.Tensor]
    produced: list[Produced] = field(default_factory=list)
    folder: Path | None = None  # where `produced` files lie; whoever reads them deletes it


class ComfyExecutor:
    def __init__(self, runtime: ComfyRuntime) -> None:
        self._runtime = runtime
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        self._executor = self.call(self._make_executor)

    def _make_executor(self) -> Any:
        import execution

        torch.set_num_threads(self._runtime.cpu_threads)
        return execution.PromptExecutor(self._runtime.server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn on the executor thread and wait for it."""
        return self._thread.submit(fn, *args).result()

    def start(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run fn (the scheduler loop) on the executor thread without waiting."""
        return self._thread.submit(fn, *args)

    def execute(self, graph: Graph, field_names: FieldNames | None = None, listener: Listener | None = None) -> Executed:
        """Execute a bound graph (on the executor thread): image tensors (B, H, W, C) uint8 by output node, and other outputs."""
        import execution
        import folder_paths

        from comfybento.runtime import nodes as our_nodes
        from comfybento.runtime import outputs

        assert threading.current_thread().name.startswith(THREAD_NAME), "ComfyExecutor.execute runs on the executor thread"
        prompt = prepare_for_execution(graph)
        output_ids = outputs.output_node_ids(prompt, frozenset({"ComfyBentoCollectImages"}))
        outputs.mark_runs(prompt, output_ids)
        prompt_id = uuid.uuid4().hex
        valid = run_coroutine(execution.validate_prompt(prompt_id, prompt, None))
        if not valid[0] or valid[3]:
            raise runtime_errors.from_validation(valid, field_names or {})
        bucket = our_nodes.start_collecting()
        self._runtime.server.set_listener(listener)
        try:
            run_coroutine(self._executor.execute_async(prompt, prompt_id, {}, valid[2]))
        finally:
            our_nodes.stop_collecting()
            self._runtime.server.set_listener(None)
        folder = Path(folder_paths.get_output_directory()).parent / "runs" / prompt_id
        produced = outputs.collect(self._executor.history_result.get("outputs") or {}, sorted_ids(output_ids), folder)
        if not self._executor.success:
            shutil.rmtree(folder, ignore_errors=True)
            raise runtime_errors.from_execution(self._executor.status_messages)
        images = {slot: torch.cat(parts) for slot, parts in bucket.items()}
        return Executed(images, produced, folder if produced else None)

    @staticmethod
    def interrupt() -> None:
        """Make the running execution stop at its next step (from any thread). The next execution clears the flag."""
        import comfy.model_management

        comfy.model_management.interrupt_current_processing(True)

    def preload_checkpoint(self, ckpt_name: str) -> None:
        """Load a checkpoint, pinned in the model cache, and move its diffusion model onto the device now."""
        self.call(_preload, ckpt_name)

    @staticmethod
    def configure_checkpoints(budget_bytes: int, sizes: dict[str, int]) -> int:
        """The checkpoint cache's byte budget (0: derived from the device's memory) and models.lock sizes; returns the budget."""
        from comfybento.runtime.nodes import configure_checkpoints

        return configure_checkpoints(budget_bytes, sizes)

    def compile_checkpoint(self, ckpt_name: str) -> None:
        self.call(_compile, ckpt_name)

    @staticmethod
    def prompt_chunks(ckpt_name: str, text: str) -> int | None:
        from comfybento.runtime.nodes import prompt_chunks

        return prompt_chunks(ckpt_name, text)

    @staticmethod
    def device_name() -> str:
        import comfy.model_management as mm

        return str(mm.get_torch_device())

    @staticmethod
    def device_memory() -> tuple[str, int, int]:
        """(device, bytes in use, total bytes) of the device ComfyUI runs on: CUDA's free/total of the whole device
        (every process on it, as nvidia-smi counts); ("cpu", 0, 0) on a CPU, or another device (0, 0)."""
        import comfy.model_management as mm
        import torch

        device = mm.get_torch_device()
        if device.type != "cuda":
            return str(device), 0, 0
        free, total = torch.cuda.mem_get_info(device)
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}", total - free, total

    def shutdown(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
