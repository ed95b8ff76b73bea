"""Settings: checked at startup with actionable messages; the keys file and COMFYBENTO_API_KEY (read by the access layer,
front/keys.py `configured_keys`), CORS origins and `keys add`.

(The API-key middleware itself is checked on the real service: tests/e2e/test_access.py.)
"""

from __future__ import annotations

import json

import pytest

from comfybento.__main__ import main
from comfybento.config import Settings, find_comfyui_root
from comfybento.errors import ConfigError
from comfybento.front.access import Access
from comfybento.front.keys import ApiKey, configured_keys, hash_key

HASH = "ab" * 32


def test_settings_are_checked_with_actionable_messages(tmp_path):
    with pytest.raises(ConfigError, match="COMFYBENTO_MAX_BATCH_SIZE"):
        Settings.from_env({"COMFYBENTO_MAX_BATCH_SIZE": "many"})
    with pytest.raises(ConfigError, match="COMFYBENTO_REDIS_URL"):
        Settings.from_env({"COMFYBENTO_JOBS_BACKEND": "redis"})
    with pytest.raises(ConfigError, match="COMFYBENTO_STORAGE"):
        Settings.from_env({"COMFYBENTO_STORAGE": "ftp"})
    with pytest.raises(ConfigError, match="not a ComfyUI tree"):
        find_comfyui_root(Settings.from_env({"COMFYUI_PATH": str(tmp_path)}))


def _settings_with_keys(tmp_path, text: str, name: str = "keys.yaml", **env: str) -> Settings:
    path = tmp_path / name
    path.write_text(text)
    return Settings.from_env({"COMFYBENTO_API_KEYS_FILE": str(path), **env})


def _keys(env: dict[str, str]) -> tuple[ApiKey, ...]:
    """The keys the front's access layer reads at startup from these settings."""
    return configured_keys(Settings.from_env(env))


def _keys_with_file(tmp_path, text: str, name: str = "keys.yaml", **env: str) -> tuple[ApiKey, ...]:
    return configured_keys(_settings_with_keys(tmp_path, text, name, **env))


