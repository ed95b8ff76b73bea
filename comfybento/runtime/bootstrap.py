"""Set up ComfyUI's process-wide state once: import path, arguments, folders, nodes.

ComfyUI parses arguments when `comfy.cli_args` is imported, builds its folder
table in `folder_paths` at import, and probes the device when
`comfy.model_management` is imported. `bootstrap()` does those imports in
the right order with our settings, and is the only place that does.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfybento.config import Settings, find_comfyui_root
from comfybento.errors import ConfigError
from comfybento.runtime.server_stub import PromptServerStandIn
from comfybento.workflows.batchplan import original_node_id

PREVIEW_EVERY_S = 0.25  # at most four previews a second per execution (the last step always has one)

log = logging.getLogger(__name__)

_lock = threading.Lock()
_runtime: ComfyRuntime | None = None
_previews = {"on": False}


@dataclass(frozen=True)
class ComfyRuntime:
    root: Path
    device: str
    server: PromptServerStandIn
    cpu_threads: int
    # ComfyUI's input folder (process-wide: set by the first bootstrap); uploads are stored there.
    input_dir: Path
    # ComfyUI's own node modules (comfy_extras/*.py) that failed to import, as ComfyUI reports them.
    import_failed: tuple[str, ...] = ()
    # ComfyUI's input, output and temp folders (an unmatched graph's own folder lies in each).
    folders: tuple[Path, ...] = ()


def bootstrap(settings: Settings) -> ComfyRuntime:
    """Import and configure ComfyUI once; later calls return the same runtime."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = _bootstrap(settings)
        _set_previews(settings.previews)
        return _runtime


def _set_previews(mode: str) -> None:
    """COMFYBENTO_PREVIEWS: "latent2rgb" makes ComfyUI's sampler callback hand the progress hook a preview of the first
    latent (read at each sampling); "off" none."""
    from comfy.cli_args import LatentPreviewMethod, args

    args.preview_method = LatentPreviewMethod.Latent2RGB if mode == "latent2rgb" else LatentPreviewMethod.NoPreviews
    _previews["on"] = mode != "off"


def _bootstrap(settings: Settings) -> ComfyRuntime:
    root = find_comfyui_root(settings)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    # ComfyUI's nodes.py puts comfy/ (which has a utils.py) first on sys.path; import the
    # root's utils package before that happens, as ComfyUI's main.py does.
    importlib.import_module("utils.install_util")
    _configure_args(settings)
    prepare_torchvision()
    _configure_folders(settings, root)
    import comfy.model_management as mm  # probes the device, after args are set

    server = _install_server_stub()
    _install_progress_hook(server)
    import_failed = _load_nodes()
    from comfybento.runtime import nodes as our_nodes
    from comfybento.runtime import tiny_model

    our_nodes.register()
    tiny_model.register_tiny_config()
    device = str(mm.get_torch_device())
    log.info("ComfyUI %s from %s on %s", comfy_version(), root, device)
    return ComfyRuntime(
        root=root,
        device=device,
        server=server,
        cpu_threads=settings.cpu_threads,
        input_dir=settings.work_dir / "input",
        import_failed=import_failed,
        folders=tuple(settings.work_dir / sub for sub in ("input", "output", "temp")),
    )


# torchvision's operator declarations made here (kept alive: a Library's definitions die with it).
_torchvision_ops: Any = None


def prepare_torchvision() -> None:
    """Let torchvision import on torch's CPU build, where its C++ operators cannot load.

    PyPI's torchvision 0.28.0, the release for torch 2.13, is built against CUDA torch:
    its `_C` extension links libtorch_cuda, which the CPU build lacks. torchvision
    copes with that (`torchvision.extension._has_ops()` is False and its operators
    raise a clear error), except that its fake-kernel registration for `nms`/`qnms`
    needs those operators to exist, so `import torchvision` itself fails
    ("operator torchvision::nms does not exist", pytorch/vision#9337). Declaring
    the two schemas, with no kernel, lets its pure-PyTorch parts (transforms,
    models: all that ComfyUI and spandrel use) import. With CUDA torch the
    extension loads and nothing is declared.
    """
    global _torchvision_ops
    if _torchvision_ops is not None or "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("torchvision is not installed (ComfyUI imports it): run ./scripts/setup, which installs requirements.txt")
    import torch

    extension = Path(next(iter(spec.submodule_search_locations))) / "_C.so"
    try:
        torch.ops.load_library(str(extension))
        return
    except OSError as exc:
        log.info("torchvision's C++ operators are unavailable (%s); its Python parts still import", exc)
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_ops = lib


