"""API keys: the keys file (names, sha256 hashes, limits), new keys, and appending one to the file.

A key is a random 32-byte token shown once when it is made; only its sha256 is stored.
For random tokens of that length a plain sha256 is the usual practice (a salted, slow
KDF protects guessable passwords, not 256-bit secrets), and it lets the server find
a key by its hash in one dictionary lookup.

The keys file is a YAML (or JSON, which YAML reads too) list of entries:

    - name: alice                 # unique; labels the key's metrics and limits
      sha256: "9f86d0...0f00a08"  # hex sha256 of the key
      rate_per_min: 60            # optional: requests per minute (token bucket)
      images_per_day: 1000        # optional: images per day (token bucket)
      operator: true              # optional: sees and manages every key's work (front/ownership.py)
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from comfybento.errors import ConfigError
from comfybento.front.atomic_file import write_atomically

if TYPE_CHECKING:
    from comfybento.config import Settings

KEY_PREFIX = "cb_"
# The key named by COMFYBENTO_API_KEY (one unlimited key, kept for compatibility).
ENV_KEY_NAME = "default"
# What a Bearer credential may hold: visible ASCII, no spaces. RFC 6750's b64token is narrower
# (letters, digits, -._~+/ and trailing '='); keys made here are within it, and the
# wider set keeps any COMFYBENTO_API_KEY that worked before working.
BEARER_TOKEN = re.compile(r"[\x21-\x7e]+")


class ApiKey(BaseModel):
    """One key as the server knows it: a name, the hash of the secret and its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] = Field(
        description="Unique name: letters, digits, '.', '_' or '-', at most 64 characters."
    )
    sha256: str = Field(description="Hex sha256 of the key (64 hex digits).")
    rate_per_min: Annotated[int, Field(ge=1)] | None = Field(default=None, description="Requests per minute; none: unlimited.")
    images_per_day: Annotated[int, Field(ge=1)] | None = Field(default=None, description="Images per day; none: unlimited.")
    operator: bool = Field(default=False, description="Sees and manages the work of every key (support, usage); others see their own.")

    @field_validator("sha256", mode="before")
    @classmethod
    def _hex_digest(cls, value: Any) -> Any:
        if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise ValueError("must be the 64 hex digits of a sha256 (quote it in YAML)")
        return value.lower()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh secret: 32 random bytes, URL-safe base64, with a prefix that secret scanners can match."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _entry_error(path: Path, index: int, raw: Any, exc: ValidationError) -> ConfigError:
    name = raw.get("name") if isinstance(raw, dict) else None
    where = f"entry {index}" + (f" (name {name!r})" if name else "")
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors())
    return ConfigError(f"COMFYBENTO_API_KEYS_FILE {path}: {where}: {problems}")


def parse_keys(path: Path, text: str) -> tuple[ApiKey, ...]:
    """The entries of a keys file's text; a ConfigError names the file and the entry that is wrong."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"COMFYBENTO_API_KEYS_FILE {path}: not valid YAML/JSON: {exc}") from None
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"COMFYBENTO_API_KEYS_FILE {path}: must be a list of {{name, sha256, rate_per_min, images_per_day, operator}}")
    keys: list[ApiKey] = []
    for index, entry in enumerate(raw):
        try:
            key = ApiKey.model_validate(entry)
        except ValidationError as exc:
            raise _entry_error(path, index, entry, exc) from None
        for other in keys:
            if other.name == key.name or other.sha256 == key.sha256:
                same = "name" if other.name == key.name else "sha256"
                raise ConfigError(
                    f"COMFYBENTO_API_KEYS_FILE {path}: entry {index} (name {key.name!r}) has the same {same} as {other.name!r}"
                )
        keys.append(key)
    return tuple(keys)


def load_keys(path: Path) -> tuple[ApiKey, ...]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"COMFYBENTO_API_KEYS_FILE {path}: cannot be read ({exc.strerror or exc})") from None
    return parse_keys(path, text)


def server_keys(keys_file: Path | None, env_key: str) -> tuple[ApiKey, ...]:
    """Every key the server accepts: the keys file's, plus COMFYBENTO_API_KEY as the unlimited key 'default'."""
    keys = load_keys(keys_file) if keys_file is not None else ()
    if env_key:
        if not BEARER_TOKEN.fullmatch(env_key):
            raise ConfigError(
                "COMFYBENTO_API_KEY must be visible ASCII without spaces to be sent as 'Bearer <key>'; "
                "make one with `python -m comfybento keys add`"
            )
        legacy = ApiKey(name=ENV_KEY_NAME, sha256=hash_key(env_key))
        clash = next((k.name for k in keys if k.name == legacy.name or k.sha256 == legacy.sha256), None)
        if clash is not None:
            raise ConfigError(
                f"COMFYBENTO_API_KEY clashes with the entry {clash!r} of {keys_file} "
                f"(the environment's key is named {ENV_KEY_NAME!r}; give it another name or drop one)"
            )
        keys = (*keys, legacy)
    return keys


def configured_keys(settings: Settings) -> tuple[ApiKey, ...]:
    """The keys the settings name (COMFYBENTO_API_KEYS_FILE, COMFYBENTO_API_KEY), read and checked: the access layer
    calls it once, when the front starts (front/access.py `Access.from_settings`)."""
    return server_keys(settings.api_keys_file, settings.api_key)


def _entry_yaml(key: ApiKey) -> str:
    lines = [f"- name: {key.name}", f'  sha256: "{key.sha256}"']
    lines += [
        f"  {field}: {value}"
        for field, value in (("rate_per_min", key.rate_per_min), ("images_per_day", key.images_per_day))
        if value is not None
    ]
    if key.operator:
        lines.append("  operator: true")
    return "\n".join(lines) + "\n"


def append_key(path: Path, key: ApiKey) -> None:
    """Add one entry to a keys file (created if missing). YAML keeps its comments; a .json file is rewritten.

    The whole file is checked before it is replaced: a name already there, or a
    file that was broken before, leaves it as it was.
    """
    old = path.read_text() if path.exists() else ""
    existing = parse_keys(path, old)
    if any(k.name == key.name for k in existing):
        raise ConfigError(f"{path} already has a key named {key.name!r}")
    entries = [k.model_dump(exclude_defaults=True) for k in (*existing, key)]
    if path.suffix.lower() == ".json":
        new = json.dumps(entries, indent=2) + "\n"
    else:
        new = old + ("" if not old or old.endswith("\n") else "\n") + _entry_yaml(key)
        try:
            parse_keys(path, new)
        except ConfigError:  # the file is not a block-style list (e.g. "[]"): write it out whole
            new = yaml.safe_dump(entries, sort_keys=False)
    if parse_keys(path, new) != (*existing, key):
        raise ConfigError(f"{path}: the new entry did not read back as written; the file is left as it was")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, new.encode("utf-8"), f".{path.name}.")
