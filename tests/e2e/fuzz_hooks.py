"""Schemathesis hooks of tests/e2e/test_fuzz.py (loaded through schemathesis.toml): the SSE check the document calls for.

The document's schema of a `text/event-stream` answer is one event's data, a oneOf discriminated by `event`
(front/openapi.py, as the generated TypeScript client reads it); Schemathesis reads a 3.0 document's SSE schema
as OpenAPI 3.2's envelope ({event, data: <string>}) instead, so its response_schema_conformance is off for those
answers and this check takes its place: each frame's data is JSON valid under the documented schema, and its
`event` field is the frame's type.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from comfybento.front.stream import MEDIA_TYPE, parse_sse

_VALIDATORS: dict[tuple[int, str], OAS30Validator] = {}


def _validator(document: dict[str, Any], pointer: str) -> OAS30Validator:
    """A validator of the schema at `pointer` in `document` (its $refs resolved inside the document)."""
    key = (id(document), pointer)
    if key not in _VALIDATORS:
        registry: Registry[Any] = Registry().with_resource("urn:doc", Resource.from_contents(document, default_specification=DRAFT4))
        _VALIDATORS[key] = OAS30Validator({"$ref": f"urn:doc#{pointer}"}, registry=registry)
    return _VALIDATORS[key]


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


@schemathesis.check
def sse_data_conformance(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every event of a documented event stream: its data is valid JSON under the documented schema, its type repeated."""
    if response.headers.get("content-type", [""])[0].split(";")[0].strip() != MEDIA_TYPE:
        return None
    document = case.operation.schema.raw_schema
    status = str(response.status_code)
    answer = document["paths"][case.operation.path][case.method.lower()]["responses"].get(status, {})
    if MEDIA_TYPE not in answer.get("content", {}):
        raise AssertionError(f"{status} {MEDIA_TYPE} is not documented")
    pointer = "/".join(["", "paths", _escape(case.operation.path), case.method.lower(), "responses", status, "content",
                        _escape(MEDIA_TYPE), "schema"])
    validator = _validator(document, pointer)
    frames = parse_sse(response.content.decode("utf-8", errors="replace"))
    if getattr(response, "stream_cut_short", False):  # Schemathesis stopped reading: the last frame may be cut
        frames = frames[:-1]
    for index, (event, data) in enumerate(frames):
        payload = json.loads(data)
        errors = sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path))
        if errors:
            raise AssertionError(f"event #{index} ({event}): {errors[0].message} at {list(errors[0].absolute_path)}: {data[:300]}")
        if payload.get("event") != event:
            raise AssertionError(f"event #{index}: the frame says {event!r}, its data {payload.get('event')!r}")
    return True