def test_keys_file_yaml_and_json(tmp_path):
    settings = _settings_with_keys(
        tmp_path,
        f'- name: alice\n  sha256: "{HASH.upper()}"\n  rate_per_min: 60\n- {{name: bob, sha256: "{"cd" * 32}", images_per_day: 100}}\n',
    )
    alice, bob = configured_keys(settings)
    assert (alice.name, alice.sha256, alice.rate_per_min, alice.images_per_day) == ("alice", HASH, 60, None)
    assert (bob.name, bob.rate_per_min, bob.images_per_day) == ("bob", None, 100)
    assert settings.keys_required
    assert [k.name for k in _keys_with_file(tmp_path, json.dumps([{"name": "j", "sha256": HASH}]), "keys.json")] == ["j"]
    empty = _settings_with_keys(tmp_path, "", "empty.yaml")
    assert configured_keys(empty) == () and empty.keys_required  # a keys file, even empty, means keys are required
    assert not Settings.from_env({}).keys_required


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"- name: a\n  sha256: {HASH[:10]}\n", r"entry 0 \(name 'a'\): sha256: .*64 hex digits"),
        (f'- name: a\n  sha256: "{HASH}"\n- name: b\n  sha256: "{HASH}"\n  rate_per_min: 0\n', r"entry 1 \(name 'b'\): rate_per_min"),
        (f'- name: a\n  sha256: "{HASH}"\n  rate: 5\n', r"entry 0 \(name 'a'\): rate: Extra inputs"),
        (f'- name: a b\n  sha256: "{HASH}"\n', r"entry 0 \(name 'a b'\): name"),
        (f'- name: a\n  sha256: "{HASH}"\n- name: a\n  sha256: "{"cd" * 32}"\n', r"entry 1 \(name 'a'\) has the same name as 'a'"),
        (f'- name: a\n  sha256: "{HASH}"\n- name: b\n  sha256: "{HASH}"\n', r"entry 1 \(name 'b'\) has the same sha256 as 'a'"),
        (f'name: a\nsha256: "{HASH}"\n', "must be a list"),
        ("- name: [unclosed\n", "not valid YAML/JSON"),
        ("- just a string\n", r"entry 0: entry: Input should be a valid dictionary"),
    ],
)
def test_malformed_keys_file_names_the_file_and_entry(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        _keys_with_file(tmp_path, text)
    assert f"COMFYBENTO_API_KEYS_FILE {tmp_path / 'keys.yaml'}" in str(info.value)


def test_missing_keys_file_is_refused_by_the_access_layer_at_startup(tmp_path):
    settings = Settings.from_env({"COMFYBENTO_API_KEYS_FILE": str(tmp_path / "nope.yaml")})  # config only names the file
    with pytest.raises(ConfigError, match=r"COMFYBENTO_API_KEYS_FILE .*nope.yaml: cannot be read"):
        Access.from_settings(settings)  # what the front's access.install calls when the service is built


def test_the_single_env_key_still_works_beside_the_file(tmp_path):
    legacy = _keys({"COMFYBENTO_API_KEY": "s3cret\n"})
    assert [(k.name, k.sha256, k.rate_per_min, k.images_per_day) for k in legacy] == [("default", hash_key("s3cret"), None, None)]
    both = _keys_with_file(tmp_path, f'- name: alice\n  sha256: "{HASH}"\n', COMFYBENTO_API_KEY="s3cret")
    assert [k.name for k in both] == ["alice", "default"]
    with pytest.raises(ConfigError, match="COMFYBENTO_API_KEY clashes with the entry 'default'"):
        _keys_with_file(tmp_path, f'- name: default\n  sha256: "{HASH}"\n', COMFYBENTO_API_KEY="s3cret")
    with pytest.raises(ConfigError, match="COMFYBENTO_API_KEY must be visible ASCII without spaces"):
        _keys({"COMFYBENTO_API_KEY": "two words"})


def test_cors_origins(tmp_path):
    assert Settings.from_env({"COMFYBENTO_CORS_ORIGINS": "https://a.example, http://localhost:3000"}).cors_origins == (
        "https://a.example",
        "http://localhost:3000",
    )
    assert Settings.from_env({"COMFYBENTO_CORS_ORIGINS": "*"}).cors_origins == ("*",)
    assert Settings.from_env({}).cors_origins == ()
    with pytest.raises(ConfigError, match=r"'https://a.example/' is not an origin"):
        Settings.from_env({"COMFYBENTO_CORS_ORIGINS": "https://a.example/"})
    with pytest.raises(ConfigError, match=r"'\*' allows every origin"):
        Settings.from_env({"COMFYBENTO_CORS_ORIGINS": "*,https://a.example"})


def test_keys_add_prints_the_key_once_and_stores_its_hash(tmp_path, capsys):
    path = tmp_path / "keys.yaml"
    path.write_text("# team keys\n")
    assert main(["keys", "add", "alice", "--rate-per-min", "30", "--images-per-day", "500", "--file", str(path)]) == 0
    alice = capsys.readouterr().out.strip()
    assert main(["keys", "add", "bob", "--file", str(path)]) == 0
    bob = capsys.readouterr().out.strip()
    text = path.read_text()
    assert text.startswith("# team keys\n") and alice not in text and bob not in text
    keys = _keys({"COMFYBENTO_API_KEYS_FILE": str(path)})
    assert [(k.name, k.sha256, k.rate_per_min, k.images_per_day) for k in keys] == [
        ("alice", hash_key(alice), 30, 500),
        ("bob", hash_key(bob), None, None),
    ]
    assert main(["keys", "add", "ops", "--operator", "--file", str(path)]) == 0
    capsys.readouterr()
    assert [k.operator for k in _keys({"COMFYBENTO_API_KEYS_FILE": str(path)})] == [False, False, True]
    text = path.read_text()
    assert main(["keys", "add", "alice", "--file", str(path)]) == 2  # names are unique
    assert main(["keys", "add", "carol", "--rate-per-min", "0", "--file", str(path)]) == 2
    assert "rate_per_min" in capsys.readouterr().err and path.read_text() == text
