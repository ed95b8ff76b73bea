"""Tenant isolation on every route of every API: one real `bentoml serve` with keys on (alice, bob and the operator ops).

alice makes one of everything (a job, a live output delivered as a URL, ComfyUI uploads and prompts, a Comfy API v2
asset and job, a websocket client id); then every route is walked three times, from a table with one row per route:
as bob, who must get exactly what an unknown id or name gets (ids and names not confirmed) and change nothing; as
ops, who sees and manages everything; as alice, who succeeds. The table is checked against the routes the app
serves (its OpenAPI document plus the routes left out of it), so a new route without a row fails this test.
"""

from __future__ import annotations

import copy
import io
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from websockets.sync.client import ClientConnection, connect

from comfybento.front.keys import hash_key, new_key
from comfybento.front.ownership import owner_tag
from tests.e2e.conftest import JOB_ENV, serving
from tests.helpers import GRAPHS, ROOT, make_workflows_dir, sample_image, service_env

pytestmark = pytest.mark.e2e

TXT2IMG = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
IMG2IMG = json.loads((GRAPHS / "img2img.json").read_text())
SMALL = {"prompt": "a kite", "width": 64, "height": 64, "steps": 1}
TERMINAL = ("succeeded", "failed", "cancelled")
COMFY = ("", "/api")  # ComfyUI serves each of its routes at /x and /api/x


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    sample_image(64 + seed, 64).save(buf, format="PNG")
    return buf.getvalue()


def _img2img(image: Any) -> dict[str, Any]:
    graph = copy.deepcopy(IMG2IMG)
    graph["10"]["inputs"]["image"] = image
    graph["3"]["inputs"]["steps"] = 1
    return graph


def _txt2img(steps: int = 1, size: int = 64) -> dict[str, Any]:
    graph = copy.deepcopy(TXT2IMG)
    graph["3"]["inputs"]["steps"] = steps
    graph["5"]["inputs"].update(width=size, height=size)
    return graph


BLOCKER_SAMPLERS = 8


def _blocker(steps: int) -> dict[str, Any]:
    """The test's `blocker` workflow: txt2img at the CPU engine's largest image with a chain of samplers after node 3,
    each one's steps a request field. Sent with ComfyUI's most steps (10000) in every sampler, it outlasts the walk on
    any machine (one 10000-step sampler at 128² did not on CI's); the interrupt row, last, stops it."""
    graph = _txt2img(steps, 448)
    previous = "3"
    for n in range(1, BLOCKER_SAMPLERS):
        sampler = copy.deepcopy(graph["3"])
        sampler["inputs"]["latent_image"] = [previous, 0]
        previous = str(1000 + n)
        graph[previous] = sampler
    decode = next(node for node in graph.values() if node["class_type"] == "VAEDecode")
    decode["inputs"]["samples"] = [previous, 0]
    return graph


def _add_blocker(workflows: Path) -> Path:
    """workflows/ with the blocker workflow in it: its own graph's steps are 1 (the startup warm-up runs it)."""
    (workflows / "blocker.json").write_text(json.dumps(_blocker(1)))
    samplers = ["3"] + [str(1000 + n) for n in range(1, BLOCKER_SAMPLERS)]
    (workflows / "blocker.yaml").write_text("params:\n" + "".join(
        f'  - {{node: "{node}", input: steps, name: steps_{i}}}\n' for i, node in enumerate(samplers)))
    return workflows


@dataclass
class World:
    url: str
    keys: dict[str, str]
    refs: dict[str, str] = field(default_factory=dict)  # alice's objects
    fake: dict[str, str] = field(default_factory=dict)  # the same names, of objects that do not exist
    sockets: dict[str, ClientConnection] = field(default_factory=dict)

    def call(self, who: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=120, **kw)

    def ok(self, who: str | None, method: str, path: str, status: int = 200, **kw: Any) -> httpx.Response:
        r = self.call(who, method, _fill(path, self.refs), **_fill(kw, self.refs))
        assert r.status_code == status, f"{who} {method} {path}: {r.status_code} {r.text[:300]}"
        return r

    def hidden(self, method: str, path: str, status: int, **kw: Any) -> httpx.Response:
        """bob's answer for alice's object: `status`, and exactly the answer for an object that does not exist."""
        real = self.call("bob", method, _fill(path, self.refs), **_fill(kw, self.refs))
        unknown = self.call("bob", method, _fill(path, self.fake), **_fill(kw, self.fake))
        assert real.status_code == status, f"bob {method} {path}: {real.status_code} {real.text[:300]}"
        assert self._shape(real, self.refs, self.fake) == self._shape(unknown), f"bob {method} {path}: {real.text[:300]}"
        return real

    @staticmethod
    def _shape(r: httpx.Response, real: dict[str, str] | None = None, fake: dict[str, str] | None = None) -> tuple[int, str]:
        """Status and body, without the request id, and (given real and fake) with each real name written as its fake."""
        text = r.text
        for name in sorted(fake or {}, key=lambda n: -len((real or {})[n])):
            text = text.replace((real or {})[name], (fake or {})[name])
        return r.status_code, re.sub(r'"request_id":\s*"[^"]*"', "", text)

    def state(self, job_id: str) -> str:
        return str(self.ok("alice", "GET", f"/jobs/{job_id}").json()["state"])

    def wait(self, job_id: str, states: tuple[str, ...] = TERMINAL, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.state(job_id)) not in states:
            assert time.monotonic() < deadline, f"job {job_id} stayed {state}"
            time.sleep(0.2)
        return state


