"""ComfyUI's web editor at /comfy/ (front/editor.py) and each key's user data (front/compat/comfyui/userdata.py).

No server: the pure helpers are called directly, `EditorMiddleware` is driven as an ASGI app around a recording
inner app, and `UserData` works on a tmp_path folder. The wheel's real static files (comfyui-frontend-package, a
requirement) are served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from comfybento.config import Settings
from comfybento.errors import ComfyBentoError, Conflict, InvalidRequest, NotFound, TooLarge, describe
from comfybento.front import editor
from comfybento.front.compat.comfyui.userdata import SETTINGS_FILE, UserData
from comfybento.front.editor import (
    A_DAY,
    COOKIE,
    IMMUTABLE,
    NO_CACHE,
    EditorMiddleware,
    api_path,
    cache_control,
    cookie_key,
    frontend_dir,
    rewritten,
    static_file,
)
from comfybento.front.ownership import Caller, owner_tag
from comfybento.front.renderers import comfyui

KEY = "sk-test_Key.123+/="
HOST = "editor.example:3000"
MTIME = 1_700_000_000.5  # a file's modification time (seconds), set with os.utime so answers can be compared exactly


def comfyui_status(exc: BaseException) -> int:
    """The status ComfyUI's routes answer this error with (their renderer: an invalid request is a 400)."""
    return comfyui(describe(exc))[0]


def http_scope(path: str, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None, **more: Any) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "server": ("127.0.0.1", 3000),
            "client": ("127.0.0.1", 50000), "headers": [(b"host", HOST.encode()), *(headers or [])], **more}


def cookie(value: str = KEY) -> tuple[bytes, bytes]:
    return b"cookie", f"theme=dark; {COOKIE}={quote(value, safe='')}; other=1".encode()


def header(scope: dict[str, Any], name: bytes) -> list[bytes]:
    return [v for k, v in scope["headers"] if k.lower() == name]


# ================================================================ front/editor.py: the pure helpers


@pytest.mark.parametrize(("rest", "route"), [
    ("/api/prompt", "/prompt"),
    ("/api/history/abc", "/history/abc"),
    ("/api/object_info", "/object_info"),
    ("/api/userdata/workflows/a.json", "/userdata/workflows/a.json"),
    ("/api/v2/userdata", "/v2/userdata"),
    ("/api/settings/Comfy.Theme", "/settings/Comfy.Theme"),
    ("/ws", "/ws"),
])
def test_api_path_maps_comfyui_routes(rest: str, route: str) -> None:
    assert api_path(rest) == route


@pytest.mark.parametrize("rest", ["/api/jobs", "/api/../x", "/foo", "/api", "/api/", "/api/api/prompt", "/api/prompts",
                                  "/api/v1/images/generations", "/api/healthz", "/ws/x", "/prompt", "/", "",
                                  "/api/prompt/../../jobs", "/api/view/%2e%2e/%2e%2e/jobs", "/api/history/./x"])
def test_api_path_refuses_everything_else(rest: str) -> None:
    assert api_path(rest) is None


def _hashed_asset() -> Path:
    root = frontend_dir()
    assert root is not None, "comfyui-frontend-package (a requirement) is not installed"
    return next(p for p in sorted((root / "assets").iterdir()) if p.suffix == ".js" and editor.HASHED.search(p.name))


def test_static_file_serves_index_and_a_real_asset() -> None:
    root = frontend_dir()
    assert root is not None and (root / "index.html").is_file()
    assert static_file("/") == static_file("") == root / "index.html"
    asset = _hashed_asset()
    assert static_file(f"/assets/{asset.name}") == asset
    assert static_file("/materialdesignicons.min.css") == root / "materialdesignicons.min.css"


