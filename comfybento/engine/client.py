"""The front's client of the engine: sends a request frame, reads its event frames.

The engine's address is the one BentoML gives the front for its dependency
(a unix socket under `bentoml serve`, a URL on BentoCloud). A broken stream
(the engine was killed and is restarting) ends the request with a 503 that
says so, never a hang.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlparse

import httpx

from comfybento.engine.messages import EngineItem, ItemResult, OutputBlob, item_to_frame, preview_header
from comfybento.engine.wire import WireError, encode_frame, read_frames
from comfybento.errors import EngineUnavailable

log = logging.getLogger(__name__)

# The engine service (engine/service.py) by name, and how long one call to it may take.
ENGINE_NAME = "comfybento-engine"
ENGINE_TIMEOUT_S = 900


def engine_name(index: int | None = None) -> str:
    """The engine service's name: ENGINE_NAME alone, `comfybento-engine-<index>` as one of several (one per GPU)."""
    return ENGINE_NAME if index is None else f"{ENGINE_NAME}-{index}"


OnEvent = Callable[[dict[str, Any]], None]
OnOutput = Callable[[OutputBlob], None]


def _client(url: str, timeout_s: float) -> httpx.AsyncClient:
    parsed = urlparse(url)
    transport = None
    if parsed.scheme == "file":  # BentoML's unix-socket address of a local dependency
        transport = httpx.AsyncHTTPTransport(uds=unquote(parsed.path))
        url = "http://engine"
    elif parsed.scheme == "tcp":
        url = f"http://{parsed.netloc}"
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    return httpx.AsyncClient(base_url=url, transport=transport, timeout=timeout, limits=limits)


def engine_url(service_name: str) -> str:
    """The address BentoML assigned to the engine service in this deployment."""
    from bentoml._internal.container import BentoMLContainer

    mapping = BentoMLContainer.remote_runner_mapping.get()
    if service_name not in mapping:
        raise EngineUnavailable(f"no address for the engine service '{service_name}' (BENTOML_RUNNER_MAP)")
    return str(mapping[service_name])


class EngineClient:
    def __init__(self, url: str, timeout_s: float) -> None:
        self._http = _client(url, timeout_s)

    async def run(self, workflow: str, item: EngineItem, on_event: OnEvent | None = None,
                  on_output: OnOutput | None = None) -> ItemResult:
        """One request through the engine.

        Every event goes to on_event as its header dict, JSON-able: outputs without their bytes, a preview's JPEG as
        base64 under "data". Each output, with its bytes, also goes to on_output as soon as it is read, before the next
        event. The result holds every output too.
        """
        outputs: list[OutputBlob] = []
        try:
            async with self._http.stream("POST", "/engine/run", content=encode_frame(*item_to_frame(workflow, item))) as resp:
                if resp.status_code != 200:
                    body = (await resp.aread()).decode(errors="replace")[:500]
                    return ItemResult.failure(EngineUnavailable(f"the engine answered {resp.status_code}: {body}"), item.seed)
                async for header, parts in read_frames(resp.aiter_raw()):
                    kind = header.get("event")
                    if kind == "preview":
                        header = preview_header(header, parts)
                    if on_event is not None:
                        on_event(header)
                    if kind == "output":
                        fields = {k: v for k, v in header.items() if k != "event"}
                        outputs.append(OutputBlob(**fields, data=parts[0]))
                        if on_output is not None:
                            on_output(outputs[-1])
                    elif kind in ("done", "failed"):
                        return ItemResult(**header["result"], outputs=outputs)
        except (httpx.TransportError, WireError) as exc:
            log.warning("engine stream for %s broke: %s", workflow, exc)
        return ItemResult.failure(EngineUnavailable("the engine stopped while running this request (it restarts by "
                                                    "itself); retry"), item.seed)

    async def ready(self) -> bool:
        """Whether the engine answers its readiness probe (any connection error: not ready)."""
        try:
            return (await self._http.get("/readyz", timeout=3.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def aclose(self) -> None:
        await self._http.aclose()
