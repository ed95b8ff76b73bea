from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from comfybento.errors import ModelLockError
from comfybento.models.fetch import fetch_entry
from comfybento.models.lock import ModelEntry, parse_lock, verify_all, verify_entry
from comfybento.transfer import TransferLimits
from tests.file_server import file_server

ROOT = Path(__file__).resolve().parents[2]


def _lock(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "models.lock"
    path.write_text(body)
    return path


def test_project_lock_parses():
    lock = parse_lock(ROOT / "models.lock")
    entry = lock.find("checkpoints", "tiny-sd.safetensors")
    assert entry is not None and entry.source == {"generator": "tiny-sd"} and entry.size > 1_000_000
    assert lock.find(None, "tiny-sd.safetensors") == entry and lock.find("loras", "tiny-sd.safetensors") is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[models]]\npath = "x.safetensors"\nsize = 1\nsha256 = "' + "a" * 64 + '"\nsource = {url = "https://x"}', "must be relative"),
        ('[[models]]\npath = "checkpoints/x.safetensors"\nsize = 0\nsha256 = "' + "a" * 64 + '"\nsource = {url = "https://x"}', "size"),
        ('[[models]]\npath = "checkpoints/x.safetensors"\nsize = 1\nsha256 = "abc"\nsource = {url = "https://x"}', "sha256"),
        ('[[models]]\npath = "checkpoints/x.safetensors"\nsize = 1\nsha256 = "' + "a" * 64 + '"\nsource = {url = "http://x"}', "https"),
        ('[[models]]\npath = "checkpoints/x.safetensors"\nsize = 1\nsha256 = "' + "a" * 64 + '"\nsource = {}', "exactly one"),
        ('[[models]]\npath = "checkpoints/x.safetensors"\n', "missing"),
        ("models = [", "not valid TOML"),
    ],
)
def test_malformed_entries_are_named(tmp_path, body, message):
    with pytest.raises(ModelLockError, match=message):
        parse_lock(_lock(tmp_path, body))


def _entry_for(tmp_path: Path, data: bytes, sha: str | None = None):
    sha = sha or hashlib.sha256(data).hexdigest()
    lock = parse_lock(_lock(tmp_path, f'[[models]]\npath = "loras/a.safetensors"\nsize = {len(data)}\nsha256 = "{sha}"\nsource = {{url = "https://example.invalid/a"}}\n'))
    return lock, lock.entries[0]


def test_verify_detects_missing_size_and_hash_mismatch(tmp_path):
    models = tmp_path / "models"
    lock, entry = _entry_for(tmp_path, b"hello world")
    assert "missing" in verify_all(lock, models)[0]
    (models / "loras").mkdir(parents=True)
    (models / "loras" / "a.safetensors").write_bytes(b"hello world")
    assert verify_entry(entry, models) is None
    (models / "loras" / "a.safetensors").write_bytes(b"hello WORLD")
    assert "sha256" in (verify_entry(entry, models) or "")
    (models / "loras" / "a.safetensors").write_bytes(b"short")
    assert "size 5" in (verify_entry(entry, models) or "")


def test_fetch_refuses_a_download_that_does_not_match(tmp_path, monkeypatch):
    import comfybento.models.fetch as fetch

    models = tmp_path / "models"
    _, entry = _entry_for(tmp_path, b"expected bytes")
    monkeypatch.setattr(fetch, "_download_url", lambda e, dest, limits: dest.write_bytes(b"tampered byte"))
    with pytest.raises(ModelLockError, match="refusing to use it"):
        fetch_entry(entry, models)
    assert not entry.local_path(models).exists()
    monkeypatch.setattr(fetch, "_download_url", lambda e, dest, limits: dest.write_bytes(b"expected bytes"))
    assert fetch_entry(entry, models) == "fetched"
    assert fetch_entry(entry, models) == "ok"


def test_a_model_by_url_is_fetched_within_a_deadline_and_a_minimum_rate(tmp_path):
    body = b"model bytes " * 10
    with file_server() as files:
        fine = ModelEntry("checkpoints/m.safetensors", len(body), hashlib.sha256(body).hexdigest(), {"url": files.add("/m", body)})
        assert fetch_entry(fine, tmp_path, TransferLimits(10, 1024)) == "fetched"
        assert (tmp_path / "checkpoints" / "m.safetensors").read_bytes() == body
        drip = files.add("/drip", body, drip_s=0.5)
        slow = ModelEntry("checkpoints/s.safetensors", len(body), hashlib.sha256(body).hexdigest(), {"url": drip})
        started = time.monotonic()
        with pytest.raises(ModelLockError, match=r"checkpoints/s.safetensors: could not fetch .* the download was not complete "
                                                 r"within 2 s \(the limits: COMFYBENTO_MODEL_FETCH_S=2, "):
            fetch_entry(slow, tmp_path, TransferLimits(2, 0))
        assert time.monotonic() - started < 3
        started = time.monotonic()
        with pytest.raises(ModelLockError, match=r"came at fewer than 1024 bytes/s over 5 s .*COMFYBENTO_MODEL_FETCH_MIN_BYTES_PER_S=1024"):
            fetch_entry(slow, tmp_path, TransferLimits(60, 1024))
        assert time.monotonic() - started < 6.5
    assert not (tmp_path / "checkpoints" / "s.safetensors").exists()


def test_a_generated_model_is_made_by_the_generator_its_caller_gives(tmp_path):
    """models/ sits below the runtime: the generators (runtime/generators.py) are passed in, never imported."""
    body = b"generated weights"
    entry = ModelEntry("loras/g.safetensors", len(body), hashlib.sha256(body).hexdigest(), {"generator": "tiny-lora"})
    with pytest.raises(ModelLockError, match=r"loras/g.safetensors: unknown generator 'tiny-lora'; known: none given here"):
        fetch_entry(entry, tmp_path)
    assert fetch_entry(entry, tmp_path, generators={"tiny-lora": lambda path: path.write_bytes(body)}) == "fetched"
    assert entry.local_path(tmp_path).read_bytes() == body