@pytest.mark.parametrize("rest", [
    "/../__init__.py",  # the package's own file beside static/: exists, outside the folder
    "/../static/index.html", "/%2e%2e/__init__.py", "/..%2f__init__.py", "/%2E%2E/%2e%2e/__init__.py",
    "/assets/../index.html", "/assets/../../__init__.py", "/./index.html", "//index.html/", "/assets//x.js",
    "/.hidden", "/assets/.x.js", "/assets", "/assets/", "/extensions", "/nope.js", "/assets/nope-AAAAAAAA.js",
])
def test_static_file_refuses_traversal_dot_files_folders_and_missing_files(rest: str) -> None:
    assert static_file(rest) is None


def test_static_file_refuses_a_link_out_of_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, outside = tmp_path / "static", tmp_path / "secret.txt"
    root.mkdir()
    (root / "index.html").write_text("<html>")
    outside.write_text("secret")
    (root / "link.txt").symlink_to(outside)
    monkeypatch.setattr(editor, "frontend_dir", lambda: root)
    assert static_file("/") == root / "index.html"
    assert static_file("/link.txt") is None


@pytest.mark.parametrize(("path", "expected"), [
    ("index.html", NO_CACHE),
    ("assets/index-BKdH1OFt.js", IMMUTABLE),
    ("assets/style-Dh8_sx-0.css", IMMUTABLE),
    ("assets/index-BKdH1OFt.js.map", A_DAY),
    ("assets/CREDIT.txt", A_DAY),
    ("extensions/core/x-BKdH1OFt.js", A_DAY),  # hashed-looking, but not in assets/
    ("materialdesignicons.min.css", A_DAY),
    ("fonts/a.woff2", A_DAY),
])
def test_cache_control(path: str, expected: str) -> None:
    assert cache_control(Path("/static") / path) == expected


def test_cookie_key_reads_the_editors_cookie() -> None:
    assert cookie_key(http_scope("/comfy/", headers=[cookie()])) == KEY
    assert cookie_key(http_scope("/comfy/", headers=[(b"cookie", f"{COOKIE}=plain-key".encode())])) == "plain-key"
    same_site = [cookie(), (b"origin", f"http://{HOST}".encode())]
    assert cookie_key(http_scope("/comfy/", headers=same_site)) == KEY


@pytest.mark.parametrize("headers", [
    [],
    [(b"cookie", b"theme=dark")],
    [(b"cookie", f"x{COOKIE}={KEY}".encode())],
    [cookie(), (b"origin", b"https://evil.example")],
    [cookie(), (b"origin", f"http://{HOST}.evil.example".encode())],
    [cookie(), (b"origin", b"null")],
])
def test_cookie_key_refuses_no_cookie_and_another_sites_origin(headers: list[tuple[bytes, bytes]]) -> None:
    assert cookie_key(http_scope("/comfy/", headers=headers)) is None


@pytest.mark.parametrize("value", ["", "a b", "a\x00b", "k\u00e9y", "a\tb"])
def test_cookie_key_refuses_a_malformed_token(value: str) -> None:
    assert cookie_key(http_scope("/comfy/", headers=[cookie(value)])) is None


def test_rewritten_adds_the_cookies_key_as_a_bearer_header() -> None:
    scope = http_scope("/comfy/api/prompt", "POST", headers=[cookie()], query_string=b"a=1")
    out = rewritten(scope, "/prompt")
    assert (out["path"], out["raw_path"]) == ("/prompt", b"/prompt")
    assert header(out, b"authorization") == [f"Bearer {KEY}".encode()]
    assert (out["method"], out["query_string"], out["type"]) == ("POST", b"a=1", "http")
    assert scope["path"] == "/comfy/api/prompt" and header(scope, b"authorization") == []  # the original is untouched
    assert rewritten(scope, "/userdata/100% a.json")["raw_path"] == b"/userdata/100%25%20a.json"


