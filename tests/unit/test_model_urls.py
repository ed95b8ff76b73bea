"""Models by URL: the safetensors check, the download-once cache (hits, shared downloads, LRU), refusals, the schema.

The models are served by a local HTTP server (tests/file_server.py), the only stand-in.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from comfybento.config import Settings
from comfybento.engine.messages import EngineItem
from comfybento.engine.prepare import Prepared, prepare
from comfybento.errors import ConfigError, EngineUnavailable, InvalidRequest, TooLarge, UnsupportedFile, UrlRefused, WorkflowError, describe
from comfybento.models.by_url import CACHE_FOLDER, SafetensorsCheck, UrlModelLimits, UrlModels
from comfybento.models.first_use import FirstUseCheck
from comfybento.transfer import TransferLimits
from comfybento.urlguard import AllowList
from comfybento.workflows.catalog import load_workflow
from tests.file_server import file_server
from tests.model_urls import restamped, safetensors_bytes
from tests.unit.test_model_choice import LOCK, _workflow, loader_defs

ALLOW = AllowList(["localhost"], what="checkpoint")
LIMITS = UrlModelLimits(max_bytes=64 * 1024, cache_bytes=256 * 1024, transfer=TransferLimits(20))
MODEL = safetensors_bytes({"w": bytes(4000)}, {"name": "tiny"})


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def defs(node_defs):
    return loader_defs(node_defs)


@pytest.fixture
def files():
    with file_server() as server:
        yield server


def _check(data: bytes) -> None:
    check = SafetensorsCheck("the file")
    for start in range(0, len(data), 7):  # fed in small pieces, as a download brings it
        check.feed(data[start:start + 7])
    check.finish(len(data))


def test_safetensors_is_checked_by_content():
    _check(MODEL)
    _check(restamped(MODEL, "other"))
    refused = {
        "pickle": pickle.dumps({"w": [0.0] * 10}, protocol=4),
        "zip (torch.save)": b"PK\x03\x04" + bytes(100),
        "header not JSON": (20).to_bytes(8, "little") + b"{not json at all....",
        "header an array": (8).to_bytes(8, "little") + b"[1,2,3] ",
        "tensors past the end": safetensors_bytes({"w": bytes(400)})[:-4],
        "cut in its header": MODEL[:20],
        "a tensor without offsets": (48).to_bytes(8, "little") + json.dumps({"w": {"dtype": "F32"}}).encode().ljust(48),
    }
    for what, data in refused.items():
        with pytest.raises(UnsupportedFile, match="not a safetensors file"):
            _check(data)
            pytest.fail(what)


def test_the_first_request_downloads_the_next_is_a_hit_by_url_and_by_sha256(files, tmp_path):
    url = files.add("/m.safetensors", MODEL)
    cache = UrlModels(tmp_path, LIMITS)
    first = cache.resolve("checkpoint", "checkpoints", url, None, ALLOW)
    assert first.name == f"{CACHE_FOLDER}/{_sha(MODEL)}.safetensors" and first.size == len(MODEL)
    assert (tmp_path / "checkpoints" / first.name).read_bytes() == MODEL
    assert cache.resolve("checkpoint", "checkpoints", url, None, ALLOW) == first
    assert cache.resolve("checkpoint", "checkpoints", "http://localhost:1/elsewhere", _sha(MODEL).upper(), ALLOW) == first
    assert files.hits == ["/m.safetensors"]
    # the index survives a restart: the URL is still a hit
    assert UrlModels(tmp_path, LIMITS).resolve("checkpoint", "checkpoints", url, None, ALLOW) == first
    assert files.hits == ["/m.safetensors"]
    assert not list((tmp_path / "checkpoints" / CACHE_FOLDER).glob(".part-*"))


def test_a_wrong_sha256_is_a_422_naming_the_field_and_both_hashes(files, tmp_path):
    url = files.add("/m.safetensors", MODEL)
    with pytest.raises(InvalidRequest) as info:
        UrlModels(tmp_path, LIMITS).resolve("checkpoint", "checkpoints", url, "ab" * 32, ALLOW)
    assert describe(info.value)["status"] == 422
    assert "checkpoint" in str(info.value) and _sha(MODEL) in str(info.value) and "ab" * 32 in str(info.value)


def test_a_models_folder_that_cannot_be_written_is_a_503_naming_it_never_a_500(files, tmp_path):
    url = files.add("/w.safetensors", MODEL)
    (tmp_path / "checkpoints").write_text("a file where the folder should be")  # (root writes through chmod)
    with pytest.raises(EngineUnavailable) as info:
        UrlModels(tmp_path, LIMITS).resolve("checkpoint", "checkpoints", url, None, ALLOW)
    assert describe(info.value)["status"] == 503
    assert "COMFYBENTO_MODELS" in str(info.value) and "'checkpoint'" in str(info.value)


def test_refusals_name_the_field_and_the_limit(files, tmp_path):
    cache = UrlModels(tmp_path, LIMITS)
    big = files.add("/big.safetensors", safetensors_bytes({"w": bytes(LIMITS.max_bytes)}))
    dripped_big = files.add("/chunked.safetensors", safetensors_bytes({"w": bytes(LIMITS.max_bytes)}), chunked=True)
    for url in (big, dripped_big):
        with pytest.raises(TooLarge, match="COMFYBENTO_MODEL_URL_MAX_BYTES") as info:
            cache.resolve("checkpoint", "checkpoints", url, None, ALLOW)
        assert describe(info.value)["status"] == 413
    with pytest.raises(UnsupportedFile) as info:
        cache.resolve("checkpoint", "checkpoints", files.add("/m.ckpt", pickle.dumps(list(range(1000)))), None, ALLOW)
    assert describe(info.value)["status"] == 415 and "checkpoint" in str(info.value)
    for url in (files.url("/m.safetensors", host="127.0.0.1"),  # not in the allow-list
                files.redirect("/hop", files.url("/m.safetensors", host="127.0.0.1"))):  # a redirect there
        files.add("/m.safetensors", MODEL)
        with pytest.raises(UrlRefused) as info:
            cache.resolve("checkpoint", "checkpoints", url, None, ALLOW)
        assert describe(info.value)["status"] == 400 and "checkpoint" in str(info.value)
    with pytest.raises(InvalidRequest, match="HTTP 404"):
        cache.resolve("checkpoint", "checkpoints", files.url("/missing.safetensors"), None, ALLOW)
    assert not list(tmp_path.glob(f"*/{CACHE_FOLDER}/*"))  # nothing kept of any of them


def test_a_redirect_to_an_allowed_host_is_followed(files, tmp_path):
    files.add("/m.safetensors", MODEL)
    url = files.redirect("/hop", files.url("/m.safetensors"))
    assert UrlModels(tmp_path, LIMITS).resolve("checkpoint", "checkpoints", url, _sha(MODEL), ALLOW).sha256 == _sha(MODEL)


def test_concurrent_requests_for_one_url_share_one_download(files, tmp_path):
    url = files.add("/slow.safetensors", MODEL, stall_s=1.0)
    cache = UrlModels(tmp_path, LIMITS)
    results: list[object] = []

    def fetch() -> None:
        results.append(cache.resolve("checkpoint", "checkpoints", url, None, ALLOW))

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 4 and len(set(results)) == 1 and files.hits == ["/slow.safetensors"]


def test_a_shared_download_shares_its_failure(files, tmp_path):
    url = files.add("/slow.ckpt", pickle.dumps(list(range(1000))), stall_s=1.0)
    cache = UrlModels(tmp_path, LIMITS)
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            cache.resolve("checkpoint", "checkpoints", url, None, ALLOW)
        except UnsupportedFile as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(errors) == 3 and files.hits == ["/slow.ckpt"]


def test_the_disk_bound_evicts_the_least_recently_used_never_a_leased_file(files, tmp_path):
    limits = UrlModelLimits(max_bytes=64 * 1024, cache_bytes=100 * 1024, transfer=TransferLimits(20))
    cache = UrlModels(tmp_path, limits)
    models = {n: safetensors_bytes({"w": bytes(40 * 1024)}, {"n": n}) for n in "abc"}
    urls = {n: files.add(f"/{n}.safetensors", data) for n, data in models.items()}
    a = cache.resolve("checkpoint", "checkpoints", urls["a"], None, ALLOW)
    b = cache.resolve("checkpoint", "checkpoints", urls["b"], None, ALLOW)
    cache.release(b)  # b's request finished; a's is still queued
    old = (tmp_path / "checkpoints" / b.name).stat().st_mtime - 100
    os.utime(tmp_path / "checkpoints" / a.name, (old, old))  # a is the least recently used, but leased
    c = cache.resolve("checkpoint", "checkpoints", urls["c"], None, ALLOW)
    stored = {p.name for p in (tmp_path / "checkpoints" / CACHE_FOLDER).iterdir() if not p.name.startswith(".")}
    assert stored == {Path(a.name).name, Path(c.name).name}  # b left, a stayed (leased)
    cache.release(a)
    cache.release(c)
    assert cache.resolve("checkpoint", "checkpoints", urls["b"], None, ALLOW) == b  # fetched again
    assert files.hits.count("/b.safetensors") == 2


def test_the_front_refuses_a_host_on_its_face():
    allow = AllowList(["localhost", "*.hf.co"])
    assert allow.refusal_without_dns("http://localhost:8000/x") is None
    assert allow.refusal_without_dns("https://cdn-lfs.hf.co/x") is None
    assert "allow-list" in (allow.refusal_without_dns("http://127.0.0.1/x") or "")
    assert "allow-list" in (allow.refusal_without_dns("https://example.com/x") or "")
    assert "http(s)" in (allow.refusal_without_dns("file:///etc/passwd") or "")
    public = AllowList([])  # any public host: a literal internal address is refused without DNS
    assert public.refusal_without_dns("https://example.com/x") is None
    for internal in ("http://10.0.0.1/x", "http://169.254.169.254/x", "http://[::1]/x"):
        assert "internal" in (public.refusal_without_dns(internal) or "")


def test_a_sidecar_opts_a_model_choice_into_urls(defs, tmp_path):
    sidecar = "params:\n  - {node: '4', input: ckpt_name, name: checkpoint, urls: [localhost]}\n"
    spec = load_workflow(_workflow(tmp_path, sidecar), defs, LOCK, Settings.from_env({}))
    [choice] = spec.model_choices
    assert choice.url_hosts == ("localhost",)
    model = spec.input_model
    assert model.model_validate({"checkpoint": "tiny-sd-alt.safetensors"}).checkpoint == "tiny-sd-alt.safetensors"
    given = {"url": "http://localhost:9/m.safetensors", "sha256": "ab" * 32}
    assert model.model_validate({"checkpoint": given}).checkpoint == given  # a plain mapping, for the engine
    for wrong in ({"url": "http://127.0.0.1/m.safetensors"}, {"url": "ftp://localhost/m"}, {"url": "http://localhost/m", "sha256": "xyz"},
                  {"url": "http://localhost/m", "extra": 1}, "http://localhost/m.safetensors"):
        with pytest.raises(ValidationError) as info:
            model.model_validate({"checkpoint": wrong})
        assert {e["loc"][0] for e in info.value.errors()} == {"checkpoint"}
    schema = model.model_json_schema()
    options = schema["properties"]["checkpoint"]["anyOf"]
    assert options[0]["enum"] == ["tiny-sd-alt.safetensors", "tiny-sd.safetensors"]
    assert schema["$defs"]["ModelUrl"]["required"] == ["url"] and "sha256" in schema["$defs"]["ModelUrl"]["properties"]
    assert "by URL" in schema["properties"]["checkpoint"]["description"]


def test_urls_true_takes_the_service_hosts_and_a_model_choice_without_it_takes_names_only(defs, tmp_path):
    sidecar = "params:\n  - {node: '4', input: ckpt_name, name: checkpoint, urls: true}\n"
    spec = load_workflow(_workflow(tmp_path, sidecar), defs, LOCK, Settings.from_env({"COMFYBENTO_MODEL_URL_HOSTS": "models.example.com"}))
    assert spec.model_choices[0].url_hosts == ("models.example.com",)
    assert Settings.from_env({}).model_url_hosts == ("huggingface.co", "*.huggingface.co", "*.hf.co")
    assert Settings.from_env({"COMFYBENTO_MODEL_URL_HOSTS": "*"}).model_url_hosts == ()
    (tmp_path / "p").mkdir()
    plain = load_workflow(_workflow(tmp_path / "p", "params:\n  - {node: '4', input: ckpt_name, name: checkpoint}\n"), defs, LOCK,
                          Settings.from_env({}))
    assert plain.model_choices[0].url_hosts is None
    with pytest.raises(ValidationError):
        plain.input_model.model_validate({"checkpoint": {"url": "https://huggingface.co/m.safetensors"}})


def test_urls_on_a_field_that_is_not_a_model_is_a_workflow_error(defs, tmp_path):
    with pytest.raises(WorkflowError, match="urls"):
        load_workflow(_workflow(tmp_path, "params:\n  - {node: '3', input: steps, urls: true}\n"), defs, LOCK, Settings.from_env({}))
    (tmp_path / "b").mkdir()
    with pytest.raises(WorkflowError, match="urls must be"):
        load_workflow(_workflow(tmp_path / "b", "params:\n  - {node: '4', input: ckpt_name, urls: yes please}\n"), defs, LOCK,
                      Settings.from_env({}))


def test_the_cache_must_hold_the_largest_file():
    with pytest.raises(ConfigError, match="COMFYBENTO_MODEL_URL_CACHE_BYTES"):
        Settings.from_env({"COMFYBENTO_MODEL_URL_MAX_BYTES": "100", "COMFYBENTO_MODEL_URL_CACHE_BYTES": "10"})


def test_the_batch_key_holds_the_model_by_url_and_the_lease_ends_with_the_request(defs, files, tmp_path):
    sidecar = "params:\n  - {node: '4', input: ckpt_name, name: checkpoint, urls: [localhost]}\n"
    spec = load_workflow(_workflow(tmp_path, sidecar), defs, LOCK, Settings.from_env({}))
    cache = UrlModels(tmp_path / "models", LIMITS)
    checks = FirstUseCheck(tmp_path / "models", fetch=False)
    urls = {n: files.add(f"/{n}.safetensors", restamped(MODEL, n)) for n in "ab"}

    def prepared(name: str, seed: int) -> tuple[Prepared, str]:
        item = EngineItem(values={"checkpoint": {"url": urls[name], "sha256": None}}, seed=seed)
        ready, key, can_batch = prepare(spec, item, checks, tmp_path / "input", None, cache)
        assert can_batch
        return ready, key

    (a1, key_a1), (a2, key_a2), (b1, key_b1) = prepared("a", 1), prepared("a", 2), prepared("b", 3)
    assert key_a1 == key_a2 != key_b1  # one URL batches with itself, never with another
    stored = a1.graph["4"]["inputs"]["ckpt_name"]
    assert stored == f"{CACHE_FOLDER}/{_sha(restamped(MODEL, 'a'))}.safetensors" and stored in key_a1
    assert len(a1.leases) == 1 and len(cache._leases) == 2  # a's file held twice, b's once
    for ready in (a1, a2, b1):
        ready.leases.pop()()
    assert not cache._leases
    with pytest.raises(InvalidRequest, match="checkpoint"):  # a failed request gives its lease back at once
        prepare(spec, EngineItem(values={"checkpoint": {"url": urls["a"], "sha256": "cd" * 32}}, seed=4), checks,
                tmp_path / "input", None, cache)
    assert not cache._leases


def test_a_download_past_its_deadline_is_a_413_naming_the_setting(files, tmp_path):
    url = files.add("/slow.safetensors", MODEL, stall_s=4.0)
    limits = UrlModelLimits(max_bytes=64 * 1024, cache_bytes=256 * 1024, transfer=TransferLimits(1))
    with pytest.raises(TooLarge, match="COMFYBENTO_MODEL_FETCH_S=1") as info:
        UrlModels(tmp_path, limits).resolve("checkpoint", "checkpoints", url, None, ALLOW)
    assert describe(info.value)["status"] == 413 and "checkpoint" in str(info.value)
    assert not list(tmp_path.glob(f"*/{CACHE_FOLDER}/*"))
