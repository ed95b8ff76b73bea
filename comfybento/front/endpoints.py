"""The typed endpoints of the front, per workflow: from the request to the engine's result and back.

    POST /<name>            JSON: every output, base64 or as URLs (output_delivery)
    POST /<name>/<output>   one output's bytes (`/<name>/png`: the first image)
    POST /<name>/stream     the same request, answered with its live events (front/stream.py)

Each validates, admits or sheds load (scheduling/admission.py), reads the request's files into the engine's item
(`engine_item`), calls the engine (`call_engine`: comfybento's scheduler over engine/client.py, or BentoML's batcher),
then charges the caller's key and teaches the cost model. Job items take the same way (`job_executor`). The endpoints
are methods of the front service (front/app.py): `self` is that service, which holds the collaborators (admission,
engine client, storage, costs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import BentoMLException
from bentoml.validators import ContentType
from starlette.responses import Response

from comfybento import metrics
from comfybento.engine.client import OnOutput
from comfybento.engine.messages import EngineItem, ItemResult, OutputBlob
from comfybento.errors import Cancelled, ComfyBentoError, InternalError, QueueFull
from comfybento.front import access, stream
from comfybento.front.delivery import live_folder, output_item, outputs_as_urls
from comfybento.front.http import base_url, error_response, request_id, until_client_disconnects
from comfybento.front.jobs.runner import Execute, OnEvent
from comfybento.front.routing import Route, check_output
from comfybento.outputs.encoding import b64
from comfybento.scheduling.cost import CostModel, work_of
from comfybento.urlguard import AllowList
from comfybento.workflows.binding import resolve_seed
from comfybento.workflows.catalog import WorkflowSpec
from comfybento.workflows.free_graph import FREE_GRAPH
from comfybento.workflows.limits import check_request_limits
from comfybento.workflows.params import UPLOAD_KINDS, OutputSpec
from comfybento.workflows.schema import PRESET_FIELD, GenerateResponse, Timings
from comfybento.workflows.uploads import read_input

log = logging.getLogger(__name__)


def workflow_endpoints(route: Route) -> dict[str, Any]:
    """The BentoML APIs of one workflow or alias (front/routing.py), by attribute name: JSON, stream, `/png` (when it
    makes images), one per output."""
    spec = route.schema
    endpoints = {route.attr: _json_endpoint(route), f"{route.attr}_stream": _stream_endpoint(route)}
    if any(o.kind == "image" for o in spec.outputs):
        endpoints[f"{route.attr}_png"] = _raw_endpoint(route, None)
    for output in spec.outputs:
        endpoints[f"{route.attr}_{output.name}"] = _raw_endpoint(route, output)
    return endpoints


def _what(route: Route) -> str:
    """The endpoints' docs: what they run."""
    if route.alias is not None:
        return (f"the workflow '{route.path}' in the version its versions.yaml picks (X-Comfybento-Workflow-Version "
                f"says which; versions: {', '.join(sorted(route.alias.versions))})")
    return f"the '{route.path}' workflow"


def _json_endpoint(route: Route) -> Any:
    async def endpoint(self: Any, **values: Any) -> Any:
        delivery = values.get("output_delivery", "base64")
        try:
            spec, values = route.pick(values)
        except ComfyBentoError as exc:
            return error_response(exc)
        result = await _generate(self, spec, values, stores_outputs=delivery == "url")
        if isinstance(result, Response):
            return result
        if delivery == "url":
            try:
                outputs = await asyncio.to_thread(outputs_as_urls, self.output_storage(), result, base_url(), access.key_name())
            except ComfyBentoError as exc:
                return error_response(exc)
        else:
            outputs = [output_item(o, data=b64(o.data)) for o in result.outputs]
        timings = Timings(queue_ms=result.queue_ms, execution_ms=result.execution_ms, batch_size=result.batch_size)
        return GenerateResponse(workflow=spec.name, seed=result.seed, outputs=outputs, timings=timings)

    spec = route.schema
    endpoint.__name__ = route.attr
    endpoint.__doc__ = (f"Run {_what(route)}; returns every output ({_outputs_line(spec)}), base64-encoded or as "
                        "URLs (output_delivery). For many prompts at once, submit a batch job (POST /jobs).")
    return bentoml.api(route=f"/{route.path}", input_spec=spec.input_model, output_spec=GenerateResponse)(endpoint)