def test_rewritten_never_replaces_an_authorization_header() -> None:
    for name in (b"authorization", b"Authorization"):
        scope = http_scope("/comfy/api/prompt", headers=[cookie(), (name, b"Bearer other-key")])
        assert [v for k, v in rewritten(scope, "/prompt")["headers"] if k.lower() == b"authorization"] == [b"Bearer other-key"]


def test_rewritten_adds_nothing_without_a_usable_cookie() -> None:
    for headers in ([], [cookie(), (b"origin", b"https://evil.example")], [cookie("a b")]):
        out = rewritten(http_scope("/comfy/api/prompt", headers=headers), "/prompt")
        assert out["path"] == "/prompt" and header(out, b"authorization") == []


# ================================================================ EditorMiddleware as an ASGI app


class Recorder:
    """The inner app: records each scope it gets and answers 200 "inner"."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"inner"})


def call(keys_required: bool, scope: dict[str, Any]) -> tuple[int, dict[str, str], bytes, list[dict[str, Any]]]:
    """The middleware's answer to `scope`: status, headers, body and the scopes its inner app got."""
    inner = Recorder()
    sent: list[dict[str, Any]] = []
    received: list[bool] = []

    async def receive() -> dict[str, Any]:  # the (empty) body, then nothing: the client stays until the answer ends
        if received:
            await asyncio.Event().wait()
        received.append(True)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(EditorMiddleware(inner, keys_required)(scope, receive, send))
    start: dict[str, Any] = next((m for m in sent if m["type"] == "http.response.start"), {"status": 0, "headers": []})
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body, inner.scopes


def test_comfy_redirects_to_comfy_slash() -> None:
    status, headers, _, inner = call(True, http_scope("/comfy"))
    assert (status, headers["location"], inner) == (308, "/comfy/", [])


def test_comfy_slash_without_the_cookie_goes_to_the_login_page() -> None:
    status, headers, _, inner = call(True, http_scope("/comfy/"))
    assert (status, headers["location"], inner) == (303, "/comfy/login", [])
    status, headers, body, inner = call(True, http_scope("/comfy/login"))
    assert (status, inner) == (200, []) and headers["content-type"].startswith("text/html")
    assert body == editor.LOGIN_PAGE.read_bytes()


def test_comfy_slash_with_the_cookie_is_the_editors_index() -> None:
    root = frontend_dir()
    assert root is not None
    status, headers, body, inner = call(True, http_scope("/comfy/", headers=[cookie()]))
    assert (status, inner) == (200, []) and body == (root / "index.html").read_bytes()
    assert headers["content-type"].startswith("text/html") and headers["cache-control"] == NO_CACHE
    assert call(False, http_scope("/comfy/"))[2] == body  # keys off: no cookie needed
    status, headers, body, _ = call(True, http_scope("/comfy/", "HEAD", headers=[cookie()]))
    assert (status, body) == (200, b"") and headers["content-type"].startswith("text/html")


def test_an_asset_is_served_without_the_cookie() -> None:
    asset = _hashed_asset()
    status, headers, body, inner = call(True, http_scope(f"/comfy/assets/{asset.name}"))
    assert (status, inner, body) == (200, [], asset.read_bytes())
    assert headers["content-type"].startswith("text/javascript") and headers["cache-control"] == IMMUTABLE


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_editor_api_call_reaches_comfyuis_route_with_the_bearer_header(method: str) -> None:
    status, _, body, inner = call(True, http_scope("/comfy/api/prompt", method, headers=[cookie()], query_string=b"x=1"))
    assert (status, body, len(inner)) == (200, b"inner", 1)
    assert (inner[0]["path"], inner[0]["raw_path"], inner[0]["method"], inner[0]["query_string"]) == ("/prompt", b"/prompt", method, b"x=1")
    assert header(inner[0], b"authorization") == [f"Bearer {KEY}".encode()]


