"""Who may call the service, how often, and what each key used.

- `AccessMiddleware` (ASGI, on the entry service): every request and every websocket
  on every route (typed endpoints, the FastAPI app at "/" and whatever routes it
  includes) needs `Authorization: Bearer <key>` (RFC 6750; the scheme is
  case-insensitive), or `Basic` with the key as the password (any user name). A websocket may send the key as `?token=<key>` instead, since
  browsers and many ComfyUI clients cannot set headers on one; a refused websocket
  gets the same 401 answer (or, from a server without the denial extension, a close
  with code 1008). Public: health checks, /metrics, CORS preflights, and GET/HEAD of
  the static pages (`PUBLIC_PAGES`: the API docs and the playground, whose own API
  calls send the key). Then the key's limits are checked, each a token bucket
  (front/ratelimit.py): `rate_per_min` on every request, and `images_per_day` on
  requests that make images (POST), refused once the key's images are spent.
  Over a limit: 429 with Retry-After. A 401 or 429 answers in the contract of the path (front/renderers.py:
  the v2 envelope on /api/v2, ComfyUI's shape on its routes, ours elsewhere). Responses of a limited key carry
  RateLimit-Limit / -Remaining / -Reset / -Policy (draft-ietf-httpapi-ratelimit-headers-06).
- `charge(...)`: handlers call it once a response's images are known; it draws them
  from the key's daily quota and counts them, with GPU-seconds, in per-key metrics.
- `api_key(request)`, `key_name(request)`: the request's key and its name (a job records the name as its owner;
  front/ownership.py decides from the key what the request may see);
  `charge_owner(name, ...)`: the same charge for a key named by its name, outside any
  request (the job runner calls it as each item of the key's job succeeds).
- `images_left(request)`: the request key's daily image quota and what is left of it,
  read without drawing (a batch job is refused up front when its images do not fit).
- `record_usage_in(sink)`: every charge (with keys on or off) is also handed to `sink(key
  name or None, images, GPU-seconds)` in a thread; the jobs factory points it at the job
  store, which keeps usage per key and day for `GET /usage` (front/jobs/usage.py).
- `install(service, settings)`: CORS (Starlette's CORSMiddleware, outermost, so a
  preflight is answered before auth and every response, a 401 or 429 too, carries
  the CORS headers), then the access middleware.

If Redis (COMFYBENTO_REDIS_URL) cannot be reached, limits are not enforced (fail open;
keys still are) and each failure counts in comfybento_access_limiter_errors_total.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import parse_qs

from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

from comfybento.config import Settings
from comfybento.errors import RateLimited, Unauthorized
from comfybento.front.keys import BEARER_TOKEN, ApiKey, configured_keys, hash_key
from comfybento.front.ratelimit import ALWAYS, Buckets, Decision, LimiterUnavailable, MemoryBuckets, Policy, RedisBuckets
from comfybento.front.renderers import render_for

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})
# Static pages anyone may load (GET/HEAD only): the API docs (served ahead of this middleware too) and the playground.
PUBLIC_PAGES = frozenset({"/", "/docs", "/docs/", "/docs.json"})
PUBLIC_PREFIXES = ("/playground/",)
TOKEN_PARAM = "token"  # ?token=<key>: for websockets only (a URL ends up in logs and histories; headers are preferred)
REALM = "comfybento"
# Headers a browser script may read on a cross-origin response.
EXPOSED_HEADERS = (
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
    "WWW-Authenticate",
    "X-Seed",
    "X-Request-ID",
)
_current: contextvars.ContextVar[Grant | None] = contextvars.ContextVar("comfybento_access_grant", default=None)
# The Access that `install` gave this process's middleware (None when keys are off): `charge_owner` charges through it.
_installed: dict[str, Access] = {}
# Where each charge is also recorded (key name or None, images, GPU-seconds); see `record_usage_in`.
UsageSink = Callable[["str | None", int, float], None]
_usage_sink: dict[str, UsageSink] = {}


def parse_bearer(value: str | None) -> str | None:
    """The key of `Bearer <key>` (scheme in any case, RFC 6750 section 2.1), or of `Basic base64(<any user>:<key>)`
    (RFC 7617: the password is the key; for clients that only do Basic, e.g. comfy-api-simplified); None for anything else."""
    scheme, _, token = (value or "").strip().partition(" ")
    token = token.lstrip(" ")
    if scheme.lower() == "basic":
        try:
            token = base64.b64decode(token, validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None
    elif scheme.lower() != "bearer":
        return None
    return token if BEARER_TOKEN.fullmatch(token) else None


@dataclass(frozen=True)
class Grant:
    """An authenticated request: its key, and the Access that charges it."""

    key: ApiKey
    access: Access


@cache
def _metrics() -> dict[str, Any]:
    """Per-key usage counters (created in the worker, where prometheus multiprocess mode is set up)."""
    from prometheus_client import Counter

    return {
        "requests": Counter("comfybento_key_requests", "Requests admitted, per API key.", ["key"]),
        "refused": Counter("comfybento_key_refused", "Requests refused with 429, per API key and limit (rate, quota).", ["key", "limit"]),
        "images": Counter("comfybento_key_images", "Images made for the requests of each API key.", ["key"]),
        "gpu_seconds": Counter("comfybento_key_gpu_seconds", "GPU-seconds used (each item's share of its batch), per API key.", ["key"]),
        "auth_failures": Counter(
            "comfybento_auth_failures", "Requests refused with 401, by reason (missing, malformed, unknown).", ["reason"]
        ),
        "limiter_errors": Counter("comfybento_access_limiter_errors", "Limit checks skipped because the limiter (Redis) failed."),
    }


class Access:
    """The keys this server accepts, and their buckets."""

    def __init__(self, keys: tuple[ApiKey, ...], buckets: Buckets) -> None:
        self.keys = {k.sha256: k for k in keys}
        self.by_name = {k.name: k for k in keys}
        self.buckets = buckets
        self._last_error_log = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        buckets: Buckets = RedisBuckets(settings.redis_url) if settings.redis_url else MemoryBuckets()
        return cls(configured_keys(settings), buckets)

    def authenticate(self, authorization: list[str]) -> tuple[ApiKey | None, str]:
        """The key of a request's Authorization headers, or None and why not (missing, malformed, unknown)."""
        if not authorization:
            return None, "missing"
        token = parse_bearer(authorization[0]) if len(authorization) == 1 else None
        if token is None:
            return None, "malformed"
        # A dict lookup by hash: the time it takes tells nothing about any stored key's secret.
        key = self.keys.get(hash_key(token))
        return (key, "") if key is not None else (None, "unknown")

    async def _take(self, name: str, policy: Policy, cost: float, require: float) -> Decision | None:
        try:
            return await self.buckets.take(name, policy, cost, require)
        except LimiterUnavailable:  # Redis down or timing out: let the request through, say so
            _metrics()["limiter_errors"].inc()
            if time.monotonic() - self._last_error_log > 30:
                self._last_error_log = time.monotonic()
                log.warning("rate limiter unavailable; limits are not enforced until it is back", exc_info=True)
            return None

    async def admit(self, key: ApiKey, makes_images: bool) -> list[tuple[str, Decision]]:
        """Check the key's limits: ("rate", decision) and, for a request that makes images, ("quota", decision)."""
        checks: list[tuple[str, Decision]] = []
        if key.images_per_day is not None and makes_images:
            decision = await self._take(f"{key.name}:images", Policy(key.images_per_day, 86400), cost=0, require=1)
            if decision is not None:
                checks.append(("quota", decision))
        if key.rate_per_min is not None and all(d.allowed for _, d in checks):
            decision = await self._take(f"{key.name}:requests", Policy(key.rate_per_min, 60), cost=1, require=1)
            if decision is not None:
                checks.append(("rate", decision))
        return checks

    async def charge(self, key: ApiKey, images: int, gpu_seconds: float) -> None:
        metrics = _metrics()
        if images > 0:
            metrics["images"].labels(key=key.name).inc(images)
            if key.images_per_day is not None:
                await self._take(f"{key.name}:images", Policy(key.images_per_day, 86400), cost=images, require=ALWAYS)
        if gpu_seconds > 0:
            metrics["gpu_seconds"].labels(key=key.name).inc(gpu_seconds)

    async def images_left(self, key: ApiKey) -> int | None:
        """The images the key may still make now (its bucket refilled, nothing drawn); None: unlimited, or the limiter is down."""
        if key.images_per_day is None:
            return None
        decision = await self._take(f"{key.name}:images", Policy(key.images_per_day, 86400), cost=0, require=ALWAYS)
        return decision.remaining if decision is not None else None


