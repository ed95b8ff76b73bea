"""Every workflow in the workflows folder, loaded, checked and typed at startup."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from comfybento import lifecycle
from comfybento.config import Settings
from comfybento.errors import TooLarge, WorkflowError
from comfybento.limits import Limits
from comfybento.models.lock import ModelEntry, ModelLock
from comfybento.outputs.encoding import Encoding
from comfybento.workflows.batchplan import BatchPlan, plan_batching
from comfybento.workflows.graph import Graph, NodeDefs, check_graph, consumers, is_link, sorted_ids
from comfybento.workflows.limits import check_request_limits
from comfybento.workflows.params import UPLOAD_KINDS, OutputSpec, Param, infer_outputs, infer_params
from comfybento.workflows.schema import PRESET_FIELD, build_input_model
from comfybento.workflows.sidecar import apply_sidecar, load_sidecar
from comfybento.workflows.ui_format import load_workflow_graph

log = logging.getLogger(__name__)

# Request fields every endpoint has (a workflow parameter cannot take these names).
COMMON_FIELDS = ("output_format", "output_quality", "output_delivery")
RESERVED_NAMES = {"jobs", "healthz", "livez", "readyz", "metrics", "docs", "schema", "api", "workflows", "static_content", "playground", "usage",
                  # ComfyUI's own routes (front/compat/comfyui/)
                  "prompt", "queue", "interrupt", "history", "view", "upload", "object_info", "system_stats", "free", "embeddings",
                  "extensions", "models", "ws",
                  # ComfyUI's editor (front/editor.py) and the routes it calls (front/compat/comfyui/editor_routes.py)
                  "comfy", "users", "settings", "userdata", "v2", "experiment", "view_metadata", "features", "i18n",
                  "workflow_templates", "global_subgraphs",
                  # the OpenAI Images API (front/compat/openai_images/)
                  "v1"}
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
VERSION_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,31}$")
VERSIONS_FILE = "versions.yaml"  # in a folder of versions: which one /<name> serves (workflows/versions.py)
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf", ".pt2")

# Inputs of stock loader nodes -> the models folder they read from.
LOADER_FOLDERS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("CheckpointLoader", "ckpt_name"): "checkpoints",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
    ("unCLIPCheckpointLoader", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("VAELoader", "vae_name"): "vae",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("DiffControlNetLoader", "control_net_name"): "controlnet",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("StyleModelLoader", "style_model_name"): "style_models",
}


@dataclass(frozen=True)
class ModelChoice:
    """A request field whose value is a model file: one of `entries`, the models.lock entries of `folder`."""

    param: str
    folder: str
    entries: tuple[ModelEntry, ...]
    # The hosts a model by URL may come from (a sidecar's `urls:`; (): any public host); None: models.lock names only.
    url_hosts: tuple[str, ...] | None = None

    def entry(self, filename: str) -> ModelEntry | None:
        return next((e for e in self.entries if e.filename == filename), None)


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    path: Path
    graph: Graph
    params: tuple[Param, ...]
    outputs: tuple[OutputSpec, ...]
    input_model: type[BaseModel]
    models: tuple[ModelEntry, ...]
    max_batch_size: int
    max_latency_ms: int
    batch_plan: BatchPlan | None
    batch_reason: str
    encoding: Encoding
    limits: Limits
    # Request fields that choose a model file (a sidecar exposing a loader input): models.lock entries only.
    model_choices: tuple[ModelChoice, ...] = ()
    # The sidecar's presets: name -> request field values (checked at startup), chosen with the `preset` field.
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A version of a versioned workflow (workflows/<family>/<version>.json, workflows/versions.py): name is
    # "<family>_<version>", served at /<family>/<version>; None for a flat workflows/<name>.json.
    family: str | None = None
    version: str | None = None

    @property
    def route(self) -> str:
        """Its endpoint's path, without the leading slash: `txt2img`, or `txt2img/v1` for a version."""
        return f"{self.family}/{self.version}" if self.family is not None else self.name

    @property
    def checkpoints(self) -> list[str]:
        return [m.filename for m in self.models if m.folder == "checkpoints"]

    @property
    def field_names(self) -> dict[tuple[str, str], str]:
        return {(p.node_id, p.input_name): p.name for p in self.params}