def test_the_editors_websocket_reaches_comfyuis_ws_with_the_bearer_header() -> None:
    scope = {**http_scope("/comfy/ws", headers=[cookie()]), "type": "websocket", "scheme": "ws"}
    scope.pop("method")
    *_, inner = call(True, scope)
    assert len(inner) == 1 and inner[0]["path"] == "/ws" and inner[0]["type"] == "websocket"
    assert header(inner[0], b"authorization") == [f"Bearer {KEY}".encode()]


@pytest.mark.parametrize("path", ["/prompt", "/jobs", "/v1/images/generations", "/comfyx", "/api/prompt"])
def test_a_path_outside_comfy_passes_through_unchanged(path: str) -> None:
    scope = http_scope(path, "POST", headers=[cookie()])
    status, _, body, inner = call(True, scope)
    assert (status, body) == (200, b"inner") and inner == [scope] and inner[0] is scope
    assert header(inner[0], b"authorization") == []


@pytest.mark.parametrize(("path", "method"), [("/comfy/api/jobs", "GET"), ("/comfy/nope.js", "GET"), ("/comfy/../jobs", "GET"),
                                              ("/comfy/login", "POST"), ("/comfy/", "POST")])
def test_what_the_editor_does_not_serve_goes_to_the_app_unchanged_without_a_key(path: str, method: str) -> None:
    scope = http_scope(path, method, headers=[cookie()])
    *_, inner = call(True, scope)
    assert inner == [scope] and header(inner[0], b"authorization") == []


def test_lifespan_passes_through() -> None:
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    *_, inner = call(True, scope)
    assert inner == [scope]


# ================================================================ front/compat/comfyui/userdata.py


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"COMFYBENTO_USERDATA_DIR": str(tmp_path / "userdata"), "COMFYBENTO_USERDATA_MAX_BYTES": "100",
                              "COMFYBENTO_USERDATA_QUOTA_BYTES": "250"})


@pytest.fixture
def alice(settings: Settings) -> UserData:
    return UserData.of(settings, Caller("alice"))


@pytest.fixture
def bob(settings: Settings) -> UserData:
    return UserData.of(settings, Caller("bob"))


def put(user: UserData, name: str, data: bytes = b"{}") -> Path:
    path = user.write(name, data)
    os.utime(path, (MTIME, MTIME))
    return path


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def test_a_folder_per_key_with_the_settings_limits(settings: Settings, alice: UserData, bob: UserData) -> None:
    open_user = UserData.of(settings, Caller(None))
    operator = UserData.of(settings, Caller("root", operator=True))
    assert alice.root == settings.userdata_dir / owner_tag("alice") and bob.root == settings.userdata_dir / owner_tag("bob")
    assert open_user.root == settings.userdata_dir / "default"
    assert len({alice.root, bob.root, open_user.root, operator.root}) == 4
    assert (alice.max_bytes, alice.quota_bytes) == (100, 250)


def test_one_keys_files_and_settings_are_not_anothers(settings: Settings, alice: UserData, bob: UserData) -> None:
    put(alice, "workflows/a.json", b'{"a": 1}')
    alice.save_settings({"Comfy.ColorPalette": "dark"})
    operator = UserData.of(settings, Caller("root", operator=True))
    for other in (bob, operator, UserData.of(settings, Caller(None))):
        with pytest.raises(NotFound):
            other.read("workflows/a.json")
        with pytest.raises(NotFound):
            other.listing("workflows", True, False, False)
        with pytest.raises(NotFound):
            other.delete("workflows/a.json")
        with pytest.raises(NotFound):
            other.move("workflows/a.json", "mine.json")
        assert other.settings() == {} and other.tree("") == []
    put(bob, "workflows/a.json", b'{"b": 2}')
    assert alice.read("workflows/a.json") == b'{"a": 1}' and bob.read("workflows/a.json") == b'{"b": 2}'
    assert alice.settings() == {"Comfy.ColorPalette": "dark"} and bob.settings() == {}