def _outputs_line(spec: WorkflowSpec) -> str:
    return ", ".join(f"{o.name}: {o.kind}" for o in spec.outputs)


def _raw_endpoint(route: Route, output: OutputSpec | None) -> Any:
    """`POST /<workflow>/<output>`: that output's first item as raw bytes; output None: `/png`, the first image output."""
    target = output or next(o for o in route.schema.outputs if o.kind == "image")

    async def endpoint(self: Any, **values: Any) -> Response:
        try:
            spec, values = route.pick(values)
            check_output(spec, target.name)
        except ComfyBentoError as exc:
            return error_response(exc)
        result = await _generate(self, spec, values)
        if isinstance(result, Response):
            return result
        mine = [o for o in result.outputs if o.output == target.name]
        if not mine:
            return error_response(InternalError(f"output '{target.name}' (node {target.node_id}) produced nothing"))
        headers = {"X-Output-Count": str(len(mine)), "X-Output-Kind": mine[0].kind}
        if result.seed is not None:
            headers["X-Seed"] = str(result.seed)
        media_type = f"{mine[0].media_type}; charset=utf-8" if mine[0].media_type.startswith("text/") else mine[0].media_type
        return Response(mine[0].data, media_type=media_type, headers=headers)

    media = target.media_type or ("image/png" if target.kind == "image" else "application/octet-stream")
    # The annotation documents the bytes in the OpenAPI; BentoML sends the Response as it is.
    endpoint.__annotations__ = {**endpoint.__annotations__, "return": Annotated[Path, ContentType(media)]}
    path = f"/{route.path}/{target.name}" if output is not None else f"/{route.path}/png"
    endpoint.__name__ = f"{route.attr}_{target.name}" if output is not None else f"{route.attr}_png"
    what = f"its output '{target.name}' ({target.kind}, {target.media_type or 'media type of the file'})"
    if output is None:
        what = f"its first image ('{target.name}'; image/png unless output_format says otherwise)"
    endpoint.__doc__ = (f"Run {_what(route)}; returns {what} as bytes: the first item when the node made "
                        "several (X-Output-Count says how many; the JSON endpoint returns all). The seed is in X-Seed.")
    return bentoml.api(route=path, input_spec=route.schema.input_model)(endpoint)


def _stream_endpoint(route: Route) -> Any:
    """`POST /<workflow>/stream`: the same request as `POST /<workflow>`, answered with its live events (front/stream.py)."""

    async def endpoint(self: Any, **values: Any) -> Response:
        by_url = values.get("output_delivery") == "url"
        try:
            spec, values = route.pick(values)
        except ComfyBentoError as exc:
            return error_response(exc)
        item = await _admit(self, spec, values, stores_outputs=by_url)
        if isinstance(item, Response):
            return item  # a 4xx (or 503, 507) JSON answer before any stream starts
        rid, key, root = request_id(), access.key_name(), base_url()
        folder = live_folder(key)  # tagged with the key: its URLs are the key's only (front/ownership.py)

        async def deliver(blob: OutputBlob) -> stream.OutputEvent:
            if not by_url:
                return stream.output_event(blob, data=b64(blob.data))
            return await asyncio.to_thread(stream.store_output, self.output_storage(), blob, folder, root)

        async def finish(result: ItemResult) -> stream.AnyEvent:
            if not result.ok:
                return stream.failed_event(result, rid)
            observe_cost(self.costs, spec, item, result)
            await _charge(result, key)
            return stream.done_event(spec.name, result)

        events = stream.request_events(lambda on_event, on_output: call_engine(self, spec.name, item, on_event, on_output),
                                       deliver, finish, rid)
        return stream.EventStreamResponse(events, on_close=lambda: self.admission.leave(spec.name))

    endpoint.__name__ = f"{route.attr}_stream"
    endpoint.__doc__ = (f"Run {_what(route)} (the same body as POST /{route.path}) and follow it live, as Server-Sent "
                        "Events: queued, started, progress (step i/N), preview (when enabled), output (each as soon as it is "
                        "ready), then done or failed. A bad request is a JSON 4xx before the stream starts.")
    endpoint.__annotations__ = {**endpoint.__annotations__, "return": Annotated[str, ContentType(stream.MEDIA_TYPE)]}
    return bentoml.api(route=f"/{route.path}/stream", input_spec=route.schema.input_model)(endpoint)