def model_references(graph: Graph) -> list[tuple[str, str, str | None, str]]:
    """(node id, input name, folder or None, file name) for every model file a graph names."""
    refs = []
    for node_id in sorted_ids(graph):
        node = graph[node_id]
        for input_name, value in node["inputs"].items():
            if is_link(value) or not isinstance(value, str):
                continue
            folder = LOADER_FOLDERS.get((node["class_type"], input_name))
            if folder is not None or value.lower().endswith(MODEL_EXTENSIONS):
                refs.append((node_id, input_name, folder, value))
    return refs


def check_models(where: str, graph: Graph, lock: ModelLock) -> tuple[ModelEntry, ...]:
    """Every model file the graph names must be in models.lock (the engine checks the files themselves)."""
    entries = []
    for node_id, input_name, folder, filename in model_references(graph):
        label = f"{where}: node {node_id} ({graph[node_id]['class_type']}) input '{input_name}'"
        entry = lock.find(folder, filename)
        if entry is None:
            raise WorkflowError(
                f"{label}: model '{filename}' is not in models.lock; add an entry with its path "
                f"({folder or '<folder>'}/{filename}), size, sha256 and source"
            )
        entries.append(entry)
    return tuple(dict.fromkeys(entries))


def _model_folder(where: str, graph: Graph, param: Param) -> str | None:
    """The models folder a parameter names a file of: its own loader input, or a loader input its node feeds."""
    node = graph[param.node_id]
    own = LOADER_FOLDERS.get((node["class_type"], param.input_name))
    if own is not None:
        return own
    fed = {f for consumer, input_name in consumers(graph, param.node_id)
           if (f := LOADER_FOLDERS.get((graph[consumer]["class_type"], input_name))) is not None}
    if len(fed) > 1:
        raise WorkflowError(f"{where}: parameter '{param.name}' (node {param.node_id}) feeds model inputs of different "
                            f"folders {sorted(fed)}; give each its own input node")
    return next(iter(fed), None)


def restrict_model_params(where: str, graph: Graph, params: tuple[Param, ...], lock: ModelLock,
                          url_hosts: tuple[str, ...] = ()) -> tuple[tuple[Param, ...], tuple[ModelChoice, ...]]:
    """Every parameter that names a model file becomes an enum of the models.lock entries of its folder, and nothing else.

    Its default is its own value if that is one of them (a sidecar's `default:`), else the graph's value
    (which check_models has found in models.lock). With the sidecar's `urls:` it also takes a model by URL, from
    `url_hosts` (COMFYBENTO_MODEL_URL_HOSTS) or the hosts the sidecar lists.
    """
    out, choices = [], []
    for param in params:
        folder = _model_folder(where, graph, param) if param.kind in ("enum", "string", "any") else None
        if folder is None:
            if param.urls is not False:
                raise WorkflowError(f"{where}: parameter '{param.name}' has `urls:` but is not a model input of a loader "
                                    f"node (one of {sorted({f for f in LOADER_FOLDERS.values()})})")
            out.append(param)
            continue
        hosts = None if param.urls is False else url_hosts if param.urls is True else param.urls
        entries = tuple(sorted((e for e in lock.entries if e.folder == folder), key=lambda e: e.filename))
        names = tuple(e.filename for e in entries)
        default = param.default if param.default in names else graph[param.node_id]["inputs"].get(param.input_name)
        if default not in names:
            raise WorkflowError(f"{where}: parameter '{param.name}' defaults to model '{default}', which is not in "
                                f"models.lock under {folder}/; add it there")
        how = f"One of the {folder}/ models in models.lock" + (
            "" if hosts is None else ", or a safetensors model by URL: {\"url\": ..., \"sha256\": ...} (sha256 optional, "
            "checked when given), downloaded once into the model cache" + (f" from {', '.join(hosts)}" if hosts else ""))
        out.append(replace(param, kind="enum", choices=names, default=default, urls=False if hosts is None else hosts,
                           description=f"{param.description} {how}."))
        choices.append(ModelChoice(param=param.name, folder=folder, entries=entries, url_hosts=hosts))
    return tuple(out), tuple(choices)