BAD_NAMES = ["../x", "a/../../x", "../" + "a" * 10, "/etc/passwd", "/x", "", "a//b", "a/", ".", "..", "./x", "a\\..\\b",
             "..\\x", "a\x00b", "a\nb", "C:x", "a" * 600]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_outside_the_folder_is_a_400_naming_it(tmp_path: Path, alice: UserData, name: str) -> None:
    put(alice, "ok.json")
    for attempt, field in ((lambda: alice.write(name, b"x"), "file"), (lambda: alice.read(name), "file"),
                           (lambda: alice.delete(name), "file"), (lambda: alice.move(name, "b.json"), "file"),
                           (lambda: alice.move("ok.json", name), "dest")):
        with pytest.raises(InvalidRequest) as refused:
            attempt()
        assert comfyui_status(refused.value) == 400 and refused.value.error_code == 422
        assert str(refused.value).startswith(f"{field}: {name!r}")
    assert files_under(tmp_path) == {f"userdata/{owner_tag('alice')}/ok.json"}


@pytest.mark.parametrize("name", ["../x", "..", "a/../../b", "a//b"])
def test_a_folder_outside_the_folder_is_a_400_naming_it(alice: UserData, name: str) -> None:
    put(alice, "workflows/a.json")
    for attempt, field in ((lambda: alice.listing(name, True, False, False), "dir"), (lambda: alice.tree(name), "path")):
        with pytest.raises(InvalidRequest) as refused:
            attempt()
        assert comfyui_status(refused.value) == 400 and field in str(refused.value) and repr(name.strip("/")) in str(refused.value)


@pytest.mark.parametrize("name", ["%2e%2e/x", "%2E%2E%2Fx", "..%2fx", "%2e%2e%5cx"])
def test_a_percent_encoded_dot_dot_never_leaves_the_folder(tmp_path: Path, alice: UserData, name: str) -> None:
    try:
        written = alice.write(name, b"x")
    except InvalidRequest as refused:
        assert comfyui_status(refused) == 400 and repr(name) in str(refused)
        written = None
    if written is not None:
        assert written.resolve().is_relative_to(alice.root.resolve()) and alice.read(name) == b"x"
    assert all(f.startswith(f"userdata/{owner_tag('alice')}/") for f in files_under(tmp_path))


@pytest.mark.parametrize("name", ["a" * 300, "workflows/" + "b" * 300 + ".json"])
@pytest.mark.parametrize("op", ["write", "read", "delete"])
def test_a_name_segment_too_long_for_the_file_system_is_a_400_naming_it(alice: UserData, name: str, op: str) -> None:
    """A 300-character segment is within MAX_NAME_CHARS (512) but over the file system's 255 bytes a name."""
    attempt = {"write": lambda: alice.write(name, b"{}"), "read": lambda: alice.read(name), "delete": lambda: alice.delete(name)}[op]
    with pytest.raises(ComfyBentoError) as refused:
        attempt()
    assert comfyui_status(refused.value) == 400 and repr(name) in str(refused.value)


def test_a_file_over_the_max_is_a_413_naming_the_limit(alice: UserData) -> None:
    assert alice.read(alice.write("max.bin", b"x" * 100).relative_to(alice.root).as_posix()) == b"x" * 100
    with pytest.raises(TooLarge) as refused:
        alice.write("big.bin", b"x" * 101)
    assert describe(refused.value)["status"] == comfyui_status(refused.value) == 413
    assert "'big.bin'" in str(refused.value) and "100 bytes" in str(refused.value) and "COMFYBENTO_USERDATA_MAX_BYTES" in str(refused.value)
    with pytest.raises(TooLarge):
        alice.save_settings({"long": "x" * 100})
    assert files_under(alice.root) == {"max.bin"}


