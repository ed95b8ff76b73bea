"""The entry service's OpenAPI document at /docs.json, a Swagger UI page at /docs, and the playground at /.

BentoML generates the document from the endpoints' pydantic models and the
mounted jobs app. It declares OpenAPI 3.0.2 but carries 3.1 habits
(`anyOf: [{...}, {type: null}]`, `type: file`), infra routes without an
operationId and no version. `fix_openapi` makes it a valid 3.0 document
(checked by openapi-spec-validator in the tests), adds the typed error answers
every route can give, and types each workflow's batch-job items.

It also leaves nothing untyped for client generators (clients/typescript is
generated from this document): short camelCase operation ids (`txt2img`,
`submitJob`), each workflow's request body as a named schema, a typed body for
every answer (JSON, or binary for files) and typed job fan-outs. Each workflow's
answer (`Txt2imgResult`) and job submission (`Txt2imgJobSubmit`) is a whole
schema, not an allOf narrowing a generic one, and every binary answer also lists
application/octet-stream: openapi-python-client generates every operation and
answer from it (tests/e2e/test_python_client.py).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

from comfybento import __version__
from comfybento.engine.messages import OutputFormat
from comfybento.errors import ERROR_KINDS
from comfybento.front import stream
from comfybento.front.jobs.api_models import ItemError
from comfybento.front.jobs.records import ItemState, JobState
from comfybento.front.playground import is_playground_path, playground_file
from comfybento.workflows.catalog import WorkflowSpec
from comfybento.workflows.params import OutputSpec
from comfybento.workflows.schema import PRESET_FIELD, OutputItem, build_input_model
from comfybento.workflows.versions import Alias

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "error_kind", "request_id"],  # the framework's own refusals too (front/error_shape.py)
    "properties": {
        "error": {"type": "string", "description": "What was wrong: the field, node, file, model or limit."},
        "error_kind": {"type": "string", "enum": list(ERROR_KINDS), "description": "The kind of error: the same kinds in every answer, event and job record."},
        "request_id": {"type": "string", "description": "Also in the X-Request-ID header and the server's log."},
        "node_id": {"type": "string", "description": "For node errors: the node that failed."},
        "class_type": {"type": "string", "description": "For node errors: that node's class."},
        "detail": {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"},
                   "description": "For validation errors: one entry per field."},
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/ItemError"},
                  "description": "For a refused batch job: one entry per bad item."},
    },
}
FIELD_ERROR_SCHEMA = {
    "type": "object",
    "required": ["loc", "msg", "type"],
    "properties": {
        "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}, "description": "Path to the field."},
        "msg": {"type": "string", "description": "What is wrong with it."},
        "type": {"type": "string", "description": "The kind of error (pydantic's error type)."},
    },
}
ERRORS = {
    "400": "The body is malformed or a field is invalid (`detail` lists each field).",
    "401": "No API key, or a wrong one (Authorization: Bearer <key>).",
    "413": "Over a limit (pixels, images, steps, upload or body size): the message names it.",
    "422": "A value is not acceptable (e.g. an upload that is not a readable image).",
    "429": "The API key is over its rate limit or quota (see Retry-After).",
    "503": "The service is at capacity or restarting (see Retry-After).",
    "500": "Something failed on the server: a node at run time (`node_id`, `class_type`), or an internal error (see the log).",
}
DeliveryState = Literal["pending", "delivered", "failed"]  # front/jobs/records.py's WebhookDelivery.state
INFRA = {"/healthz", "/livez", "/readyz", "/metrics"}
SERVICE_PREFIX = "comfybento__"  # BentoML's operation ids: <service name>__<api name>
OPERATION_IDS = {  # the jobs API's routes (FastAPI would name them `submit_jobs_post` ...)
    ("post", "/jobs"): "submitJob",
    ("post", "/jobs/estimate"): "estimateJob",
    ("get", "/jobs"): "listJobs",
    ("get", "/jobs/{job_id}"): "getJob",
    ("get", "/jobs/{job_id}/results"): "getJobResults",
    ("post", "/jobs/{job_id}/cancel"): "cancelJob",
    ("post", "/jobs/{job_id}/retry"): "retryJob",
    ("get", "/usage"): "getUsage",
    ("get", "/jobs/{job_id}/archive"): "getJobArchive",
    ("get", "/jobs/{job_id}/files/{name}"): "getJobFile",
    ("get", "/outputs/{folder}/{name}"): "getOutputFile",
    ("get", "/jobs/{job_id}/events"): "getJobEvents",
}
OCTET = "application/octet-stream"
BINARY = {"/jobs/{job_id}/archive": ("application/zip", "The zip of every output of the job."),
          "/jobs/{job_id}/files/{name}": (OCTET, "The file (its content type is in the Content-Type header)."),
          "/outputs/{folder}/{name}": (OCTET, "The file (its content type is in the Content-Type header).")}
IMAGE_MEDIA = tuple(f"image/{f}" for f in get_args(OutputFormat))  # output_format: png, webp, jpeg

REQUEST_STREAM = ("Server-Sent Events, each `event: <type>` and `data: <JSON>` (the schema is the data; its `event` repeats the "
                  "type): queued, started, progress (step i/N), preview (when previews are on), one output per output item as soon "
                  "as it is ready, then exactly one done or failed, last. `: keepalive` comments every 15 s.")
JOB_STREAM = ("Server-Sent Events, each `event: <type>` and `data: <JSON>` (the schema is the data; its `event` repeats the "
              "type): job (the job's status) first, then progress and item events of its items and job again whenever its state or "
              "counts change; the stream ends after a job whose state is terminal. `: keepalive` comments every 15 s.")
DOCS_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="UTF-8"><title>comfybento API</title>
<link rel="stylesheet" href="./static_content/swagger-ui.css" /></head>
<body><div id="swagger-ui"></div>
<script src="./static_content/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "./docs.json", dom_id: "#swagger-ui", deepLinking: true});</script>
</body></html>
"""