def _fill(value: Any, refs: dict[str, str]) -> Any:
    """A request argument with each {ref} in its strings replaced by that ref's value."""
    if isinstance(value, str):
        return re.sub(r"\{(\w+)\}", lambda m: refs.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: _fill(v, refs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_fill(v, refs) for v in value)
    return value


# ---------------------------------------------------------------------- the server and alice's objects


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("isolation")
    keys = {name: new_key() for name in ("alice", "bob", "ops")}
    (root / "keys.yaml").write_text("".join(f'- name: {n}\n  sha256: "{hash_key(k)}"\n' + ("  operator: true\n" if n == "ops" else "")
                                            for n, k in keys.items()))
    env = {**service_env(_add_blocker(make_workflows_dir(root / "workflows", ("img2img",))), root / "work"), **JOB_ENV,
           "COMFYBENTO_API_KEYS_FILE": str(root / "keys.yaml"), "COMFYBENTO_JOB_CONCURRENCY": "1",
           # alice's long prompt runs through the whole walk (interrupted by its last row): no time limit cuts it
           "COMFYBENTO_MAX_STEPS": "10000", "COMFYBENTO_MAX_EXECUTION_S": "0"}
    with serving(env, root) as url:
        w = World(url, keys)
        _make(w)
        try:
            yield w
        finally:
            for sock in w.sockets.values():
                sock.close()


def _live_url(w: World, who: str, path: str) -> tuple[str, str]:
    """(folder, name) of an output of a live request delivered as a URL: POST /txt2img, or its /stream."""
    if path.endswith("/stream"):
        r = w.ok(who, "POST", path, json={**SMALL, "output_delivery": "url"})
        url = next(json.loads(line[5:])["url"] for line in r.text.splitlines() if line.startswith("data:") and '"url"' in line)
    else:
        url = w.ok(who, "POST", path, json={**SMALL, "output_delivery": "url"}).json()["outputs"][0]["url"]
    folder, name = url.split("/outputs/", 1)[1].split("/")
    return folder, name


def _make(w: World) -> None:
    r, f = w.refs, w.fake
    _make_userdata(w)
    upload = {"only": ("only-alice.png", "only-nobody.png"), "shared": ("shared.png", "shared.png")}
    for ref, (name, fake) in upload.items():
        w.ok("alice", "POST", "/upload/image", files={"image": (name, _png(len(ref)), "image/png")})
        r[ref], f[ref] = name, fake
    asset = w.ok("alice", "POST", "/api/v2/assets", 201, files={"file": ("a.png", _png(1), "image/png")}).json()
    r["asset"], r["hash"] = asset["id"], asset["hash"]
    r["ops_asset"] = w.ok("alice", "POST", "/api/v2/assets", 201, files={"file": ("b.png", _png(2), "image/png")}).json()["id"]
    w.ok("alice", "POST", "/api/v2/assets", 201, files={"file": ("dup.png", _png(3), "image/png")})
    r["job"] = w.ok("alice", "POST", "/jobs", 202, json={"workflow": "txt2img", "items": [SMALL]}).json()["id"]
    r["prompt"] = w.ok("alice", "POST", "/prompt", json={"prompt": _img2img(r["only"])}).json()["prompt_id"]
    v2_graph = _img2img({"__type": "core/ASSET", "info": {"id": r["asset"]}})
    r["v2job"] = w.ok("alice", "POST", "/api/v2/jobs", 201, json={"workflow": v2_graph}).json()["id"]
    r["live"], r["live_name"] = _live_url(w, "alice", "/txt2img")
    r["stream"], r["stream_name"] = _live_url(w, "alice", "/txt2img/stream")
    r["bobs_live"], r["bobs_live_name"] = _live_url(w, "bob", "/txt2img")
    for api in ("generations", "edits"):
        r[f"bobs_openai_{api}"] = _openai_url(w, "bob", api)
    for job in (r["job"], r["prompt"], r["v2job"]):
        assert w.wait(job) == "succeeded"
    [item] = w.ok("alice", "GET", "/jobs/{job}/results").json()["items"]
    r["job_file"] = item["outputs"][0]["url"].rsplit("/", 1)[1]
    [image] = w.ok("alice", "GET", "/history/{prompt}").json()[r["prompt"]]["outputs"]["9"]["images"]
    r["prompt_file"] = image["filename"]
    r["output_asset"] = f"out_{r['v2job']}_0_0"
    # Sockets under one client id, one per key, before alice's prompt that keeps the engine busy while the routes are walked.
    for who in ("alice", "bob", "ops"):
        w.sockets[who] = connect(f"{w.url.replace('http', 'ws')}/ws?clientId=shared-client&token={w.keys[who]}", open_timeout=30)
    blocker = {"prompt": _blocker(10000), "client_id": "shared-client"}
    r["running"] = w.ok("alice", "POST", "/prompt", json=blocker).json()["prompt_id"]
    assert w.wait(r["running"], ("running",)) == "running"
    # Queued behind it (the runner takes one item at a time): for the routes that cancel.
    for ref in ("queued", "ops_queued"):
        r[ref] = w.ok("alice", "POST", "/prompt", json={"prompt": _txt2img()}).json()["prompt_id"]
    for ref in ("pending", "ops_job"):
        r[ref] = w.ok("alice", "POST", "/jobs", 202, json={"workflow": "txt2img", "items": [SMALL]}).json()["id"]
    for ref in ("job", "prompt", "v2job", "running", "queued", "ops_queued", "pending", "ops_job"):
        f[ref] = uuid.uuid4().hex
    f.update(asset=str(uuid.uuid4()), ops_asset=str(uuid.uuid4()), hash="blake3:" + uuid.uuid4().hex * 2,
             output_asset=f"out_{f['v2job']}_0_0", job_file=r["job_file"], prompt_file=r["prompt_file"],
             live=f"{uuid.uuid4().hex}-{owner_tag('alice')}", live_name=r["live_name"],
             stream=f"{uuid.uuid4().hex}-{owner_tag('alice')}", stream_name=r["stream_name"])


def _unchanged(w: World) -> None:
    """What bob's walk must have left as it was: alice's pending work, history, uploads and assets."""
    assert w.state(w.refs["running"]) == "running", "the engine finished alice's long prompt before the walk did"
    for ref in ("queued", "ops_queued", "pending", "ops_job"):
        assert w.state(w.refs[ref]) == "queued", ref
    assert w.refs["prompt"] in w.ok("alice", "GET", "/history/{prompt}").json()
    assert w.ok("alice", "GET", "/view", params={"filename": "{shared}", "type": "input"}).content == _png(len("shared"))
    w.ok("alice", "GET", "/api/v2/assets/{asset}")


# ---------------------------------------------------------------------- the table: one row per route

Check = Callable[[World], Any]


@dataclass(frozen=True)
class Row:
    other: Check | None  # bob: what an unknown id or name gets, and no effect (None: nothing to check, `why` says why)
    owner: Check | None = None  # alice is served
    operator: Check | None = None  # ops sees (and manages) alice's objects
    last: bool = False  # alice's check destroys or cancels what other rows use: run it after theirs
    why: str = ""


def _alices_ids(w: World) -> list[str]:
    return [v for k, v in w.refs.items() if len(v) >= 32 and not k.startswith("bobs")]


def hidden(method: str, path: str, status: int = 404, prefixes: tuple[str, ...] = ("",), **kw: Any) -> Check:
    return lambda w: [w.hidden(method, prefix + path, status, **kw) for prefix in prefixes]


def both(check: Callable[[World, str], Any]) -> tuple[Check, Check]:
    """The same check for alice (the owner) and for the operator."""
    return (lambda w: check(w, "alice")), (lambda w: check(w, "ops"))


def reads(method: str, path: str, status: int = 200, **kw: Any) -> tuple[Check, Check]:
    return both(lambda w, who: w.ok(who, method, path, status, **kw))


def private(method: str, path: str, status: int = 404, prefixes: tuple[str, ...] = ("",), **kw: Any) -> Row:
    """A read of one of alice's objects: bob gets the answer for an unknown one; alice and the operator get it."""
    return Row(hidden(method, path, status, prefixes, **kw), *reads(method, path, **kw))


def listing(path: str, ref: str, prefixes: tuple[str, ...] = ("",)) -> Row:
    """alice's object is in her listing and the operator's; no id of hers is in bob's."""
    def bob(w: World) -> None:
        for prefix in prefixes:
            text = w.ok("bob", "GET", prefix + path).text
            assert not [v for v in _alices_ids(w) if v in text], text[:300]

    def sees(w: World, who: str) -> None:
        assert w.refs[ref] in w.ok(who, "GET", path).text, (who, path)

    return Row(bob, *both(sees))


def served(method: str, path: str) -> Row:
    return Row(lambda w: w.ok("bob", method, path), why="serves no one's objects: any key is served")


def public(path: str) -> Row:
    return Row(lambda w: w.ok(None, "GET", path), why="public (no key): health checks and metrics")


def _cancelled(w: World, who: str, method: str, path: str, ref: str, **kw: Any) -> None:
    w.ok(who, method, path, **kw)
    assert w.state(w.refs[ref]) == "cancelled", (who, path)


# jobs and live outputs


def _bobs_usage(w: World) -> None:
    usage = w.ok("bob", "GET", "/usage").json()
    assert usage["scope"] == "own" and [k["key"] for k in usage["keys"]] == ["bob"], usage


def _sees_alices_usage(w: World, who: str) -> None:
    usage = w.ok(who, "GET", "/usage").json()
    assert "alice" in {k["key"] for k in usage["keys"]}, (who, usage)


def _bobs_job(w: World) -> None:
    job = w.ok("bob", "POST", "/jobs", 202, json={"workflow": "txt2img", "items": [SMALL]}).json()
    assert job["owner"] == "bob" and w.call("alice", "GET", f"/jobs/{job['id']}").status_code == 404
    w.ok("bob", "POST", f"/jobs/{job['id']}/cancel")


def _bobs_live_output(w: World) -> None:
    assert w.call("alice", "GET", "/outputs/{bobs_live}/{bobs_live_name}".format(**w.refs)).status_code == 404
    w.ok("bob", "GET", "/outputs/{bobs_live}/{bobs_live_name}")


def _openai_url(w: World, who: str, api: str) -> str:
    """The path of an image of `who`'s OpenAI images request, delivered as a URL (made before the engine is kept busy)."""
    path = f"/v1/images/{api}"
    if api == "edits":
        r = w.ok(who, "POST", path, data={"prompt": "a kite", "response_format": "url"}, files={"image": ("a.png", _png(1), "image/png")})
    else:
        r = w.ok(who, "POST", path, json={"prompt": "a kite", "size": "64x64", "response_format": "url"})
    return "/outputs/" + r.json()["data"][0]["url"].split("/outputs/", 1)[1]


def _bobs_openai_url(w: World, api: str) -> None:
    """bob's OpenAI images delivered as URLs are his: alice gets a 404; without a key, OpenAI's 401."""
    assert w.call("alice", "GET", w.refs[f"bobs_openai_{api}"]).status_code == 404
    w.ok("bob", "GET", w.refs[f"bobs_openai_{api}"])
    anonymous = w.call(None, "POST", f"/v1/images/{api}", json={"prompt": "a kite"})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error", anonymous.text[:300]


# ComfyUI


MASK = ("mask.png", _png(0), "image/png")


def _upload_image(w: World, who: str, data: bytes) -> None:
    """Each key names its uploads in its own folder: alice's name is neither confirmed (no renaming) nor overwritten."""
    for prefix in COMFY:
        for overwrite in ("false", "true"):
            files = {"image": ("shared.png", data, "image/png")}
            r = w.ok(who, "POST", prefix + "/upload/image", files=files, data={"overwrite": overwrite})
            assert r.json()["name"] == "shared.png", r.text
        assert w.ok(who, "GET", "/view", params={"filename": "shared.png", "type": "input"}).content == data


def _own_mask(w: World) -> None:
    ref = json.dumps({"filename": w.refs["only"], "subfolder": "", "type": "input"})
    assert w.ok("alice", "POST", "/upload/mask", files={"image": MASK}, data={"original_ref": ref}).json()["type"] == "input"


def _comfy_actions(w: World) -> None:
    """bob clears, deletes and interrupts: nothing of alice's changes (_unchanged checks)."""
    ids = [w.refs[ref] for ref in ("running", "queued", "ops_queued", "prompt")]
    for prefix in COMFY:
        w.ok("bob", "POST", prefix + "/queue", json={"clear": True})
        w.ok("bob", "POST", prefix + "/queue", json={"delete": ids})
        w.ok("bob", "POST", prefix + "/interrupt")
        w.ok("bob", "POST", prefix + "/interrupt", json={"prompt_id": w.refs["running"]})


def _history_actions(w: World) -> None:
    for prefix in COMFY:
        w.ok("bob", "POST", prefix + "/history", json={"delete": [w.refs["prompt"]]})
        w.ok("bob", "POST", prefix + "/history", json={"clear": True})


def _forget_prompt(w: World) -> None:
    w.ok("alice", "POST", "/history", json={"delete": [w.refs["prompt"]]})
    assert w.ok("alice", "GET", "/history/{prompt}").json() == {}


def _queue_counts(w: World) -> None:
    remaining = {who: w.ok(who, "GET", "/prompt").json()["exec_info"]["queue_remaining"] for who in ("alice", "bob", "ops")}
    bobs = [j for j in w.ok("bob", "GET", "/jobs").json()["jobs"] if j["state"] not in TERMINAL]
    assert remaining["bob"] == len(bobs) and remaining["alice"] >= 5 and remaining["ops"] >= remaining["alice"], remaining


def _ws(w: World) -> None:
    """A socket gets the events of its own key's prompts only, whichever client id it names (all three named one id)."""
    def received(who: str) -> list[str]:
        got = []
        while True:
            try:
                message = w.sockets[who].recv(timeout=0.5)
            except TimeoutError:
                return got
            if isinstance(message, str):  # (binary frames are previews)
                got.append(message)

    alice, bob, ops = received("alice"), received("bob"), received("ops")
    assert any(m["type"] == "execution_start" and m["data"]["prompt_id"] == w.refs["running"] for m in map(json.loads, alice)), alice[:5]
    for messages in (bob, ops):
        assert json.loads(messages[0])["data"]["sid"] == "shared-client", messages[:5]
        assert not [v for v in _alices_ids(w) if any(v in m for m in messages)], messages[:5]


# ComfyUI's editor: each key's settings and user data are its own, the operator's included (a person's editor state)


USERDATA = b'{"nodes": [], "by": "alice"}'


def _make_userdata(w: World) -> None:
    r, f = w.refs, w.fake
    r["udfile"], f["udfile"] = "workflows%2Falice-flow.json", "workflows%2Fnobody-flow.json"
    r["udmove"], f["udmove"] = "workflows%2Falice-flow.json/move/workflows%2Fmoved.json", "workflows%2Fnobody-flow.json/move/workflows%2Fmoved.json"
    r["udname"], f["udname"] = "workflows/alice-flow.json", "workflows/nobody-flow.json"  # as answers name them
    r["setting"], f["setting"] = "Alice.Setting", "Nobody.Setting"
    w.ok("alice", "POST", "/userdata/{udfile}", content=USERDATA)
    for who in ("bob", "ops"):  # each has a saved workflow of its own
        w.ok(who, "POST", "/userdata/workflows%2Fown.json", content=b"{}")
    w.ok("alice", "POST", "/settings/Alice.Setting", json="alice-only-value")


def _alices_userdata_unchanged(w: World, who: str = "alice") -> None:
    assert w.ok(who, "GET", "/userdata/{udfile}").content == USERDATA
    assert w.ok(who, "GET", "/settings").json()["Alice.Setting"] == "alice-only-value"


def _not_alices(w: World, who: str, method: str, path: str, **kw: Any) -> None:
    """`who` is served its own: neither alice's file nor her setting's value in the answer."""
    for prefix in COMFY if path != "/v2/userdata" else ("",):
        text = w.ok(who, method, prefix + path, **kw).text
        assert "alice-flow" not in text and "alice-only-value" not in text, (who, path, text[:300])


def _kept_from(who: str, method: str, path: str, status: int = 404, **kw: Any) -> Check:
    """`who` (the operator too) gets what a name no one has gets, and alice's file and settings stay as they were."""
    def check(w: World) -> None:
        for prefix in COMFY:
            real = w.call(who, method, prefix + _fill(path, w.refs), **kw)
            unknown = w.call(who, method, prefix + _fill(path, w.fake), **kw)
            assert real.status_code == status and w._shape(real, w.refs, w.fake) == w._shape(unknown), (who, path, real.text[:300])
        _alices_userdata_unchanged(w)
    return check


def _userdata(method: str, path: str, status: int = 404, **kw: Any) -> Row:
    return Row(_kept_from("bob", method, path, status, **kw), _alices_userdata_unchanged, _kept_from("ops", method, path, status, **kw))


def _own_settings(w: World, who: str) -> None:
    w.ok(who, "POST", "/settings", json={"Alice.Setting": f"{who}'s own"})
    w.ok(who, "POST", "/settings/Alice.Setting", json=f"{who}'s own")
    assert w.ok(who, "GET", "/settings/Alice.Setting").json() == f"{who}'s own"
    _alices_userdata_unchanged(w)


def _own_file(w: World, who: str) -> None:
    """`who` saves a file of alice's name: its own, read back, then deleted; alice's is untouched."""
    w.ok(who, "POST", "/userdata/{udfile}", content=b'{"by": "' + who.encode() + b'"}')
    assert w.ok(who, "GET", "/userdata/{udfile}").json() == {"by": who}
    w.ok(who, "DELETE", "/userdata/{udfile}", 204)
    _alices_userdata_unchanged(w)


def _alices_listing(w: World) -> None:
    assert w.ok("alice", "GET", "/userdata", params={"dir": "workflows", "recurse": "true"}).json() == ["alice-flow.json"]
    assert "alice-flow.json" in w.ok("alice", "GET", "/v2/userdata").text


def _alice_moves_and_deletes(w: World) -> None:
    assert w.ok("alice", "POST", "/userdata/{udmove}").json() == "workflows/moved.json"
    w.ok("alice", "DELETE", "/userdata/workflows%2Fmoved.json", 204)
    assert w.call("alice", "GET", "/userdata/workflows%2Fmoved.json").status_code == 404


def _editor_rows() -> dict[tuple[str, str], Row]:
    listed = {"dir": "workflows", "recurse": "true"}
    return {
        ("GET", "/users"): served("GET", "/users"),
        ("POST", "/users"): Row(lambda w: w.ok("bob", "POST", "/users", 400, json={"username": "alice"}),
                                why="refused for every key: each key is one user"),
        ("GET", "/settings"): Row(lambda w: _not_alices(w, "bob", "GET", "/settings"), _alices_userdata_unchanged,
                                  lambda w: _not_alices(w, "ops", "GET", "/settings")),
        ("GET", "/settings/{setting_id}"): _userdata("GET", "/settings/{setting}", 200),
        ("POST", "/settings"): Row(lambda w: _own_settings(w, "bob"), _alices_userdata_unchanged, lambda w: _own_settings(w, "ops")),
        ("POST", "/settings/{setting_id}"): Row(lambda w: _own_settings(w, "bob"), _alices_userdata_unchanged,
                                                lambda w: _own_settings(w, "ops")),
        ("GET", "/userdata"): Row(lambda w: _not_alices(w, "bob", "GET", "/userdata", params=listed), _alices_listing,
                                  lambda w: _not_alices(w, "ops", "GET", "/userdata", params=listed)),
        ("GET", "/v2/userdata"): Row(lambda w: _not_alices(w, "bob", "GET", "/v2/userdata"), _alices_listing,
                                     lambda w: _not_alices(w, "ops", "GET", "/v2/userdata")),
        ("GET", "/userdata/{file:path}"): _userdata("GET", "/userdata/{udfile}"),
        ("DELETE", "/userdata/{file:path}"): _userdata("DELETE", "/userdata/{udfile}"),
        ("POST", "/userdata/{file:path}/move/{dest:path}"): Row(_kept_from("bob", "POST", "/userdata/{udmove}"), _alice_moves_and_deletes,
                                                      _kept_from("ops", "POST", "/userdata/{udmove}"), last=True),
        ("POST", "/userdata/{file:path}"): Row(lambda w: _own_file(w, "bob"), _alices_userdata_unchanged, lambda w: _own_file(w, "ops")),
        # the model folders and what the service has none of: no one's objects
        **{("GET", p): served("GET", p) for p in ("/experiment/models", "/features", "/i18n", "/workflow_templates", "/global_subgraphs")},
        ("GET", "/experiment/models/{folder}"): served("GET", "/experiment/models/checkpoints"),
        ("GET", "/view_metadata/{folder}"): Row(lambda w: w.ok("bob", "GET", "/view_metadata/checkpoints",
                                                               params={"filename": "tiny-sd.safetensors"}),
                                                why="a model file's metadata, the same for every key"),
        ("GET", "/global_subgraphs/{subgraph_id}"): Row(lambda w: w.ok("bob", "GET", "/global_subgraphs/x", 404), why="there are none"),
        ("POST", "/comfy/login"): Row(lambda w: w.ok("bob", "POST", "/comfy/login", 204), why="sets the caller's own key as a cookie"),
    }


# Comfy API v2


def _upload_dup(w: World, who: str, created_new: bool) -> None:
    r = w.ok(who, "POST", "/api/v2/assets", 201 if created_new else 200, files={"file": ("dup.png", _png(3), "image/png")})
    assert r.json()["created_new"] is created_new  # that alice uploaded these bytes is not confirmed to bob


def _delete_assets(w: World) -> None:
    assert w.ok("alice", "DELETE", "/api/v2/assets/{output_asset}", 409).json()["error"]["code"] == "asset_in_use"
    w.ok("alice", "DELETE", "/api/v2/assets/{asset}", 204)
    assert w.call("alice", "GET", "/api/v2/assets/{asset}".format(**w.refs)).status_code == 404


def _v2_succeeded(w: World) -> None:
    assert w.ok("alice", "GET", "/api/v2/jobs/{v2job}").json()["status"] == "succeeded"


def _rows() -> dict[tuple[str, str], Row]:
    job, v2 = "/jobs/{job}", "/api/v2/jobs/{v2job}"
    asset = {"asset": "/api/v2/assets/{asset}", "output": "/api/v2/assets/{output_asset}"}
    comfy_input = {"filename": "{only}", "type": "input"}
    comfy_output = {"filename": "{prompt_file}", "subfolder": "{prompt}", "type": "output"}
    rows = {
        **{("GET", p): public(p) for p in ("/healthz", "/livez", "/readyz", "/metrics")},
        # typed endpoints (one set per workflow)
        ("POST", "/{workflow}"): Row(_bobs_live_output, *reads("GET", "/outputs/{live}/{live_name}")),
        ("POST", "/{workflow}/stream"): private("GET", "/outputs/{stream}/{stream_name}"),
        ("POST", "/{workflow}/{bytes}"): Row(None, why="answers with the output's bytes; stores nothing"),
        ("GET", "/outputs/{folder}/{name}"): private("GET", "/outputs/{live}/{live_name}"),
        # /jobs
        ("GET", "/jobs"): listing("/jobs", "job"),
        ("POST", "/jobs"): Row(_bobs_job, why="makes bob's own job"),
        ("POST", "/jobs/estimate"): Row(lambda w: w.ok("bob", "POST", "/jobs/estimate", json={"workflow": "txt2img", "items": [{}]}),
                                        why="estimates the caller's own job from its body; reads no one's objects"),
        ("GET", "/jobs/{job_id}"): private("GET", job),
        ("GET", "/jobs/{job_id}/results"): private("GET", job + "/results"),
        ("GET", "/jobs/{job_id}/events"): private("GET", job + "/events"),
        ("GET", "/jobs/{job_id}/archive"): private("GET", job + "/archive"),
        ("GET", "/jobs/{job_id}/files/{name}"): private("GET", job + "/files/{job_file}"),
        ("POST", "/jobs/{job_id}/cancel"): Row(hidden("POST", "/jobs/{pending}/cancel"),
                                               lambda w: _cancelled(w, "alice", "POST", "/jobs/{pending}/cancel", "pending"),
                                               lambda w: _cancelled(w, "ops", "POST", "/jobs/{ops_job}/cancel", "ops_job"), last=True),
        ("POST", "/jobs/{job_id}/retry"): private("POST", job + "/retry"),  # alice's succeeded job: retried in place, nothing changes
        ("GET", "/usage"): Row(_bobs_usage, *both(_sees_alices_usage)),
        # ComfyUI
        ("POST", "/prompt"): Row(lambda w: [hidden("POST", "/prompt", 400, COMFY, json={"prompt": _img2img(ref)})(w)
                                            for ref in ("{only}", "{prompt}/{prompt_file} [output]")],
                                 lambda w: w.ok("alice", "GET", "/history/{prompt}").json()[w.refs["prompt"]]["status"]["completed"]),
        ("GET", "/prompt"): Row(_queue_counts),
        ("GET", "/queue"): listing("/queue", "running", COMFY),
        ("POST", "/queue"): Row(_comfy_actions, lambda w: _cancelled(w, "alice", "POST", "/queue", "queued", json={"clear": True}),
                                lambda w: _cancelled(w, "ops", "POST", "/queue", "ops_queued", json={"delete": [w.refs["ops_queued"]]}),
                                last=True),
        ("POST", "/interrupt"): Row(_comfy_actions, lambda w: _cancelled(w, "alice", "POST", "/interrupt", "running"),
                                    lambda w: w.ok("ops", "POST", "/interrupt", json={"prompt_id": w.fake["running"]}), last=True),
        ("GET", "/history"): listing("/history", "prompt", COMFY),
        ("GET", "/history/{prompt_id}"): Row(hidden("GET", "/history/{prompt}", 200, COMFY),
                                             *both(lambda w, who: w.ok(who, "GET", "/history/{prompt}").json()[w.refs["prompt"]])),
        ("POST", "/history"): Row(_history_actions, _forget_prompt, lambda w: w.ok("ops", "POST", "/history", json={"delete": []}), last=True),
        ("GET", "/view"): Row(lambda w: [hidden("GET", "/view", 404, COMFY, params=p)(w) for p in (comfy_input, comfy_output)],
                              lambda w: [w.ok("alice", "GET", "/view", params=p) for p in (comfy_input, comfy_output)],
                              lambda w: w.ok("ops", "GET", "/view", params=comfy_output)),
        ("POST", "/upload/image"): Row(lambda w: _upload_image(w, "bob", _png(10)), lambda w: _upload_image(w, "alice", _png(len("shared"))),
                                       lambda w: _upload_image(w, "ops", _png(11))),
        ("POST", "/upload/mask"): Row(lambda w: [hidden("POST", "/upload/mask", 400, COMFY, files={"image": MASK},
                                                        data={"original_ref": json.dumps(p)})(w) for p in (comfy_input, comfy_output)],
                                      _own_mask),
        ("WS", "/ws"): Row(_ws),
        **{(m, p): served(m, p.replace("{node_class}", "KSampler").replace("{folder}", "checkpoints"))
           for m, p in (("GET", "/object_info"), ("GET", "/object_info/{node_class}"), ("GET", "/system_stats"), ("POST", "/free"),
                        ("GET", "/embeddings"), ("GET", "/extensions"), ("GET", "/models"), ("GET", "/models/{folder}"))},
        # Comfy API v2
        ("POST", "/api/v2/assets"): Row(lambda w: _upload_dup(w, "bob", True), lambda w: _upload_dup(w, "alice", False)),
        ("POST", "/api/v2/assets/from-hash"): Row(hidden("POST", "/api/v2/assets/from-hash", json={"hash": "{hash}"}),
                                                  lambda w: w.ok("alice", "POST", "/api/v2/assets/from-hash", 201, json={"hash": "{hash}"})),
        ("HEAD", "/api/v2/assets/by-hash/{hash_value}"): Row(hidden("HEAD", "/api/v2/assets/by-hash/{hash}"),
                                                             lambda w: w.ok("alice", "HEAD", "/api/v2/assets/by-hash/{hash}")),
        ("GET", "/api/v2/assets/{asset_id}"): Row(lambda w: [hidden("GET", p)(w) for p in asset.values()],
                                                  *both(lambda w, who: [w.ok(who, "GET", p) for p in asset.values()])),
        ("GET", "/api/v2/assets/{asset_id}/content"): Row(lambda w: [hidden("GET", p + "/content")(w) for p in asset.values()],
                                                          *both(lambda w, who: [w.ok(who, "GET", p + "/content") for p in asset.values()])),
        ("DELETE", "/api/v2/assets/{asset_id}"): Row(lambda w: [hidden("DELETE", p)(w) for p in asset.values()], _delete_assets,
                                                     lambda w: w.ok("ops", "DELETE", "/api/v2/assets/{ops_asset}", 204), last=True),
        ("POST", "/api/v2/jobs"): Row(hidden("POST", "/api/v2/jobs", 422, json={"workflow": _img2img({"__type": "core/ASSET", "info": {"id": "{asset}"}})}), _v2_succeeded),
        ("GET", "/api/v2/jobs"): listing("/api/v2/jobs", "v2job"),
        ("GET", "/api/v2/jobs/{job_id}"): private("GET", v2),
        ("GET", "/api/v2/jobs/{job_id}/workflow"): private("GET", v2 + "/workflow"),
        ("GET", "/api/v2/jobs/{job_id}/events"): private("GET", v2 + "/events"),
        ("POST", "/api/v2/jobs/{job_id}/cancel"): Row(hidden("POST", "/api/v2/jobs/{pending}/cancel"), *reads("POST", v2 + "/cancel")),
        # the OpenAI Images API (front/compat/openai_images/)
        ("GET", "/v1/models"): served("GET", "/v1/models"),
        ("GET", "/v1/models/{model}"): served("GET", "/v1/models/txt2img"),
        ("POST", "/v1/images/generations"): Row(lambda w: _bobs_openai_url(w, "generations")),
        ("POST", "/v1/images/edits"): Row(lambda w: _bobs_openai_url(w, "edits")),
        # ComfyUI's editor (front/compat/comfyui/editor_routes.py)
        **_editor_rows(),
    }
    return rows


ROWS = _rows()


# ---------------------------------------------------------------------- the routes the app serves


def _route_key(method: str, path: str, op: dict[str, Any] | None = None) -> tuple[str, str]:
    """A route as the table names it: typed endpoints by kind, ComfyUI's /api/x as /x."""
    if op is not None and "Service APIs" in op.get("tags", []):
        media = next(iter(op["responses"]["200"]["content"]))
        kind = {"application/json": "", "text/event-stream": "/stream"}.get(media, "/{bytes}")
        return method, "/{workflow}" + kind
    if path.startswith("/api/") and not path.startswith("/api/v2/"):
        return method, path[4:]
    return method, path


def served_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """Every route: the served OpenAPI document's operations, and the app's routes left out of it (ComfyUI's, Comfy API v2)."""
    from comfybento.front.root import root_app

    app = root_app(lambda: None)  # the routes as the entry service has them (no storage is read here)
    routes = {_route_key(m.upper(), p, op) for p, ops in doc["paths"].items() for m, op in ops.items()}
    for prefix, route in _app_routes(app.routes):
        if isinstance(route, APIWebSocketRoute):
            routes.add(_route_key("WS", prefix + route.path))
        else:
            assert isinstance(route, APIRoute), f"a route of a kind this test does not know: {route}"
            routes |= {_route_key(m, prefix + route.path) for m in route.methods or ()}
    return routes


def _app_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(prefix, route) of every route, inside included routers too (FastAPI may keep an included router whole)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _app_routes(inner.routes, prefix + route.include_context.prefix)
        else:
            yield prefix, route


def test_the_table_has_a_row_for_every_route_and_no_other(world):
    routes = served_routes(world.call(None, "GET", "/docs.json").json())
    assert sorted(routes - set(ROWS)) == [], "routes without a row in ROWS: add one (how another key is kept out)"
    assert sorted(set(ROWS) - routes) == [], "rows for routes that are not served"
    assert all(row.other is not None or row.why for row in ROWS.values())


def test_every_route_keeps_each_keys_objects_its_own_and_the_operator_sees_all(world):
    for key, row in ROWS.items():
        if row.other is not None:
            try:
                row.other(world)
            except AssertionError as exc:
                raise AssertionError(f"{key} as bob: {exc}") from exc
    _unchanged(world)
    for phase in ("operator", "owner"):
        for key, row in sorted(ROWS.items(), key=lambda kv: kv[1].last):
            check = getattr(row, phase)
            if check is not None:
                try:
                    check(world)
                except AssertionError as exc:
                    raise AssertionError(f"{key} as {phase}: {exc}") from exc