def _grant_of(target: Any) -> Grant | None:
    if target is None:
        return _current.get()
    scope = target.scope if isinstance(target, HTTPConnection) else target
    grant = (scope.get("state") or {}).get("access_grant")
    return grant if isinstance(grant, Grant) else None


async def charge(target: HTTPConnection | dict[str, Any] | None = None, *, images: int = 0, gpu_seconds: float = 0.0) -> None:
    """Account a finished request's images and GPU-seconds to its key (a no-op when keys are off).

    `target` is the request or its ASGI scope; None means the request being handled
    (the middleware sets it for the handler's task). Images are drawn from the key's
    daily quota; a key whose quota is spent is refused up front on its next request.
    """
    grant = _grant_of(target)
    if grant is not None:
        await grant.access.charge(grant.key, images, gpu_seconds)
    await _record(grant.key.name if grant is not None else None, images, gpu_seconds)


def api_key(target: HTTPConnection | dict[str, Any] | None = None) -> ApiKey | None:
    """The API key of a request (or its scope; None: the request being handled); None when keys are off."""
    grant = _grant_of(target)
    return grant.key if grant is not None else None


def key_name(target: HTTPConnection | dict[str, Any] | None = None) -> str | None:
    """The name of the API key of a request (or its scope; None: the request being handled); None when keys are off."""
    key = api_key(target)
    return key.name if key is not None else None