def check_name(where: str, name: str) -> None:
    if not NAME_RE.match(name) or name in RESERVED_NAMES:
        raise WorkflowError(
            f"{where}: '{name}' cannot be an endpoint name; use lowercase letters, digits and "
            f"underscores, starting with a letter, and none of {sorted(RESERVED_NAMES)}"
        )


def load_workflow(path: Path, node_defs: NodeDefs, lock: ModelLock, settings: Settings, family: str | None = None) -> WorkflowSpec:
    """`path` as a typed workflow named after its file; with `family`, the version `path.stem` of that workflow."""
    name = path.stem if family is None else f"{family}_{path.stem}"
    where = str(path)
    check_name(where, family or name)
    if family is not None and not VERSION_RE.match(path.stem):
        raise WorkflowError(f"{where}: '{path.stem}' cannot be a version name; use lowercase letters, digits and underscores "
                            "(at most 32), e.g. v1")
    graph = load_workflow_graph(path, node_defs)  # a UI-format file is converted to the API format
    check_graph(where, graph, node_defs)
    models = check_models(where, graph, lock)
    sidecar = load_sidecar(path.with_suffix(".yaml"))
    params = tuple(apply_sidecar(where, sidecar, graph, node_defs, infer_params(where, graph, node_defs)))
    params, model_choices = restrict_model_params(where, graph, params, lock, settings.model_url_hosts)
    clash = sorted({p.name for p in params} & set(COMMON_FIELDS))
    if clash:
        raise WorkflowError(f"{where}: parameter names {clash} are reserved for every endpoint; rename them in the sidecar")
    outputs = tuple(infer_outputs(graph, node_defs))
    if not outputs:
        raise WorkflowError(f"{where}: no output node (SaveImage, SaveWEBM, SaveAudio, PreviewAny, CPackOutput* ...)")
    plan, reason = plan_batching(graph, params) if settings.batching else (None, "batching disabled")
    written = [o for o in outputs if not o.encoded_by_us]
    if plan is not None and written:  # a file made from a merged batch cannot be split between its requests
        plan, reason = None, f"output node {written[0].node_id} ({written[0].class_type}) writes its own file"
    limits = settings.limits.override(sidecar.limits, f"{path.with_suffix('.yaml')}")
    try:
        check_request_limits(name, graph, params, {}, limits)
    except TooLarge as exc:
        raise WorkflowError(f"{where}: the graph's own values are over a limit: {exc}. Lower them in the graph, or raise "
                            f"the limit (COMFYBENTO_MAX_... or `limits:` in {path.with_suffix('.yaml').name})") from None
    input_model = build_input_model(name, list(params), sidecar.encoding, limits=limits, presets=sidecar.presets)
    check_presets(str(path.with_suffix(".yaml")), name, graph, params, limits, input_model, sidecar.presets)
    return WorkflowSpec(
        name=name,
        path=path,
        graph=graph,
        params=params,
        outputs=outputs,
        input_model=input_model,
        models=models,
        max_batch_size=sidecar.max_batch_size or settings.max_batch_size,
        max_latency_ms=sidecar.max_latency_ms or settings.max_latency_ms,
        batch_plan=plan,
        batch_reason=reason,
        encoding=sidecar.encoding,
        limits=limits,
        model_choices=model_choices,
        presets=sidecar.presets,
        family=family,
        version=path.stem if family is not None else None,
    )