def test_going_over_the_quota_is_a_413_naming_the_limit(alice: UserData, bob: UserData) -> None:
    put(alice, "a.bin", b"x" * 100)
    put(alice, "sub/b.bin", b"x" * 100)
    with pytest.raises(TooLarge) as refused:
        alice.write("c.bin", b"x" * 60)
    assert comfyui_status(refused.value) == 413
    assert "250" in str(refused.value) and "200 used" in str(refused.value) and "COMFYBENTO_USERDATA_QUOTA_BYTES" in str(refused.value)
    put(bob, "c.bin", b"x" * 60)  # another key's quota is its own
    put(alice, "a.bin", b"x" * 50)  # replacing a file counts its new size only
    put(alice, "c.bin", b"x" * 50)
    assert alice.used_bytes() == 200 and files_under(alice.root) == {"a.bin", "sub/b.bin", "c.bin"}


def test_write_without_overwrite_onto_a_file_is_a_409(alice: UserData) -> None:
    put(alice, "workflows/a.json", b"old")
    with pytest.raises(Conflict) as refused:
        alice.write("workflows/a.json", b"new", overwrite=False)
    assert describe(refused.value)["status"] == comfyui_status(refused.value) == 409 and "'workflows/a.json'" in str(refused.value)
    assert alice.read("workflows/a.json") == b"old"
    alice.write("workflows/a.json", b"new")
    assert alice.read("workflows/a.json") == b"new"
    alice.write("workflows/b.json", b"b", overwrite=False)
    assert alice.read("workflows/b.json") == b"b"


def test_write_onto_a_folder_is_a_400(alice: UserData) -> None:
    put(alice, "workflows/a.json")
    with pytest.raises(InvalidRequest) as refused:
        alice.write("workflows", b"x")
    assert comfyui_status(refused.value) == 400 and "'workflows'" in str(refused.value)


def test_write_under_a_name_that_is_a_file_is_a_4xx_naming_it(alice: UserData) -> None:
    put(alice, "workflows", b"a file, not a folder")
    with pytest.raises(ComfyBentoError) as refused:
        alice.write("workflows/a.json", b"{}")
    assert 400 <= comfyui_status(refused.value) < 500 and "'workflows/a.json'" in str(refused.value)


@pytest.mark.parametrize("name", ["nope.json", "workflows/nope.json", "workflows", "workflows/a.json/x"])
def test_read_and_delete_of_a_missing_file_are_404s(alice: UserData, name: str) -> None:
    put(alice, "workflows/a.json")
    for attempt in (alice.read, alice.delete):
        with pytest.raises(NotFound) as refused:
            attempt(name)
        assert comfyui_status(refused.value) == 404 and repr(name) in str(refused.value)
    alice.delete("workflows/a.json")
    with pytest.raises(NotFound):
        alice.read("workflows/a.json")


def test_move(alice: UserData) -> None:
    put(alice, "workflows/a.json", b"a")
    put(alice, "workflows/b.json", b"b")
    with pytest.raises(Conflict) as refused:
        alice.move("workflows/a.json", "workflows/b.json", overwrite=False)
    assert comfyui_status(refused.value) == 409 and "dest: 'workflows/b.json'" in str(refused.value)
    assert (alice.read("workflows/a.json"), alice.read("workflows/b.json")) == (b"a", b"b")
    assert alice.move("workflows/a.json", "archive/a.json", overwrite=False) == alice.root / "archive" / "a.json"
    assert alice.read("archive/a.json") == b"a" and files_under(alice.root) == {"archive/a.json", "workflows/b.json"}
    alice.move("archive/a.json", "workflows/b.json")
    assert files_under(alice.root) == {"workflows/b.json"} and alice.read("workflows/b.json") == b"a"
    with pytest.raises(NotFound) as missing:
        alice.move("archive/a.json", "x.json")
    assert comfyui_status(missing.value) == 404 and "'archive/a.json'" in str(missing.value)


