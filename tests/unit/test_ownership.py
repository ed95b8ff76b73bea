"""Who may see what (front/ownership.py), and the stores of owned things that ask it: jobs, live outputs, ComfyUI files
and prompts. Every route of every API over HTTP, with two keys and an operator: tests/e2e/test_isolation.py."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from starlette.requests import Request

from comfybento.errors import NotFound
from comfybento.front.access import Access, Grant
from comfybento.front.compat.comfyui import files, prompts, ws
from comfybento.front.delivery import live_folder, live_folder_tag, read_live_output
from comfybento.front.jobs.records import ItemRecord, JobRecord, now
from comfybento.front.jobs.service import JobService
from comfybento.front.jobs.store import SQLiteJobStore
from comfybento.front.jobs.webhooks import AllowList
from comfybento.front.keys import ApiKey, hash_key
from comfybento.front.ownership import OPEN, Caller, caller, owner_tag
from comfybento.front.ratelimit import MemoryBuckets
from comfybento.outputs.storage import LocalStorage

ALICE, BOB, OPS = Caller("alice"), Caller("bob"), Caller("ops", operator=True)


@pytest.mark.parametrize(
    ("who", "owner", "sees"),
    [
        (ALICE, "alice", True),
        (ALICE, "bob", False),
        (ALICE, None, False),  # made while keys were off: an operator's only once keys are on
        (OPS, "alice", True),
        (OPS, None, True),
        (OPEN, "alice", True),  # keys off: single-user mode, no isolation
        (OPEN, None, True),
    ],
)
def test_a_key_sees_its_own_objects_an_operator_and_keys_off_see_all(who, owner, sees):
    assert who.can_see(owner) is sees
    if sees:
        who.require(owner, "job 'x' does not exist")
    else:
        with pytest.raises(NotFound, match=r"^job 'x' does not exist$"):  # exactly the answer of an unknown id
            who.require(owner, "job 'x' does not exist")


def test_listings_and_file_tags_follow_the_same_rule():
    assert (ALICE.listing_owner, OPS.listing_owner, OPEN.listing_owner) == ("alice", None, None)
    assert ALICE.tag == owner_tag("alice") != BOB.tag and OPEN.tag is None
    assert len(owner_tag("alice")) == 32 and owner_tag("alice").isalnum()
    assert ALICE.can_see_tag(owner_tag("alice")) and not BOB.can_see_tag(owner_tag("alice")) and not ALICE.can_see_tag(None)
    assert OPS.can_see_tag(owner_tag("alice")) and OPS.can_see_tag(None) and OPEN.can_see_tag(owner_tag("bob"))


def test_the_caller_is_the_requests_key_with_its_operator_flag():
    keys = (ApiKey(name="alice", sha256=hash_key("a")), ApiKey(name="ops", sha256=hash_key("o"), operator=True))
    acl = Access(keys, MemoryBuckets())

    def request(key: ApiKey | None) -> Request:
        state = {"access_grant": Grant(key, acl)} if key is not None else {}
        return Request({"type": "http", "method": "GET", "path": "/jobs", "headers": [], "state": state})

    assert caller(request(keys[0])) == ALICE and caller(request(keys[1])) == OPS
    assert caller(request(None)) == OPEN and caller() == OPEN  # keys off: the middleware set nothing


# ------------------------------------------------------------------ the stores that ask


@pytest.fixture
def service(tmp_path: Path) -> JobService:
    return JobService({}, SQLiteJobStore(tmp_path / "j.db"), LocalStorage(tmp_path / "out"), AllowList(["127.0.0.1"]),
                      max_items=10, retention_s=60)


def _job(service: JobService, owner: str | None, prompt: bool = False) -> str:
    job = JobRecord(id=uuid.uuid4().hex, workflow="txt2img", priority=0, created_at=now(), total=1, owner=owner,
                    idempotency_key=f"{prompts.PREFIX}{uuid.uuid4().hex}" if prompt else None, request_hash="h")
    service.store.create_job(job, [ItemRecord(job_id=job.id, index=0, params={}, seed=1)])
    return job.id


def test_jobs_are_read_listed_and_cancelled_by_whom_may_see_them(service):
    mine, theirs = _job(service, "alice"), _job(service, "bob")
    assert service.job(mine, ALICE).id == mine and service.job(theirs, OPS).id == theirs
    for act in (lambda: service.job(theirs, ALICE), lambda: service.status(theirs, ALICE), lambda: service.cancel(theirs, ALICE),
                lambda: service.file(theirs, "a.png", ALICE), lambda: service.results(theirs, 0, 10, "http://x", ALICE)):
        with pytest.raises(NotFound, match=f"^job '{theirs}' does not exist"):
            act()
    assert service.job(theirs).state == "queued"  # the refused cancel did nothing
    assert [j.id for j in service.list_jobs(10, 0, ALICE)] == [mine]
    assert {j.id for j in service.list_jobs(10, 0, OPS)} == {j.id for j in service.list_jobs(10, 0, OPEN)} == {mine, theirs}


def test_a_live_outputs_folder_carries_its_owner_and_only_its_owner_reads_it(service):
    folder, untagged = live_folder("alice"), live_folder(None)
    assert live_folder_tag(folder) == owner_tag("alice") and live_folder_tag(untagged) is None and len(untagged) == 32
    for f in (folder, untagged):
        service.storage.put(f"outputs/{f}/save_image-0.png", b"png", "image/png")

    def read(folder: str, name: str, who: Caller) -> bytes:
        return read_live_output(service.storage, folder, name, who)

    assert read(folder, "save_image-0.png", ALICE) == read(folder, "save_image-0.png", OPS) == b"png"
    with pytest.raises(NotFound) as refused:
        read(folder, "save_image-0.png", BOB)
    with pytest.raises(NotFound) as absent:
        read(folder, "nothing-0.png", ALICE)
    assert str(refused.value) == f"no such file: {folder}/save_image-0.png" and str(absent.value).startswith("no such file: ")
    with pytest.raises(NotFound):
        read(untagged, "save_image-0.png", ALICE)  # made with keys off: not a key's
    assert read(untagged, "save_image-0.png", OPEN) == b"png"


def test_comfyui_uploads_live_in_a_folder_per_key_and_outputs_follow_their_prompt(service):
    assert files.store_upload(service.storage, b"alice's", "a.png", "", False, ALICE.tag) == "a.png"
    assert files.store_upload(service.storage, b"bob's", "a.png", "", False, BOB.tag) == "a.png"  # no clash: two folders
    assert files.store_upload(service.storage, b"bob's 2", "a.png", "", True, BOB.tag) == "a.png"  # overwrites bob's own only
    assert files.read(service, "a.png", "", "input", ALICE) == b"alice's"
    assert files.read(service, "a.png", "", "input", BOB) == b"bob's 2"
    with pytest.raises(NotFound):
        files.read(service, "a.png", "", "input", Caller("carol"))
    assert files.key("a.png", "s", "input", ALICE.tag) == f"comfyui-inputs/{ALICE.tag}/s/a.png"
    assert files.key("a.png", "s", "input") == "comfyui-inputs/s/a.png"  # keys off: the one shared folder, as before
    prompt = _job(service, "alice", prompt=True)
    service.storage.put(f"{prompt}/out.png", b"out", "image/png")
    assert files.read(service, "out.png", prompt, "output", ALICE) == files.read(service, "out.png", prompt, "output", OPS) == b"out"
    for who, folder in ((BOB, prompt), (ALICE, "comfyui-inputs")):  # another's prompt; no folder reaches the inputs
        with pytest.raises(NotFound, match=r"^no such file: "):
            files.read(service, "out.png" if folder == prompt else "a.png", folder, "output", who)


def test_comfyui_prompts_are_listed_cancelled_and_deleted_per_key(service):
    mine, theirs = _job(service, "alice", prompt=True), _job(service, "bob", prompt=True)
    assert [j.id for j in prompts.recent_jobs(service, ALICE)] == [mine] and prompts.queue_remaining(service, BOB) == 1
    assert prompts.cancel_prompts(service, None, ("queued",), ALICE) == [mine]  # "clear" cancels alice's only
    assert prompts.cancel_prompts(service, [theirs], ("queued",), ALICE) == [] and service.job(theirs).state == "queued"
    assert prompts.visible_prompt(service, theirs, ALICE) is None and prompts.visible_prompt(service, theirs, OPS) is not None
    service.cancel(theirs)
    prompts.delete_prompts(service, [theirs], ALICE)
    assert service.store.get_job(theirs) is not None  # not alice's to delete
    prompts.delete_prompts(service, [theirs], OPS)
    assert service.store.get_job(theirs) is None


def test_a_websocket_client_id_is_the_keys_own():
    clients = ws.Clients()
    clients.add(ws.client_key(ALICE, "c1"), "p1")
    assert clients.has(ws.client_key(ALICE, "c1"), "p1")
    assert not clients.has(ws.client_key(BOB, "c1"), "p1") and clients.prompts(ws.client_key(BOB, "c1")) == []
    assert ws.client_key(OPEN, "c1") == (None, "c1") != ws.client_key(OPS, "c1")


def test_keys_file_entries_carry_the_operator_flag(tmp_path):
    from comfybento.front.keys import append_key, load_keys

    for name in ("keys.yaml", "keys.json"):
        path = tmp_path / name
        append_key(path, ApiKey(name="alice", sha256=hash_key("a")))
        append_key(path, ApiKey(name="ops", sha256=hash_key("o"), operator=True))
        assert [(k.name, k.operator) for k in load_keys(path)] == [("alice", False), ("ops", True)]
        assert "operator" not in path.read_text().split("ops")[0]  # written only where it is set
    assert json.loads((tmp_path / "keys.json").read_text())[1]["operator"] is True
