"""The entry service's OpenAPI document at /docs.json, and a Swagger UI page at /docs.

BentoML generates the document from the endpoints' pydantic models and the
mounted jobs app. It declares OpenAPI 3.0.2 but carries 3.1 habits
(`anyOf: [{...}, {type: null}]`, `type: file`), infra routes without an
operationId and no version. `fix_openapi` makes it a valid 3.0 document
(checked by openapi-spec-validator in the tests), adds the typed error answers
every route can give, and types each workflow's batch-job items.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

from comfybento import __version__
from comfybento.workflows.catalog import WorkflowSpec
from comfybento.workflows.schema import build_input_model

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "error_kind"],
    "properties": {
        "error": {"type": "string", "description": "What was wrong: the field, node, file, model or limit."},
        "error_kind": {"type": "string", "description": "invalid | too_large | unauthorized | rate_limited | not_found | node | "
                                                         "unavailable | cancelled | workflow | internal"},
        "request_id": {"type": "string", "description": "Also in the X-Request-ID header and the server's log."},
        "node_id": {"type": "string", "description": "For node errors: the node that failed."},
        "class_type": {"type": "string", "description": "For node errors: that node's class."},
        "detail": {"type": "array", "items": {"type": "object"}, "description": "For validation errors: one entry per field."},
    },
}
ERRORS = {
    "400": "The body is malformed or a field is invalid (`detail` lists each field).",
    "401": "No API key, or a wrong one (Authorization: Bearer <key>).",
    "413": "Over a limit (pixels, images, steps, upload or body size): the message names it.",
    "422": "A value is not acceptable (e.g. an upload that is not a readable image).",
    "429": "The API key is over its rate limit or quota (see Retry-After).",
    "503": "The service is at capacity or restarting (see Retry-After).",
}
INFRA = {"/healthz", "/livez", "/readyz", "/metrics"}

DOCS_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="UTF-8"><title>comfybento API</title>
<link rel="stylesheet" href="./static_content/swagger-ui.css" /></head>
<body><div id="swagger-ui"></div>
<script src="./static_content/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "./docs.json", dom_id: "#swagger-ui", deepLinking: true});</script>
</body></html>
"""


def fix_openapi(doc: dict[str, Any], catalog: dict[str, WorkflowSpec], version: str | None = None) -> dict[str, Any]:
    """A valid OpenAPI 3.0 document from BentoML's (which is left untouched)."""
    doc = json.loads(json.dumps(doc))  # a copy, with the status-code keys as strings
    doc["info"]["version"] = version or __version__
    doc["info"]["description"] = ("ComfyUI workflows as typed endpoints (one per workflow), and batch jobs at /jobs. "
                                  "Every answer carries X-Request-ID.")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorResponse"] = ERROR_SCHEMA
    _add_job_items(schemas, catalog)
    used: set[str] = set()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if not isinstance(op, dict):
                continue
            op["operationId"] = _unique(op.get("operationId") or f"{method}_{path}", used)
            if path not in INFRA:
                _add_errors(op, method)
            if path == "/jobs" and method == "post":
                _type_job_submit(op, catalog)
    _describe_outputs(doc["paths"], catalog)
    _to_openapi_30(doc)
    return doc


def _unique(raw: str, used: set[str]) -> str:
    name = re.sub(r"[^0-9A-Za-z_]+", "_", raw).strip("_") or "op"
    candidate, n = name, 2
    while candidate in used:
        candidate, n = f"{name}_{n}", n + 1
    used.add(candidate)
    return candidate


def _add_errors(op: dict[str, Any], method: str) -> None:
    responses = op.setdefault("responses", {})
    for code, description in ERRORS.items():
        if method == "get" and code in ("400", "413"):
            continue
        if code == "422" and "422" in responses:
            continue  # the jobs API's own validation answer (FastAPI's, with `detail`)
        responses[code] = {"description": description, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}


def _job_item_name(workflow: str) -> str:
    return "".join(part.capitalize() for part in workflow.split("_")) + "JobItem"


def _add_job_items(schemas: dict[str, Any], catalog: dict[str, WorkflowSpec]) -> None:
    for name, spec in catalog.items():
        model = build_input_model(name, list(spec.params), spec.encoding, images_as_base64=True, limits=spec.limits)
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for sub, body in schema.pop("$defs", {}).items():
            schemas.setdefault(sub, body)
        schemas[_job_item_name(name)] = schema


def _type_job_submit(op: dict[str, Any], catalog: dict[str, WorkflowSpec]) -> None:
    """POST /jobs: one submission schema per workflow, chosen by its `workflow` field."""
    content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    base_ref = content.get("schema", {}).get("$ref")
    if not base_ref:
        return
    variants = []
    for name in catalog:
        item = {"$ref": f"#/components/schemas/{_job_item_name(name)}"}
        variants.append({"allOf": [{"$ref": base_ref}, {"type": "object", "properties": {
            "workflow": {"type": "string", "enum": [name]},
            "items": {"type": "array", "items": item, "description": f"Items of the '{name}' workflow."},
        }}]})
    content["schema"] = {"oneOf": variants} if len(variants) > 1 else variants[0]


def _describe_outputs(paths: dict[str, Any], catalog: dict[str, WorkflowSpec]) -> None:
    """Each workflow's JSON answer lists its outputs (name, kind, media type) as the `outputs` items it can hold."""
    for name, spec in catalog.items():
        ok = paths.get(f"/{name}", {}).get("post", {}).get("responses", {}).get("200", {})
        content = ok.get("content", {}).get("application/json")
        if content is None or "schema" not in content:
            continue
        variants: list[dict[str, Any]] = []
        for out in spec.outputs:
            media = out.media_type or ("image/png, image/webp or image/jpeg (output_format)" if out.kind == "image" else "from the file")
            props: dict[str, Any] = {"name": {"type": "string", "enum": [out.name]}, "node_id": {"type": "string", "enum": [out.node_id]},
                                     "kind": {"type": "string", "enum": [out.kind]}}
            if out.media_type is not None:
                props["media_type"] = {"type": "string", "enum": [out.media_type]}
            variants.append({"type": "object", "title": out.name, "properties": props,
                             "description": f"Output '{out.name}': node {out.node_id} ({out.class_type}), {out.kind}, {media}; "
                                            f"its bytes alone: POST /{name}/{out.name}."})
        content["schema"] = {"allOf": [content["schema"], {"type": "object", "properties": {
            "outputs": {"type": "array", "items": {"oneOf": variants}}}}]}
        ok["description"] = "Every output: " + "; ".join(v["description"] for v in variants)


def _to_openapi_30(node: Any) -> None:
    """In place: `anyOf [X, null]` as X + nullable, `type: file` as a binary string, BentoML's keyword as x-."""
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
    if "content_type" in node and isinstance(node["content_type"], str):
        node["x-content-type"] = node.pop("content_type")
    for value in node.values():
        _to_openapi_30(value)


class OpenAPIMiddleware:
    """Serves the fixed document at /docs.json and a Swagger UI page at /docs (built once, on first use)."""

    def __init__(self, app: Any, build: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.build = build
        self._body: bytes | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "GET" or path not in ("/docs.json", "/docs", "/docs/"):
            await self.app(scope, receive, send)
            return
        if path == "/docs.json":
            if self._body is None:
                self._body = json.dumps(self.build()).encode()
            body, media = self._body, b"application/json"
        else:
            body, media = DOCS_PAGE.replace("./", "/").encode(), b"text/html; charset=utf-8"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", media), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