async def charge_owner(name: str | None, images: int = 0, gpu_seconds: float = 0.0) -> None:
    """Charge the key named `name` as `charge` charges a request's key: same metrics, same daily image quota.

    For work done outside a request (a batch job's items). A no-op when keys are off, for None,
    or for a name the keys file no longer has.
    """
    acl = _installed.get("access")
    key = acl.by_name.get(name) if acl is not None and name is not None else None
    if acl is not None and key is not None:
        await acl.charge(key, images, gpu_seconds)
    await _record(name, images, gpu_seconds)


def request_key(target: HTTPConnection | dict[str, Any] | None = None) -> ApiKey | None:
    """The API key of a request (or its scope; None: the request being handled); None when keys are off."""
    grant = _grant_of(target)
    return grant.key if grant is not None else None


def is_operator(key: ApiKey | None) -> bool:
    """Whether a key may see every key's usage and jobs (the keys file's `operator: true`)."""
    return bool(getattr(key, "operator", False))


async def images_left(target: HTTPConnection | dict[str, Any] | None = None) -> tuple[int, int | None] | None:
    """(images per day, images left now) of the request's key, read without drawing; None when keys are off or it is unlimited."""
    grant = _grant_of(target)
    if grant is None or grant.key.images_per_day is None:
        return None
    return grant.key.images_per_day, await grant.access.images_left(grant.key)


def record_usage_in(sink: UsageSink | None) -> None:
    """Hand every later charge to `sink` too (None: stop). A sink that fails is logged; the charge stands."""
    _usage_sink.clear()
    if sink is not None:
        _usage_sink["sink"] = sink


async def _record(name: str | None, images: int, gpu_seconds: float) -> None:
    sink = _usage_sink.get("sink")
    if sink is None:
        return
    try:
        await asyncio.to_thread(sink, name, images, gpu_seconds)
    except Exception:
        log.exception("recording the usage of key %r failed (%d images, %.3f GPU-seconds)", name, images, gpu_seconds)


def rate_limit_headers(checks: list[tuple[str, Decision]]) -> dict[str, str]:
    """RateLimit-* of the limit that refused, else of the one nearest to refusing; RateLimit-Policy lists them all."""
    if not checks:
        return {}
    refused = [d for _, d in checks if not d.allowed]
    shown = refused[0] if refused else min((d for _, d in checks), key=lambda d: d.tokens / d.policy.limit)
    return {
        "RateLimit-Limit": str(shown.policy.limit),
        "RateLimit-Remaining": str(shown.remaining),
        "RateLimit-Reset": str(shown.reset_s),
        "RateLimit-Policy": ", ".join(f"{d.policy.limit};w={d.policy.window_s}" for _, d in checks),
    }


def _unauthorized(reason: str, path: str) -> JSONResponse:
    _metrics()["auth_failures"].labels(reason=reason).inc()
    message = {
        "missing": "this service needs an API key: send the header 'Authorization: Bearer <key>' (a websocket may add ?token=<key>)",
        "malformed": "the Authorization header must be 'Bearer <key>' (one header, scheme Bearer)",
        "unknown": "the API key is not valid",
    }[reason]
    challenge = f'Bearer realm="{REALM}"' + (', error="invalid_token"' if reason == "unknown" else "")
    return render_for(path, Unauthorized(message), headers={"WWW-Authenticate": challenge})