async def _generate(self: Any, spec: WorkflowSpec, values: dict[str, Any], stores_outputs: bool = False) -> ItemResult | Response:
    """Validate, admit, run on the engine: the result, or the error response (the one mapping: front/http.py)."""
    try:
        return await generate(self, spec, values, stores_outputs)
    except Refused as refused:
        return error_response(refused.error, refused.retry_after_s)


class Refused(Exception):
    """A request refused before the engine (a ComfyBentoError) or failed in it (the result's error fields), for the
    caller to render in its contract (front/renderers.py); `retry_after_s` for a full queue."""

    def __init__(self, error: BaseException | dict[str, Any], retry_after_s: int | None = None) -> None:
        super().__init__(str(error))
        self.error, self.retry_after_s = error, retry_after_s


async def generate(self: Any, spec: WorkflowSpec, values: dict[str, Any], stores_outputs: bool = False) -> ItemResult:
    """Validate, admit, run on the engine, charge the caller: the succeeded result (raises Refused).

    `self` is the front service; every API that runs one request live (the typed endpoints, the OpenAI Images API)
    comes this way."""
    item = await admit(self, spec, values, stores_outputs)
    try:
        result = await _while_connected(call_engine(self, spec.name, item))
    finally:
        self.admission.leave(spec.name)
    if result is None:
        raise Refused(Cancelled("the client went away"))
    if not result.ok:
        raise Refused(result.model_dump(), self.admission.retry_after_s)
    observe_cost(self.costs, spec, item, result)
    await _charge(result)
    log.info("request %s: %s ok, seed %s, batch %d, queued %.0f ms, ran %.0f ms", request_id(), spec.name, result.seed,
             result.batch_size, result.queue_ms, result.execution_ms)
    return result


async def _admit(self: Any, spec: WorkflowSpec, values: dict[str, Any], stores_outputs: bool = False) -> EngineItem | Response:
    try:
        return await admit(self, spec, values, stores_outputs)
    except Refused as refused:
        return error_response(refused.error, refused.retry_after_s)


async def admit(self: Any, spec: WorkflowSpec, values: dict[str, Any], stores_outputs: bool = False) -> EngineItem:
    """Validate and admit a request (the caller must `admission.leave` once done): its engine item (raises Refused).

    `stores_outputs` (output_delivery 'url'): refused with a 507 while the disk is below its watermark."""
    try:
        if stores_outputs:
            self.disk.require_room()
        item = await asyncio.to_thread(engine_item, spec, values, resolve_seed(spec.params, values), self.input_urls)
    except ComfyBentoError as exc:
        raise Refused(exc) from exc
    if self.admission.try_enter(spec.name) is None:
        raise Refused(QueueFull(f"workflow '{spec.name}' has {self.admission.limit} requests queued; retry later"),
                      self.admission.retry_after_s)
    return item


def engine_item(spec: WorkflowSpec, values: dict[str, Any], seed: int | None, urls: AllowList | None = None) -> EngineItem:
    """A validated request (endpoint fields or a job item) as the engine's item: input files read and checked, as bytes.

    Files come uploaded, as base64 or by URL (fetched through `urls`, the input allow-list; None refuses URLs).
    Blocking (reads, fetches and sniffs files): call it in a thread. Raises TooLarge / InvalidRequest.
    """
    values = dict(values)
    output_format, quality = values.pop("output_format", None), values.pop("output_quality", None)
    values.pop("output_delivery", None)  # the front's concern (stored outputs and URLs), not the engine's
    values.pop(PRESET_FIELD, None)  # applied when the request was validated (workflows/schema.py): its values are in place
    check_request_limits(spec.name, spec.graph, spec.params, values, spec.limits, seed)
    suffixes = {}
    for param in spec.params:
        value = values.get(param.name)
        if param.kind in UPLOAD_KINDS and (value is not None or param.kind != "file"):
            found = read_input(param.name, param.kind, value, spec.limits, urls)
            values[param.name], suffixes[param.name] = found.data, found.suffix
    return EngineItem(values=values, seed=seed, submitted_at=time.time(), output_format=output_format, output_quality=quality,
                      request_id=request_id(), file_suffixes=suffixes)


