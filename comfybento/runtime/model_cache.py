"""Loaded models within a byte budget: pinned ones stay, the others leave least recently used first.

Pure bookkeeping, no ComfyUI: the caller says how to load a model and how to
release one (runtime/nodes.py hands them to ComfyUI's model management).
Each model counts at the size it is given (its file size in models.lock).

    cache = ModelCache(budget_bytes=8 << 30, release=unload)
    cache.pin("base.safetensors", size, value)            # the workflows' defaults, never evicted
    model = cache.get_or_load("other.safetensors", size, load)   # on demand, LRU out as needed
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from comfybento.errors import TooLarge

V = TypeVar("V")


@dataclass
class _Slot(Generic[V]):
    value: V
    size: int
    pinned: bool


class ModelCache(Generic[V]):
    """An LRU of loaded models bounded by `budget_bytes`; pinned entries count against it but never leave.

    Loads happen outside the lock (they take seconds); one thread loads (ComfyUI's executor thread),
    others may `peek`. `release(key, value)` is called for every evicted model, on the loading thread.
    """

    def __init__(self, budget_bytes: int, release: Callable[[str, V], None] | None = None, setting: str = "the budget") -> None:
        self.budget_bytes = budget_bytes
        self._release = release or (lambda key, value: None)
        self._setting = setting
        self._slots: OrderedDict[str, _Slot[V]] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(s.size for s in self._slots.values())

    @property
    def pinned_bytes(self) -> int:
        with self._lock:
            return sum(s.size for s in self._slots.values() if s.pinned)

    def keys(self) -> list[str]:
        """Cached models, least recently used first."""
        with self._lock:
            return list(self._slots)

    def is_pinned(self, key: str) -> bool:
        with self._lock:
            slot = self._slots.get(key)
            return slot is not None and slot.pinned

    def peek(self, key: str) -> V | None:
        """The model if it is loaded, without loading it or counting it as used."""
        with self._lock:
            slot = self._slots.get(key)
            return slot.value if slot is not None else None

    def pin(self, key: str, size: int, load: Callable[[], V]) -> V:
        """Load (if needed) and keep a model for the life of the cache, whatever the budget."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None:
                slot.pinned = True
                return slot.value
        value = load()
        with self._lock:
            self._slots[key] = _Slot(value, size, pinned=True)
        return value

    def get_or_load(self, key: str, size: int, load: Callable[[], V]) -> V:
        """The cached model (now the most recently used), or load it after evicting what it needs.

        Raises TooLarge, naming the model, when it cannot fit even with every unpinned model out.
        """
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None:
                self._slots.move_to_end(key)
                return slot.value
            evicted = self._make_room(key, size)
        for old_key, old_value in evicted:
            self._release(old_key, old_value)
        value = load()
        with self._lock:
            self._slots[key] = _Slot(value, size, pinned=False)
        return value

    def _make_room(self, key: str, size: int) -> list[tuple[str, V]]:
        pinned = sum(s.size for s in self._slots.values() if s.pinned)
        if pinned + size > self.budget_bytes:
            raise TooLarge(
                f"model {key} ({size} bytes) does not fit in the model cache: {self._setting} is "
                f"{self.budget_bytes} bytes and the workflows' default models take {pinned}"
            )
        used = sum(s.size for s in self._slots.values())
        evicted: list[tuple[str, V]] = []
        for old_key in [k for k, s in self._slots.items() if not s.pinned]:
            if used + size <= self.budget_bytes:
                break
            slot = self._slots.pop(old_key)
            used -= slot.size
            evicted.append((old_key, slot.value))
        return evicted