def _too_many(key: ApiKey, limit: str, decision: Decision, headers: dict[str, str], path: str) -> JSONResponse:
    _metrics()["refused"].labels(key=key.name, limit=limit).inc()
    what = f"is over its limit of {key.rate_per_min} requests/min" if limit == "rate" else f"has used its {key.images_per_day} images/day"
    refusal = RateLimited(f"API key '{key.name}' {what}; retry in {decision.retry_after_s} s", decision.retry_after_s)
    return render_for(path, refusal, headers=headers)


def _is_preflight(scope: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
    return scope.get("method") == "OPTIONS" and b"origin" in headers and b"access-control-request-method" in headers


def is_public(scope: dict[str, Any]) -> bool:
    """Health checks and /metrics (any method), and GET/HEAD of the static pages: no key needed."""
    path = scope.get("path", "")
    if path in OPEN_PATHS:
        return True
    return scope.get("method") in ("GET", "HEAD") and (path in PUBLIC_PAGES or path.startswith(PUBLIC_PREFIXES))


def credentials(scope: dict[str, Any]) -> list[str]:
    """The request's Authorization header values; for a websocket without one, `Bearer <?token=...>`."""
    found = [v.decode("latin-1") for k, v in scope.get("headers") or [] if k == b"authorization"]
    if found or scope["type"] != "websocket":
        return found
    tokens = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(TOKEN_PARAM, [])
    return [f"Bearer {t}" for t in tokens]


async def _refuse(response: JSONResponse, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Send a refusal: the response itself, or for a websocket, as its denial (the HTTP answer to the handshake)."""
    if scope["type"] == "websocket" and "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})  # the server answers the handshake 403
        return
    await response(scope, receive, send)


class AccessMiddleware:
    """Authenticates and limits each request; the handler finds its key in scope["state"]["api_key"]."""

    def __init__(self, app: Any, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or is_public(scope):
            await self.app(scope, receive, send)
            return
        if _is_preflight(scope, dict(scope.get("headers") or [])):  # no credentials by design; the CORS layer answers it
            await self.app(scope, receive, send)
            return
        key, reason = self.access.authenticate(credentials(scope))
        if key is None:
            await _refuse(_unauthorized(reason, scope["path"]), scope, receive, send)
            return
        checks = await self.access.admit(key, makes_images=scope.get("method") == "POST" and not scope["path"].endswith("/cancel"))
        headers = rate_limit_headers(checks)
        refused = next(((limit, d) for limit, d in checks if not d.allowed), None)
        if refused is not None:
            await _refuse(_too_many(key, refused[0], refused[1], headers, scope["path"]), scope, receive, send)
            return
        _metrics()["requests"].labels(key=key.name).inc()
        grant = Grant(key, self.access)
        scope.setdefault("state", {}).update(api_key=key, access_grant=grant)
        token = _current.set(grant)
        try:
            await self.app(scope, receive, _adding_headers(send, headers))
        finally:
            _current.reset(token)


def _adding_headers(send: Any, headers: dict[str, str]) -> Any:
    if not headers:
        return send

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out = MutableHeaders(scope=message)
            for name, value in headers.items():
                out.setdefault(name, value)
        await send(message)

    return wrapped


def cors_options(origins: tuple[str, ...]) -> dict[str, Any]:
    """Starlette CORSMiddleware options: the origins given, any method and header, no cookies (keys are bearer tokens)."""
    return {
        "allow_origins": list(origins),
        "allow_methods": ["*"],
        "allow_headers": ["*"],
        "allow_credentials": False,
        "expose_headers": list(EXPOSED_HEADERS),
        "max_age": 600,
    }


def install(service: Any, settings: Settings) -> None:
    """Add CORS (outermost) and then keys and limits to a BentoML service, as the settings ask."""
    if settings.cors_origins:
        service.add_asgi_middleware(CORSMiddleware, **cors_options(settings.cors_origins))
    _installed.clear()
    if settings.keys_required:
        _installed["access"] = Access.from_settings(settings)
        service.add_asgi_middleware(AccessMiddleware, access=_installed["access"])