def fix_openapi(doc: dict[str, Any], catalog: dict[str, WorkflowSpec], version: str | None = None,
                max_job_items: int | None = None, aliases: Mapping[str, Alias] | None = None) -> dict[str, Any]:
    """A valid OpenAPI 3.0 document from BentoML's (which is left untouched); max_job_items: COMFYBENTO_JOB_MAX_ITEMS;
    aliases: the workflows with versions (workflows/versions.py), at /<name> with their default version's schema."""
    aliases = aliases or {}
    routes = {spec.route: spec for spec in catalog.values()} | {name: a.schema for name, a in aliases.items()}
    doc = json.loads(json.dumps(doc))  # a copy, with the status-code keys as strings
    doc["info"]["version"] = version or __version__
    doc["info"]["description"] = ("ComfyUI workflows as typed endpoints (one per workflow), and batch jobs at /jobs. "
                                  "Every answer carries X-Request-ID.")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorResponse"] = copy.deepcopy(ERROR_SCHEMA)
    schemas["FieldError"] = copy.deepcopy(FIELD_ERROR_SCHEMA)
    schemas["ItemError"] = ItemError.model_json_schema()
    _add_job_items(schemas, catalog)
    used: set[str] = set()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if not isinstance(op, dict):
                continue
            op["operationId"] = _unique(_operation_id(method, path, op), used)
            if path not in INFRA:
                _add_errors(op, method, path)
            if path in ("/jobs", "/jobs/estimate") and method == "post":
                _type_job_submit(op, _job_names(catalog, aliases), schemas, max_job_items)
    _type_bodies(doc["paths"], schemas, routes)
    _type_files(doc["paths"], routes)
    _type_event_streams(doc["paths"], schemas, routes)
    _type_states(schemas)
    _require_answer_fields(doc["paths"], schemas)  # before the answers are copied per workflow: the copies are complete too
    _describe_outputs(doc["paths"], schemas, routes)
    _to_openapi_30(doc)
    return doc


