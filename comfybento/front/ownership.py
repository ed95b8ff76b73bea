"""Who owns what, and what a request may see: the one place that decides, asked by every route of every API.

Every object a request makes belongs to its API key (the key's name, `access.key_name`): a job (`/jobs`,
a ComfyUI prompt, a Comfy API v2 job), a ComfyUI upload, a Comfy API v2 asset, a live output stored for its URL.
A caller sees and acts on its own objects only. Another key's object is answered exactly as one that does not
exist (a 404 in the route's API's own shape, a listing without it, an action that does nothing), so neither its
id nor its file names are confirmed. Two kinds of caller see everything:

- an operator key (`operator: true` in the keys file; `python -m comfybento keys add NAME --operator`),
  for support and usage views;
- every caller when keys are off: single-user mode, no isolation at all (as before keys existed).

An object made while keys were off has no owner: once keys are on, only an operator sees it.
Files have no owner field, so they carry their owner's tag (`owner_tag`) in their path: ComfyUI uploads
live in a folder per key, a live output's folder ends in the tag.

Routes ask `caller(request)` and then `can_see(owner)` / `require(owner, message)`, list with
`listing_owner`, and record `name` as the owner of what they make.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

from comfybento.errors import NotFound
from comfybento.front import access


def owner_tag(name: str) -> str:
    """A path-safe tag of a key name (32 hex digits), for the files of that key."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Caller:
    """The key a request came with: its name (None when keys are off) and whether it is an operator."""

    name: str | None
    operator: bool = False

    @property
    def sees_all(self) -> bool:
        """An operator, or anyone when keys are off."""
        return self.name is None or self.operator

    def can_see(self, owner: str | None) -> bool:
        """Whether the caller may see (and act on) an object owned by `owner` (None: made while keys were off)."""
        return self.sees_all or owner == self.name

    def require(self, owner: str | None, message: str) -> None:
        """Raise NotFound(message) unless the caller may see the object: give the message an unknown id gets."""
        if not self.can_see(owner):
            raise NotFound(message)

    @property
    def listing_owner(self) -> str | None:
        """The owner a listing is filtered to; None: every owner's objects (an operator, or keys off)."""
        return None if self.sees_all else self.name

    @property
    def tag(self) -> str | None:
        """The tag of the caller's files (owner_tag of its name); None when keys are off (files are untagged, as before)."""
        return owner_tag(self.name) if self.name is not None else None

    def can_see_tag(self, tag: str | None) -> bool:
        """Whether the caller may see a file carrying `tag` (None: an untagged file, made while keys were off)."""
        return self.sees_all or (tag is not None and tag == self.tag)


OPEN = Caller(None)  # keys off: single-user mode


def caller(target: HTTPConnection | dict[str, Any] | None = None) -> Caller:
    """The caller of a request or websocket (or its ASGI scope; None: the request being handled)."""
    key = access.api_key(target)
    return Caller(key.name, key.operator) if key is not None else OPEN
