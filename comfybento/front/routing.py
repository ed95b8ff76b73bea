"""What each set of typed endpoints serves: one workflow, or the alias of a workflow's versions (workflows/versions.py).

    POST /txt2img/v1     the version v1, always          X-Comfybento-Workflow-Version: v1
    POST /txt2img        the version versions.yaml picks  X-Comfybento-Workflow-Version: <the one that ran>

A request to an alias is typed by the alias's schema (its default version's at startup); `Route.pick` routes it when it
arrives, and from then on it is that version's request: a change of versions.yaml never moves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from comfybento import metrics
from comfybento.errors import InvalidRequest, WorkflowError
from comfybento.front.context import add_response_header
from comfybento.workflows.catalog import WorkflowSpec
from comfybento.workflows.project import Project
from comfybento.workflows.schema import PRESET_FIELD
from comfybento.workflows.versions import Alias

VERSION_HEADER = "X-Comfybento-Workflow-Version"


@dataclass(frozen=True)
class Route:
    """The endpoints at /<path> (and /<path>/stream, /png, /<output>), named `attr` in BentoML, typed by `schema`."""

    path: str  # without the leading slash: txt2img, txt2img/v1
    attr: str  # BentoML's name of the JSON endpoint; the others are <attr>_stream, <attr>_png, <attr>_<output>
    schema: WorkflowSpec
    alias: Alias | None = None

    def pick(self, values: dict[str, Any]) -> tuple[WorkflowSpec, dict[str, Any]]:
        """The workflow this request runs and its fields; says its version in the answer's header (raises InvalidRequest)."""
        spec = self.schema
        if self.alias is not None:
            spec = self.alias.pick()
            metrics.ALIAS_REQUESTS.labels(workflow=self.alias.name, version=spec.version).inc()
        if spec.version is not None:
            add_response_header(VERSION_HEADER, spec.version)
        return spec, values if spec is self.schema else as_version(spec, values, self.schema)


def as_version(spec: WorkflowSpec, values: dict[str, Any], schema: WorkflowSpec) -> dict[str, Any]:
    """Fields validated by `schema` (the alias's) as fields of the version `spec`, checked by its own model.

    A field still at the alias schema's default takes the version's own default (a version's graph changes its defaults
    too); one `spec` has not is dropped. The request's preset was applied when it was validated."""
    fields, given = spec.input_model.model_fields, schema.input_model.model_fields
    kept = {k: v for k, v in values.items() if k in fields and k != PRESET_FIELD
            and not (k in given and not given[k].is_required() and v == given[k].get_default(call_default_factory=True))}
    try:
        model = spec.input_model.model_validate(kept)
    except ValidationError as exc:
        shown = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
        raise InvalidRequest(f"this request was routed to version '{spec.version}' of '{spec.family}', whose fields "
                             f"refuse it: {shown}; send it to /{spec.route} or another version") from None
    return {k: getattr(model, k) for k in fields if k != PRESET_FIELD}


def check_output(spec: WorkflowSpec, name: str) -> None:
    """An alias's /<output> routed to a version without that output: an InvalidRequest naming both, before any work."""
    if any(o.name == name for o in spec.outputs):
        return
    outputs = ", ".join(o.name for o in spec.outputs)
    raise InvalidRequest(f"this request was routed to version '{spec.version}' of '{spec.family}', which has no output "
                         f"'{name}' (its outputs: {outputs}); call /{spec.route} or /{spec.route}/<output>")


def routes_of(project: Project) -> list[Route]:
    """Every workflow at its own path, then each alias; a WorkflowError if two would share a BentoML name."""
    routes = [Route(spec.route, spec.name, spec) for spec in project.catalog.values()]
    routes += [Route(name, name, alias.schema, alias) for name, alias in project.aliases.items()]
    taken: dict[str, Route] = {}
    for route in routes:
        for attr in endpoint_names(route):
            if attr in taken:
                raise WorkflowError(f"{route.schema.path}: the endpoint name '{attr}' of /{route.path} is also one of "
                                    f"/{taken[attr].path}; rename a workflow, a version or an output")
            taken[attr] = route
    return routes


def endpoint_names(route: Route) -> list[str]:
    """BentoML's names of a route's endpoints: JSON, stream, `/png` (when it makes images), one per output."""
    names = [route.attr, f"{route.attr}_stream"]
    if any(o.kind == "image" for o in route.schema.outputs):
        names.append(f"{route.attr}_png")
    return names + [f"{route.attr}_{o.name}" for o in route.schema.outputs]