def _operation_id(method: str, path: str, op: dict[str, Any]) -> str:
    """camelCase: `txt2img`, `txt2imgPng`, `submitJob`; what generators name their functions after."""
    raw = OPERATION_IDS.get((method, path)) or op.get("operationId") or f"{method}_{path}"
    raw = raw.removeprefix(SERVICE_PREFIX)
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", raw) if p]
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:]) if parts else "op"


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 2
    while candidate in used:
        candidate, n = f"{name}{n}", n + 1
    used.add(candidate)
    return candidate


def _error_content() -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}


def _add_errors(op: dict[str, Any], method: str, path: str) -> None:
    responses = op.setdefault("responses", {})
    for code, description in ERRORS.items():
        if method == "get" and code in ("400", "413"):
            continue
        if code == "422" and "422" in responses:
            # FastAPI's own answer for a bad query or body (`detail`), or ours naming each bad item (`items`)
            content = responses["422"].get("content", {}).get("application/json", {})
            if "schema" in content:
                content["schema"] = {"anyOf": [content["schema"], {"$ref": "#/components/schemas/ErrorResponse"}]}
            continue
        responses[code] = {"description": description, "content": _error_content()}
    if (method, path) == ("post", "/jobs"):
        responses["409"] = {"description": "The idempotency_key was used for a job with a different request.",
                            "content": _error_content()}
    if "{" in path:
        responses["404"] = {"description": "No such job, file or output.", "content": _error_content()}
    else:
        responses.pop("404", None)  # BentoML declares one on every endpoint; a route without parameters never answers it


def _pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", name) if part)


def _job_item_name(workflow: str) -> str:
    return "".join(part.capitalize() for part in workflow.split("_")) + "JobItem"