@pytest.mark.parametrize("dest", ["workflows", "workflows/b.json/c.json"])
def test_move_onto_a_folder_or_under_a_file_is_a_4xx_naming_it(alice: UserData, dest: str) -> None:
    put(alice, "a.json", b"a")
    put(alice, "workflows/b.json", b"b")
    with pytest.raises(ComfyBentoError) as refused:
        alice.move("a.json", dest)
    assert 400 <= comfyui_status(refused.value) < 500 and repr(dest) in str(refused.value)
    assert files_under(alice.root) == {"a.json", "workflows/b.json"}


@pytest.fixture
def saved(alice: UserData) -> UserData:
    """alice with workflows/a.json (2 bytes), workflows/sub/B.json (3), workflows/sub/deeper/c.json (4), other/x.txt."""
    for name, data in (("workflows/a.json", b"aa"), ("workflows/sub/B.json", b"bbb"), ("workflows/sub/deeper/c.json", b"cccc"),
                       ("other/x.txt", b"x")):
        put(alice, name, data)
    (alice.root / "workflows" / ".upload-abc").write_bytes(b"half")  # a write in progress: never listed
    return alice


@pytest.mark.parametrize("directory", ["workflows", "workflows/", "/workflows"])
def test_listing_as_comfyuis_userdata(saved: UserData, directory: str) -> None:
    assert saved.listing(directory, False, False, False) == ["a.json"]
    assert sorted(saved.listing(directory, True, False, False)) == ["a.json", "sub/B.json", "sub/deeper/c.json"]
    assert sorted(saved.listing(directory, True, False, True)) == [
        ["a.json", "a.json"], ["sub/B.json", "sub", "B.json"], ["sub/deeper/c.json", "sub", "deeper", "c.json"]]
    assert saved.listing("workflows/sub", False, False, True) == [["B.json", "B.json"]]


def test_listing_of_a_missing_folder_is_a_404(saved: UserData) -> None:
    with pytest.raises(NotFound) as refused:
        saved.listing("nope", True, True, False)
    assert comfyui_status(refused.value) == 404 and "'nope'" in str(refused.value)


def test_listing_full_info_as_comfyuis_userdata(saved: UserData) -> None:
    """ComfyUI's full_info entry: path (relative to the listed folder), size, modified and created (os.path.getmtime
    and getctime: seconds since the epoch); the editor keeps `modified` as the file's lastModified."""
    found = sorted(saved.listing("workflows", True, True, False), key=lambda e: e["path"])
    assert [(e["path"], e["size"]) for e in found] == [("a.json", 2), ("sub/B.json", 3), ("sub/deeper/c.json", 4)]
    for entry in found:
        stat = (saved.root / "workflows" / entry["path"]).stat()
        assert set(entry) == {"path", "size", "modified", "created"}
        assert entry["modified"] == pytest.approx(MTIME) and entry["created"] == pytest.approx(stat.st_ctime)
    assert saved.listing("workflows", False, True, True) == [found[0]]  # full_info wins over split


def test_tree_as_comfyuis_v2_userdata(saved: UserData) -> None:
    tree = saved.tree("")
    assert [(e["type"], e["path"]) for e in tree] == [  # folders first, then by name, case-insensitively
        ("directory", "workflows/sub/deeper"), ("directory", "other"), ("directory", "workflows/sub"), ("directory", "workflows"),
        ("file", "workflows/a.json"), ("file", "workflows/sub/B.json"), ("file", "workflows/sub/deeper/c.json"), ("file", "other/x.txt")]
    for entry in tree:
        assert entry["name"] == entry["path"].rsplit("/", 1)[-1]
        if entry["type"] == "file":
            assert set(entry) == {"name", "path", "type", "size", "modified"} and entry["modified"] == pytest.approx(MTIME)
            assert entry["size"] == (saved.root / entry["path"]).stat().st_size
        else:
            assert set(entry) == {"name", "path", "type"}
    sub = saved.tree("workflows/sub")
    assert [(e["type"], e["path"]) for e in sub] == [("directory", "workflows/sub/deeper"), ("file", "workflows/sub/B.json"),
                                                     ("file", "workflows/sub/deeper/c.json")]