def check_presets(where: str, workflow: str, graph: Graph, params: tuple[Param, ...], limits: Limits, model: type[BaseModel],
                  presets: dict[str, dict[str, Any]]) -> None:
    """Fail fast on a preset that names no field, sets an input file, or holds a value out of its field's bounds or the limits."""
    if presets and PRESET_FIELD in {p.name for p in params}:
        raise WorkflowError(f"{where}: a parameter is named '{PRESET_FIELD}', which picks a preset; rename it in `params:`")
    known = set(model.model_fields) - {PRESET_FIELD}
    files = {p.name for p in params if p.kind in UPLOAD_KINDS}
    for preset, values in presets.items():
        label = f"{where}: presets.{preset}"
        unknown = sorted(set(values) - known)
        if unknown:
            raise WorkflowError(f"{label}: {unknown} are not fields of '{workflow}'; its fields: {sorted(known)}")
        if files & set(values):
            raise WorkflowError(f"{label}: {sorted(files & set(values))} are input files; a preset cannot set them")
        try:
            validated = model.model_validate({PRESET_FIELD: preset}).model_dump()
        except ValidationError as exc:
            wrong = [e for e in exc.errors() if e["loc"] and e["loc"][0] in values]
            if wrong:
                shown = "; ".join(f"{e['loc'][0]}: {e['msg']} (got {values[str(e['loc'][0])]!r})" for e in wrong)
                raise WorkflowError(f"{label}: {shown}") from None
            validated = values  # only required input files are missing: the preset's own values are valid
        try:
            check_request_limits(workflow, graph, params, validated, limits)
        except TooLarge as exc:
            raise WorkflowError(f"{label} is over a limit: {exc}") from None


def load_catalog(settings: Settings, node_defs: NodeDefs, lock: ModelLock) -> dict[str, WorkflowSpec]:
    """All workflows, or a WorkflowError naming the first file that cannot be served.

    `<name>.json` is a workflow; a folder `<name>/` of `<version>.json` files with a `versions.yaml` is one workflow in
    several versions, each its own catalog entry (`<name>_<version>`)."""
    folder = settings.workflows_dir
    if not folder.is_dir():
        raise WorkflowError(f"workflows folder {folder} does not exist (set COMFYBENTO_WORKFLOWS)")
    files: list[tuple[Path, str | None]] = [(path, None) for path in sorted(folder.glob("*.json"))]
    files += [(path, sub.name) for sub in sorted(p for p in folder.iterdir() if p.is_dir()) for path in _versions_of(sub)]
    if not files:
        raise WorkflowError(f"{folder} has no *.json workflow; save one from ComfyUI (Save, or Export (API))")
    catalog: dict[str, WorkflowSpec] = {}
    for path, family in files:
        spec = load_workflow(path, node_defs, lock, settings, family)
        # a version's name, or its alias /<family>, is the name of one already loaded (flat files come first)
        taken = catalog.get(spec.name) or (catalog.get(spec.family) if spec.family is not None else None)
        if taken is not None:
            raise WorkflowError(f"{path}: '{spec.name}' is also served from {taken.path}; rename one of them")
        catalog[spec.name] = spec
        mode = "batched" if spec.batch_plan else f"one by one ({spec.batch_reason})"
        # said once, by the arbiter (`bentoml serve`'s own process): each worker loads the same catalog again
        log.log(logging.DEBUG if lifecycle.in_worker() else logging.INFO, "workflow %s: POST /%s, %d params, %d outputs, %s", spec.name, spec.route, len(spec.params), len(spec.outputs), mode)
    return catalog


def _versions_of(sub: Path) -> list[Path]:
    """The version files of a folder of versions; [] for a folder that holds no workflow."""
    files = sorted(sub.glob("*.json"))
    if files and not (sub / VERSIONS_FILE).is_file():
        raise WorkflowError(f"{sub} holds versions of a workflow ({', '.join(f.name for f in files)}) but no {VERSIONS_FILE}; "
                            f"add one naming the version /{sub.name} serves, e.g. `default: {files[0].stem}`")
    if not files and (sub / VERSIONS_FILE).is_file():
        raise WorkflowError(f"{sub / VERSIONS_FILE}: the folder has no <version>.json workflow")
    return files