def _component(schemas: dict[str, Any], name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """schema as components/schemas/<name> (its title the name), a $ref to it."""
    schemas[name] = {**schema, "title": name}
    return {"$ref": f"#/components/schemas/{name}"}


def _add_job_items(schemas: dict[str, Any], catalog: dict[str, WorkflowSpec]) -> None:
    for name, spec in catalog.items():
        model = build_input_model(name, list(spec.params), spec.encoding, images_as_base64=True, limits=spec.limits,
                                  presets=spec.presets)
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for sub, body in schema.pop("$defs", {}).items():
            schemas.setdefault(sub, body)
        schemas[_job_item_name(name)] = schema


def _job_names(catalog: dict[str, WorkflowSpec], aliases: Mapping[str, Alias]) -> dict[str, list[str]]:
    """Each workflow's names in a job's `workflow`: its own; a version's also <name>/<version>, the alias's default also <name>."""
    names = {name: [name] + ([spec.route] if spec.version is not None else []) for name, spec in catalog.items()}
    for alias_name, alias in aliases.items():
        names[alias.schema.name].append(alias_name)
    return names


def _type_job_submit(op: dict[str, Any], names: dict[str, list[str]], schemas: dict[str, Any],
                     max_items: int | None) -> None:
    """POST /jobs: one submission schema per workflow (`Txt2imgJobSubmit`), chosen by its `workflow` field."""
    content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    base_ref = content.get("schema", {}).get("$ref")
    if not base_ref:
        return
    base = schemas.get(base_ref.rsplit("/", 1)[1], {"type": "object"})
    variants = [_job_variant(name, base, schemas, max_items, accepted) for name, accepted in names.items()]
    content["schema"] = {"oneOf": variants} if len(variants) > 1 else variants[0]


def _job_variant(name: str, base: dict[str, Any], schemas: dict[str, Any], max_items: int | None,
                 accepted: list[str]) -> dict[str, Any]:
    """One workflow's submission: its items, base and fan-out typed like its endpoint's fields, its presets named.

    A whole object, not an allOf narrowing the generic JobSubmit: generators that merge allOf (openapi-python-client)
    cannot merge `items` of any object with `items` of this workflow's.
    Items are a list or a base with a fan-out, never both (front/jobs/service.py `expand`); a fan-out's lists are never empty.
    Each list is at most max_items long; a fan-out whose product is over it is a 413 the schema cannot state.
    """
    item = {"$ref": f"#/components/schemas/{_job_item_name(name)}"}
    fields = schemas[_job_item_name(name)].get("properties", {})
    count = {"maxItems": max_items} if max_items is not None else {}
    fanout = {field: {"type": "array", "items": _without_default(body), "minItems": 1, **count} for field, body in fields.items()}
    preset = (_without_default(fields[PRESET_FIELD]) if PRESET_FIELD in fields
              else {"nullable": True, "enum": [None], "description": "This workflow has no presets."})
    # Both given (a field sent as null is not given: a type without `nullable` refuses null).
    both = {"allOf": [{"required": ["items"], "properties": {"items": {"type": "array"}}},
                      {"anyOf": [{"required": [key], "properties": {key: {"type": "object"}}} for key in ("base", "fanout")]}]}
    variant = copy.deepcopy(base)
    variant.setdefault("properties", {}).update({
        "preset": preset,
        "workflow": {"type": "string", "enum": accepted, "description": "Name of the workflow."},
        # null is "not given", as the server reads it (the `not` below checks only the ones given)
        "items": {"type": "array", "items": item, **count, "nullable": True,
                  "description": f"Items of the '{name}' workflow (not with base/fanout)."},
        "base": {"allOf": [item], "nullable": True, "description": "Parameters shared by every item of a fan-out."},
        "fanout": {"type": "object", "properties": fanout, "additionalProperties": False, "nullable": True,
                   "description": "Field -> values; items are the cartesian product, e.g. prompts x seeds."},
    })
    variant.update({"type": "object", "not": both, "description": f"A batch job of the '{name}' workflow: its items as a list, "
                                                                    "or as a base plus a fan-out."})
    return _component(schemas, f"{_pascal(name)}JobSubmit", variant)


def _type_states(schemas: dict[str, Any]) -> None:
    """The jobs API's `state` fields are plain strings in its models: give them their values."""
    for name, values in (("JobStatus", JobState), ("JobResults", JobState), ("ItemResultOut", ItemState), ("ItemProgress", ItemState),
                         ("DeliveryOut", DeliveryState)):
        state = schemas.get(name, {}).get("properties", {}).get("state")
        if state is not None and state.get("type") == "string":
            state["enum"] = list(get_args(values))


def _require_answer_fields(paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    """A model only ever answered (never sent) has every field in the JSON, null or not: say so, so clients need no checks.

    pydantic marks fields with a default as optional, which is true of a request and not of an answer.
    """
    sent: set[str] = set()
    answered: set[str] = set()
    for item in paths.values():
        for op in item.values():
            if not isinstance(op, dict):
                continue
            _collect_refs([op.get("requestBody"), op.get("parameters")], schemas, sent)
            _collect_refs([r for code, r in op.get("responses", {}).items() if code.startswith("2")], schemas, answered)
    for name in sorted(answered - sent):
        schema = schemas[name]
        if schema.get("type") == "object" and schema.get("properties"):
            schema["required"] = list(schema["properties"])


def _collect_refs(node: Any, schemas: dict[str, Any], found: set[str]) -> None:
    """Every component schema `node` refers to, directly or through others."""
    if isinstance(node, list):
        for child in node:
            _collect_refs(child, schemas, found)
    elif isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            if name not in found and name in schemas:
                found.add(name)
                _collect_refs(schemas[name], schemas, found)
        for value in node.values():
            _collect_refs(value, schemas, found)


def _without_default(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in schema.items() if k not in ("default", "title")}


def _type_bodies(paths: dict[str, Any], schemas: dict[str, Any], catalog: dict[str, WorkflowSpec]) -> None:
    """Name each workflow's request body, type the job submit answer and the infra answers.

    A body is required only when a field is: one with a default for every field may be left out (`curl -X POST /txt2img`).
    """
    for name in catalog:
        for path, item in paths.items():
            op = item.get("post")
            if op is None or not (path == f"/{name}" or path.startswith(f"/{name}/")):
                continue
            body = op.get("requestBody")
            if body is None:
                continue
            body["required"] = any(c.get("schema", {}).get("required") for c in body.get("content", {}).values())
            for content in body.get("content", {}).values():
                title = content.get("schema", {}).get("title")
                if title and schemas.get(title) == content["schema"]:
                    content["schema"] = {"$ref": f"#/components/schemas/{title}"}
    submit = paths.get("/jobs", {}).get("post", {}).get("responses", {})
    if "JobStatus" in schemas and "202" in submit:
        status = {"application/json": {"schema": {"$ref": "#/components/schemas/JobStatus"}}}
        submit["202"] = {"description": "The job is queued: its status.", "content": status}
        submit["200"] = {"description": "A job with this idempotency_key was submitted before: its status.", "content": status}
    for path in INFRA:
        ok = paths.get(path, {}).get("get", {}).get("responses", {}).get("200")
        if ok is not None and "content" not in ok:
            ok["content"] = {"text/plain": {"schema": {"type": "string"}}}


def _type_files(paths: dict[str, Any], catalog: dict[str, WorkflowSpec]) -> None:
    """Every answer that is an output's bytes lists the media types it can have (an image's follows output_format)."""
    served: set[str] = set()
    for name, spec in catalog.items():
        for out in spec.outputs:
            media = _media_types(out.kind, out.media_type)
            served.update(media)
            _binary_answer(paths, f"/{name}/{out.name}", "post", media)
        if any(o.kind == "image" for o in spec.outputs):
            _binary_answer(paths, f"/{name}/png", "post", list(IMAGE_MEDIA))
    for path, (fixed, description) in BINARY.items():
        _binary_answer(paths, path, "get", [fixed] if fixed != OCTET else sorted(served | {OCTET}), description)


def _media_types(kind: str, media_type: str | None) -> list[str]:
    """An output's media types: its node's own, an image's three formats, or any (a file's type follows its name)."""
    if media_type is not None:
        return [media_type]
    return list(IMAGE_MEDIA) if kind == "image" else ["*/*"]


def _binary_answer(paths: dict[str, Any], path: str, method: str, media: list[str], description: str | None = None) -> None:
    ok = paths.get(path, {}).get(method, {}).get("responses", {}).get("200")
    if ok is None:
        return
    # Also application/octet-stream, last: the one binary type generators such as openapi-python-client read as bytes
    # (they drop an answer whose media types are all unknown to them); Content-Type names the bytes' own type.
    ok["content"] = {m: {"schema": {"type": "string", "format": "binary"}} for m in dict.fromkeys([*media, OCTET])}
    if description is not None:
        ok["description"] = description


def _type_event_streams(paths: dict[str, Any], schemas: dict[str, Any], catalog: dict[str, WorkflowSpec]) -> None:
    """The SSE answers (front/stream.py): one schema per event (a frame's data), as a oneOf discriminated by `event`."""
    streams = [(f"/{name}/stream", "post", stream.REQUEST_EVENTS, REQUEST_STREAM) for name in catalog]
    streams.append(("/jobs/{job_id}/events", "get", stream.JOB_EVENTS, JOB_STREAM))
    for path, method, adapter, description in streams:
        ok = paths.get(path, {}).get(method, {}).setdefault("responses", {}).get("200")
        if ok is None:
            continue
        schema = copy.deepcopy(adapter.json_schema(ref_template="#/components/schemas/{model}"))
        for sub, body in schema.pop("$defs", {}).items():
            schemas.setdefault(sub, body)
        ok.update(description=description, content={stream.MEDIA_TYPE: {"schema": schema}})


def _describe_outputs(paths: dict[str, Any], schemas: dict[str, Any], catalog: dict[str, WorkflowSpec]) -> None:
    """Each workflow's JSON answer is its own schema (`Txt2imgResult`) whose `outputs` are the outputs it can hold
    (`Txt2imgSaveImageOutput`: an OutputItem with its name, node id, kind and media type as enums).

    Whole schemas, not allOf narrowings of the generic answer: generators that merge allOf (openapi-python-client)
    cannot merge a list of OutputItem with a list of these.
    """
    for name, spec in catalog.items():
        ok = paths.get(f"/{name}", {}).get("post", {}).get("responses", {}).get("200", {})
        content = ok.get("content", {}).get("application/json")
        if content is None or "schema" not in content:
            continue
        variants, described = [], []
        for out in spec.outputs:
            media = out.media_type or ("image/png, image/webp or image/jpeg (output_format)" if out.kind == "image" else "from the file")
            description = (f"Output '{out.name}': node {out.node_id} ({out.class_type}), {out.kind}, {media}; "
                           f"its bytes alone: POST /{name}/{out.name}.")
            variant = _output_variant(schemas.get("OutputItem") or OutputItem.model_json_schema(), out, description)
            variants.append(_component(schemas, f"{_pascal(name)}{_pascal(out.name)}Output", variant))
            described.append(description)
        title = content["schema"].get("title")
        # BentoML inlines the answer without its nullable fields (a seedless workflow's `seed` is null): use the model's own
        answer = copy.deepcopy(schemas[title] if title in schemas else content["schema"])
        outputs = answer["properties"]["outputs"]
        outputs["items"] = {"oneOf": variants} if len(variants) > 1 else variants[0]
        content["schema"] = _component(schemas, f"{_pascal(name)}Result", answer)  # <Op>Response: generators' own names
        ok["description"] = "Every output: " + "; ".join(described)


def _output_variant(item: dict[str, Any], out: OutputSpec, description: str) -> dict[str, Any]:
    """The generic output item with this output's name, node id, kind and media type (when fixed) as one-value enums."""
    schema = copy.deepcopy(item)
    props = schema["properties"]
    for field, value in (("name", out.name), ("node_id", out.node_id), ("kind", out.kind), ("media_type", out.media_type)):
        if value is not None:
            props[field] = {"type": "string", "enum": [value], "description": props[field]["description"]}
    return {**schema, "description": description}


def _to_openapi_30(node: Any) -> None:
    """In place: `anyOf [X, null]` as X + nullable (null in its enum), `type: file` as a binary string, `const` as an enum,
    BentoML's keyword as x-."""
    if isinstance(node, list):
        for child in node:
            _to_openapi_30(child)
        return
    if not isinstance(node, dict):
        return
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            del node[key]
            if len(rest) == 1:
                merged = copy.deepcopy(rest[0])
                if "$ref" in merged:
                    merged = {"allOf": [merged]}
                node.update({k: v for k, v in merged.items() if k not in node})
            else:
                node[key] = rest
            node["nullable"] = True
    if node.get("type") == "null":
        node.pop("type")
        node["nullable"] = True
    if node.get("type") == "file":
        node["type"], node["format"] = "string", "binary"
    if "const" in node:  # 3.1 only: a one-value enum
        node["enum"] = [node.pop("const")]
    if "content_type" in node and isinstance(node["content_type"], str):
        node["x-content-type"] = node.pop("content_type")
    if node.get("nullable") is True and isinstance(node.get("enum"), list) and None not in node["enum"]:
        node["enum"].append(None)  # 3.0.3: `nullable` does not widen an enum; null must be one of its values
    for value in node.values():
        _to_openapi_30(value)


class OpenAPIMiddleware:
    """Serves the fixed document at /docs.json, a Swagger UI page at /docs and the playground at / (no API key needed)."""

    def __init__(self, app: Any, build: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.build = build
        self._body: bytes | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        if path == "/docs.json":
            if self._body is None:
                self._body = json.dumps(self.build()).encode()
            body, media = self._body, "application/json"
        elif path in ("/docs", "/docs/"):
            body, media = DOCS_PAGE.replace("./", "/").encode(), "text/html; charset=utf-8"
        elif is_playground_path(path):
            body, media = playground_file(path)
        else:
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", media.encode()), (b"content-length", str(len(body)).encode()),
                                (b"cache-control", b"no-cache")]})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})