def free_graph_item(values: dict[str, Any]) -> EngineItem:
    """A job item of an unmatched graph (workflows/free_graph.py) as the engine's item: the graph, checked again there."""
    return EngineItem(values=values, seed=None, submitted_at=time.time(), request_id=request_id())


def job_executor(front: Any, catalog: dict[str, WorkflowSpec]) -> Execute:
    """The job runner's `execute` (front/jobs/runner.py): a job item as the engine's item, run behind live requests."""

    async def execute(workflow: str, values: dict[str, Any], seed: int | None, on_event: OnEvent) -> ItemResult:
        try:  # uploads are checked and decoded off the event loop; a bad item is its own failure, not a retry
            if workflow == FREE_GRAPH:
                item = free_graph_item(values)
            else:  # on threads of their own: a job's backlog never delays a live request's checks
                item = await asyncio.get_running_loop().run_in_executor(
                    front.job_items, engine_item, catalog[workflow], values, seed, front.input_urls)
        except ComfyBentoError as exc:
            return ItemResult.failure(exc, seed)
        item.background = True  # behind live requests of its shape, filling their batches (scheduler point 4)
        result = await call_engine(front, workflow, item, on_event)
        if workflow != FREE_GRAPH:
            observe_cost(front.costs, catalog[workflow], item, result)
        return result

    return execute


async def call_engine(front: Any, workflow: str, item: EngineItem, on_event: OnEvent | None = None,
                      on_output: OnOutput | None = None) -> ItemResult:
    if front.engine_client is not None:
        return await front.engine_client.run(workflow, item, on_event, on_output)  # type: ignore[no-any-return]
    try:  # COMFYBENTO_ENGINE_ENTRY=bentoml: through BentoML's adaptive batcher
        results = await getattr(front.engine.to_async, workflow)([item])
    except BentoMLException as exc:
        if int(getattr(exc, "error_code", 500)) != 503:
            raise
        return ItemResult.failure(QueueFull(f"workflow '{workflow}' is at capacity (BentoML's batcher shed the request); "
                                            "retry later"), item.seed)
    result = results[0] if isinstance(results[0], ItemResult) else ItemResult.model_validate(results[0])
    if on_output is not None:
        for blob in result.outputs:
            on_output(blob)
    return result


async def _while_connected(call: Coroutine[Any, Any, ItemResult]) -> ItemResult | None:
    """Run the engine call; if the client disconnects first, cancel it (queued work is dropped, a batch
    whose every caller left is interrupted) and return None."""
    task = asyncio.ensure_future(call)
    watcher = asyncio.ensure_future(until_client_disconnects())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    log.info("request %s: the client went away; its work is cancelled", request_id())
    return None


def gpu_seconds_of(result: ItemResult) -> float:
    """A result's share of its engine batch: what its key is charged, and what the cost model learns from."""
    return result.execution_ms / 1000 / max(1, result.batch_size)


async def _charge(result: ItemResult, key: str | None = None) -> None:
    """Draw a result's images from the caller's API key (front/access.py); `key`: its name, outside the handler."""
    images, gpu_seconds = len(result.outputs), gpu_seconds_of(result)
    await (access.charge_owner(key, images, gpu_seconds) if key is not None else access.charge(images=images, gpu_seconds=gpu_seconds))


def observe_cost(costs: CostModel, spec: WorkflowSpec, item: EngineItem, result: ItemResult) -> None:
    """Teach the workflow's cost model (scheduling/cost.py) a succeeded result, and export its new rate."""
    if not result.ok:
        return
    rate = costs.observe(spec.name, work_of(spec.graph, spec.params, item.values), gpu_seconds_of(result))
    metrics.COST_SECONDS_PER_UNIT.labels(workflow=spec.name).set(rate)