def test_tree_of_a_missing_folder_or_a_file(saved: UserData, bob: UserData) -> None:
    assert bob.tree("") == []  # a new key: nothing yet
    with pytest.raises(NotFound) as missing:
        saved.tree("nope")
    assert comfyui_status(missing.value) == 404 and "'nope'" in str(missing.value)
    with pytest.raises(InvalidRequest) as a_file:
        saved.tree("workflows/a.json")
    assert comfyui_status(a_file.value) == 400 and "'workflows/a.json'" in str(a_file.value)


def test_settings_round_trip(alice: UserData) -> None:
    alice = dataclasses.replace(alice, max_bytes=4096, quota_bytes=4096)
    assert alice.settings() == {}
    values = {"Comfy.ColorPalette": "light", "Comfy.Graph.ZoomSpeed": 1.1, "Comfy.Keybinding.NewBindings": [{"key": "s"}]}
    alice.save_settings(values)
    assert alice.settings() == values
    assert json.loads((alice.root / SETTINGS_FILE).read_bytes()) == values
    assert alice.read(SETTINGS_FILE) == (alice.root / SETTINGS_FILE).read_bytes()
    alice.save_settings({**alice.settings(), "Comfy.ColorPalette": "dark"})
    assert alice.settings()["Comfy.ColorPalette"] == "dark" and alice.settings()["Comfy.Graph.ZoomSpeed"] == 1.1


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b'"a"', b""])
def test_unreadable_settings_read_as_none(alice: UserData, content: bytes) -> None:
    alice.write(SETTINGS_FILE, content)
    assert alice.settings() == {}


# ---------------------------------------------------------------- custom nodes' web folders


@pytest.fixture
def web_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One custom node module, `my nodes`, whose web folder holds a script, a nested one, a stylesheet and a hidden file."""
    folder = tmp_path / "web"
    (folder / "sub").mkdir(parents=True)
    (folder / "main.js").write_text("// main")
    (folder / "sub" / "more.js").write_text("// more")
    (folder / "style.css").write_text("a {}")
    (folder / ".hidden.js").write_text("// hidden")
    (tmp_path / "secret.js").write_text("// outside the folder")
    monkeypatch.setattr(editor, "loaded_web_dirs", lambda settings: {"my nodes": folder, "gone": tmp_path / "missing"})
    return folder


def test_extension_scripts_list_the_frontends_own_then_each_modules_as_comfyui_does(web_dirs: Path) -> None:
    scripts = editor.extension_scripts()
    own = [s for s in scripts if s.startswith("/extensions/core/")]
    assert own and "/extensions/core/groupNode.js" in own  # the wheel's static/extensions/, as ComfyUI lists them
    assert scripts[len(own):] == ["/extensions/my%20nodes/main.js", "/extensions/my%20nodes/sub/more.js"]


def test_extension_file_serves_a_modules_web_folder_and_nothing_outside_it(web_dirs: Path) -> None:
    assert editor.extension_file("/extensions/my%20nodes/main.js") == (web_dirs / "main.js").resolve()
    assert editor.extension_file("/extensions/my%20nodes/sub/more.js") == (web_dirs / "sub" / "more.js").resolve()
    assert editor.extension_file("/extensions/my%20nodes/style.css") == (web_dirs / "style.css").resolve()
    for rest in ("/extensions/my%20nodes/../secret.js", "/extensions/my%20nodes/%2e%2e/secret.js", "/extensions/my%20nodes/.hidden.js",
                 "/extensions/my%20nodes/", "/extensions/my%20nodes/sub", "/extensions/other/main.js", "/extensions/gone/main.js",
                 "/extensions/", "/templates/main.js"):
        assert editor.extension_file(rest) is None, rest