def _configure_args(settings: Settings) -> None:
    import comfy.options

    comfy.options.enable_args_parsing(False)  # never parse the host process's argv
    from comfy.cli_args import LatentPreviewMethod, args

    _choose_cuda_allocator(settings)
    import torch

    args.cpu = settings.force_cpu or not torch.cuda.is_available()
    torch.set_num_threads(settings.cpu_threads)
    args.preview_method = LatentPreviewMethod.NoPreviews  # previews: _set_previews
    args.disable_auto_launch = True
    args.dont_print_server = True


def _choose_cuda_allocator(settings: Settings) -> None:
    """Use the CUDA allocator stock ComfyUI chooses (cudaMallocAsync where the GPU supports it).

    ComfyUI's own `cuda_malloc` module decides and sets PYTORCH_CUDA_ALLOC_CONF;
    it must run before torch is first imported, which is why the arbiter and
    the front never import torch and the engine bootstraps first.
    """
    if settings.force_cpu:
        return
    if "torch" in sys.modules:
        log.warning("torch was imported before ComfyUI's bootstrap: the CUDA allocator cannot be chosen")
        return
    importlib.import_module("cuda_malloc")
    log.info("PYTORCH_CUDA_ALLOC_CONF=%s", os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""))


def _configure_folders(settings: Settings, root: Path) -> None:
    import folder_paths

    comfy_models = Path(folder_paths.models_dir)
    folder_paths.models_dir = str(settings.models_dir)
    for name, (paths, exts) in list(folder_paths.folder_names_and_paths.items()):
        if name == "custom_nodes":
            continue
        moved = []
        for p in paths:
            try:
                moved.append(str(settings.models_dir / Path(p).relative_to(comfy_models)))
            except ValueError:
                moved.append(p)
        folder_paths.folder_names_and_paths[name] = (moved, exts)
    custom = [str(root / "custom_nodes")]
    if settings.custom_nodes_dir.is_dir():
        custom.append(str(settings.custom_nodes_dir))
    folder_paths.folder_names_and_paths["custom_nodes"] = (custom, set())
    for sub, setter in (
        ("input", folder_paths.set_input_directory),
        ("output", folder_paths.set_output_directory),
        ("temp", folder_paths.set_temp_directory),
    ):
        path = settings.work_dir / sub
        path.mkdir(parents=True, exist_ok=True)
        setter(str(path))


def _install_server_stub() -> PromptServerStandIn:
    import server

    stand_in = PromptServerStandIn()
    server.PromptServer.instance = stand_in  # type: ignore[assignment]
    return stand_in


def _install_progress_hook(server: PromptServerStandIn) -> None:
    """Sampler steps reach the running request as "progress" events, and previews (when on) as "preview" events of
    JPEG bytes, at most one per PREVIEW_EVERY_S; tqdm bars stay out of the log."""
    import comfy.model_management as mm
    import comfy.utils
    from comfy_execution.utils import get_executing_context

    last = {"at": 0.0}

    def hook(value: int, total: int, preview_image: Any, prompt_id: Any = None, node_id: Any = None) -> None:
        mm.throw_exception_if_processing_interrupted()
        if node_id is None:  # a sampler's ProgressBar(steps) names no node: the node executing now (as ComfyUI's own hook)
            context = get_executing_context()
            node_id = context.node_id if context is not None else server.last_node_id
        node = None if node_id is None else original_node_id(str(node_id))  # a merged batch's copy: the workflow's id
        server.send_sync("progress", {"value": int(value), "max": int(total), "node": node})
        now = time.monotonic()
        if _previews["on"] and preview_image is not None and (now - last["at"] >= PREVIEW_EVERY_S or value >= total):
            last["at"] = now
            server.send_sync("preview", {"data": preview_jpeg(preview_image), "media_type": "image/jpeg"})

    comfy.utils.set_progress_bar_global_hook(hook)
    comfy.utils.set_progress_bar_enabled(False)


def preview_jpeg(preview: Any) -> bytes:
    """ComfyUI's preview ("JPEG" | "PNG", a PIL image, its largest side) as JPEG bytes."""
    _, image, max_side = preview
    image = image.convert("RGB")
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()


def _load_nodes() -> tuple[str, ...]:
    """Load ComfyUI's extra and custom nodes; returns the comfy_extras files that failed to import."""
    import nodes

    failed = run_coroutine(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    if failed:
        log.warning("ComfyUI node modules that failed to import: %s", ", ".join(failed))
    return tuple(failed or ())


def run_coroutine(coro: Any) -> Any:
    """Run a ComfyUI coroutine to completion, also from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name="comfy-coroutine")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def comfy_version() -> str:
    try:
        import comfyui_version

        return str(comfyui_version.__version__)
    except ImportError:
        return "unknown"
