"""Bearer parsing, key lookup, limits and charging (the HTTP wiring is checked in tests/e2e/test_access.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import bentoml
import pytest
from prometheus_client import REGISTRY
from starlette.requests import Request

from comfybento.config import Settings
from comfybento.front import access
from comfybento.front.access import Access, AccessMiddleware, Grant, parse_bearer, rate_limit_headers
from comfybento.front.keys import ApiKey, hash_key, new_key
from comfybento.front.ratelimit import MemoryBuckets, RedisBuckets
from tests.helpers import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer   abc", "abc"),
        (" Bearer abc ", "abc"),
        ("Bearer cb_x-Y.z~+/==", "cb_x-Y.z~+/=="),
        ("abc", None),
        ("Basic abc", None),  # not base64 of user:password
        ("Basic " + base64.b64encode(b"comfy:abc").decode(), "abc"),  # the password is the key, any user
        ("basic " + base64.b64encode(b":abc").decode(), "abc"),
        ("Basic " + base64.b64encode(b"abc").decode(), None),  # no password
        ("Basic " + base64.b64encode(b"u:a b").decode(), None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearerabc", None),
        ("Bearer a b", None),
        ("Token abc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_and_basic_credentials_are_read(header, token):
    assert parse_bearer(header) == token


def _access(*keys: ApiKey) -> Access:
    return Access(keys, MemoryBuckets())


def test_keys_are_found_by_hash_and_refusals_say_why():
    secret = new_key()
    key = ApiKey(name="alice", sha256=hash_key(secret))
    acl = _access(key)
    assert acl.authenticate([f"Bearer {secret}"]) == (key, "")
    assert acl.authenticate([f"bearer {secret}"]) == (key, "")
    assert acl.authenticate([]) == (None, "missing")
    assert acl.authenticate([secret]) == (None, "malformed")  # the key without "Bearer"
    assert acl.authenticate([f"Bearer {secret}", f"Bearer {secret}"]) == (None, "malformed")
    assert acl.authenticate([f"Bearer {secret}x"]) == (None, "unknown")


async def test_rate_limit_and_headers():
    key = ApiKey(name="r", sha256=hash_key("r"), rate_per_min=2)
    acl = _access(key)
    first = await acl.admit(key, makes_images=False)
    assert rate_limit_headers(first) == {
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "1",
        "RateLimit-Reset": "30",
        "RateLimit-Policy": "2;w=60",
    }
    await acl.admit(key, makes_images=False)
    third = await acl.admit(key, makes_images=False)
    assert [(name, d.allowed, d.retry_after_s) for name, d in third] == [("rate", False, 30)]
    assert rate_limit_headers(third)["RateLimit-Remaining"] == "0"
    unlimited = ApiKey(name="u", sha256=hash_key("u"))
    assert await acl.admit(unlimited, makes_images=True) == [] and rate_limit_headers([]) == {}


async def test_quota_refuses_once_charged_images_are_spent():
    key = ApiKey(name="q", sha256=hash_key("q"), rate_per_min=100, images_per_day=4)
    acl = _access(key)
    checks = await acl.admit(key, makes_images=True)
    assert [name for name, d in checks if d.allowed] == ["quota", "rate"]
    assert rate_limit_headers(checks)["RateLimit-Policy"] == "4;w=86400, 100;w=60"
    await acl.charge(key, images=3, gpu_seconds=0.5)
    assert all(d.allowed for _, d in await acl.admit(key, makes_images=True))  # one image left
    await acl.charge(key, images=2, gpu_seconds=0.5)
    refused = await acl.admit(key, makes_images=True)
    assert [(name, d.allowed) for name, d in refused] == [("quota", False)]  # the rate bucket is not drawn from
    headers = rate_limit_headers(refused)
    assert headers["RateLimit-Limit"] == "4" and headers["RateLimit-Remaining"] == "0"
    assert refused[0][1].retry_after_s == 2 * 86400 // 4  # two images to earn back at 4/day
    assert all(d.allowed for _, d in await acl.admit(key, makes_images=False))  # status polls still pass


def _sample(name: str, key: str) -> float:
    return REGISTRY.get_sample_value(name, {"key": key}) or 0.0


async def test_charge_finds_the_key_in_the_scope_or_the_context():
    key = ApiKey(name="metered", sha256=hash_key("metered"), images_per_day=10)
    acl = _access(key)
    before = (_sample("comfybento_key_images_total", "metered"), _sample("comfybento_key_gpu_seconds_total", "metered"))
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], "state": {"access_grant": Grant(key, acl)}}
    await access.charge(Request(scope), images=2, gpu_seconds=1.5)
    await access.charge(scope, images=1)
    token = access._current.set(Grant(key, acl))
    try:
        await access.charge(images=3, gpu_seconds=0.5)
    finally:
        access._current.reset(token)
    await access.charge(images=100)  # outside a request: nobody to charge
    assert _sample("comfybento_key_images_total", "metered") - before[0] == 6
    assert _sample("comfybento_key_gpu_seconds_total", "metered") - before[1] == pytest.approx(2.0)
    quota = await acl.admit(key, makes_images=True)
    assert quota[0][1].remaining == 4


def test_key_name_is_the_name_of_the_requests_key():
    key = ApiKey(name="owner-1", sha256=hash_key("owner-1"))
    scope = {"type": "http", "method": "POST", "path": "/jobs", "headers": [], "state": {"access_grant": Grant(key, _access(key))}}
    assert access.key_name(Request(scope)) == "owner-1" and access.key_name(scope) == "owner-1"
    assert access.key_name({"type": "http", "headers": []}) is None  # keys off: the middleware set nothing
    token = access._current.set(Grant(key, _access(key)))
    try:
        assert access.key_name() == "owner-1"
    finally:
        access._current.reset(token)
    assert access.key_name() is None


def _installed(tmp_path: Path, keys_yaml: str | None) -> Access | None:
    """`install` on a real BentoML service, as the front service does; the Access its middleware got (None: keys off)."""
    env = {"COMFYBENTO_MODELS": str(tmp_path / "models")}
    if keys_yaml is not None:
        (tmp_path / "keys.yaml").write_text(keys_yaml)
        env["COMFYBENTO_API_KEYS_FILE"] = str(tmp_path / "keys.yaml")
    service = bentoml.service(name="charged")(type("Charged", (), {}))
    access.install(service, Settings.from_env(env))
    return next((opts["access"] for cls, opts in service.middlewares if cls is AccessMiddleware), None)


async def test_charge_owner_charges_the_named_key_like_a_request(tmp_path):
    acl = _installed(tmp_path, f'- name: batch-owner\n  sha256: "{hash_key("b")}"\n  images_per_day: 10\n')
    assert acl is not None
    key = acl.by_name["batch-owner"]
    before = (_sample("comfybento_key_images_total", "batch-owner"), _sample("comfybento_key_gpu_seconds_total", "batch-owner"))
    await access.charge_owner("batch-owner", images=3, gpu_seconds=1.25)
    await access.charge_owner("batch-owner", images=4, gpu_seconds=0.0)
    assert _sample("comfybento_key_images_total", "batch-owner") - before[0] == 7
    assert _sample("comfybento_key_gpu_seconds_total", "batch-owner") - before[1] == pytest.approx(1.25)
    quota = await acl.admit(key, makes_images=True)  # the middleware's own buckets: 10 - 7 images left
    assert quota[0][0] == "quota" and quota[0][1].remaining == 3
    await access.charge_owner("batch-owner", images=3)
    refused = await acl.admit(key, makes_images=True)
    assert [(name, d.allowed) for name, d in refused] == [("quota", False)]  # its next live request is refused


async def test_charge_owner_is_a_no_op_for_an_unknown_name_or_without_keys(tmp_path):
    acl = _installed(tmp_path, f'- name: known\n  sha256: "{hash_key("k")}"\n  images_per_day: 5\n')
    assert acl is not None
    before = _sample("comfybento_key_images_total", "known")
    await access.charge_owner("nobody", images=5, gpu_seconds=1.0)
    await access.charge_owner(None, images=5, gpu_seconds=1.0)
    assert _sample("comfybento_key_images_total", "nobody") == 0 and _sample("comfybento_key_images_total", "known") == before
    assert (await acl.admit(acl.by_name["known"], makes_images=True))[0][1].remaining == 5
    assert _installed(tmp_path / "off", None) is None  # a service installed without keys: nothing to charge through
    await access.charge_owner("known", images=5)
    assert _sample("comfybento_key_images_total", "known") == before


async def test_limits_fail_open_when_redis_is_down():
    key = ApiKey(name="down", sha256=hash_key("down"), rate_per_min=1)
    acl = Access((key,), RedisBuckets(f"redis://127.0.0.1:{free_port()}/0"))
    before = REGISTRY.get_sample_value("comfybento_access_limiter_errors_total") or 0.0
    try:
        assert await acl.admit(key, makes_images=True) == [] and await acl.admit(key, makes_images=True) == []
    finally:
        await acl.buckets.aclose()
    assert REGISTRY.get_sample_value("comfybento_access_limiter_errors_total") - before == 2


# ---------------------------------------------------------------- every route, websockets too


@pytest.mark.parametrize(
    ("method", "path", "public"),
    [
        ("GET", "/healthz", True),
        ("POST", "/metrics", True),
        ("GET", "/", True),
        ("HEAD", "/docs", True),
        ("GET", "/docs.json", True),
        ("GET", "/playground/app.js", True),
        ("POST", "/", False),
        ("GET", "/jobs", False),
        ("GET", "/prompt", False),
        ("GET", "/view", False),
        ("GET", "/object_info", False),
        ("POST", "/upload/image", False),
        ("GET", "/api/v2/jobs", False),
        ("POST", "/txt2img/stream", False),
        ("GET", "/playground", False),
        ("GET", "/docs/../jobs", False),
    ],
)
def test_only_health_checks_and_the_static_pages_are_public(method, path, public):
    assert access.is_public({"type": "http", "method": method, "path": path}) is public


def _guarded_app(key: str):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(f"hello {access.key_name(ws)}")
        await ws.close()

    app = Starlette(
        routes=[
            Route("/jobs", lambda r: PlainTextResponse("jobs")),
            Route("/", lambda r: PlainTextResponse("page")),
            WebSocketRoute("/ws", echo),
        ]
    )
    return AccessMiddleware(app, _access(ApiKey(name="alice", sha256=hash_key(key))))


def test_websockets_need_a_key_in_the_header_or_the_token_parameter():
    from starlette.testclient import TestClient, WebSocketDenialResponse

    key = new_key()
    client = TestClient(_guarded_app(key))
    for url in ("/ws", "/ws?token=", f"/ws?token={key}x", "/ws?key=" + key):
        with pytest.raises(WebSocketDenialResponse) as refused:
            with client.websocket_connect(url):
                pass
        assert refused.value.status_code == 401, url
        message = refused.value.json()["error"]["message"]  # /ws is ComfyUI's: its shape
        assert "?token=<key>" in message or "not valid" in message
    with client.websocket_connect(f"/ws?token={key}") as ws:
        assert ws.receive_text() == "hello alice"
    with client.websocket_connect("/ws", headers={"Authorization": f"Bearer {key}"}) as ws:
        assert ws.receive_text() == "hello alice"
    with pytest.raises(WebSocketDenialResponse):  # a bad header is not rescued by a good token
        with client.websocket_connect(f"/ws?token={key}", headers={"Authorization": "Bearer nope"}):
            pass


def test_http_routes_take_no_token_parameter_and_the_page_is_public():
    from starlette.testclient import TestClient

    key = new_key()
    client = TestClient(_guarded_app(key))
    assert client.get(f"/jobs?token={key}").status_code == 401
    assert client.get("/jobs", headers={"Authorization": f"Bearer {key}"}).text == "jobs"
    assert client.get("/").text == "page"
    assert client.post("/").status_code == 401


async def test_a_server_without_the_denial_extension_gets_a_policy_close():
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "websocket.connect"}

    async def never(scope, receive, send) -> None:
        raise AssertionError("the app must not run")

    middleware = AccessMiddleware(never, _access(ApiKey(name="alice", sha256=hash_key(new_key()))))
    await middleware({"type": "websocket", "path": "/ws", "headers": [], "query_string": b""}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]
