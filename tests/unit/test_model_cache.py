"""The checkpoint cache's bookkeeping: least recently used out, pinned models never, a model too big refused by name."""

from __future__ import annotations

import pytest

from comfybento.errors import TooLarge
from comfybento.runtime.model_cache import ModelCache


class Loads:
    """Records what was loaded and released (the values are plain strings here; ComfyUI models in the engine)."""

    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.released: list[str] = []

    def loader(self, key: str):
        def load() -> str:
            self.loaded.append(key)
            return f"model:{key}"

        return load

    def release(self, key: str, value: str) -> None:
        assert value == f"model:{key}"
        self.released.append(key)


def test_least_recently_used_leaves_first_and_pinned_models_never():
    log = Loads()
    cache: ModelCache[str] = ModelCache(100, log.release)
    cache.pin("base", 40, log.loader("base"))
    assert cache.get_or_load("a", 30, log.loader("a")) == "model:a"
    cache.get_or_load("b", 30, log.loader("b"))
    assert cache.used_bytes == 100 and log.released == []
    cache.get_or_load("a", 30, log.loader("a"))  # a hit: not loaded again, now the most recently used
    assert log.loaded == ["base", "a", "b"]
    cache.get_or_load("c", 30, log.loader("c"))  # b is the least recently used unpinned model
    assert log.released == ["b"] and cache.keys() == ["base", "a", "c"]
    cache.get_or_load("d", 60, log.loader("d"))  # needs both a and c out; base stays
    assert log.released == ["b", "a", "c"] and cache.keys() == ["base", "d"]
    assert cache.is_pinned("base") and not cache.is_pinned("d") and cache.pinned_bytes == 40


def test_peek_neither_loads_nor_counts_as_a_use():
    log = Loads()
    cache: ModelCache[str] = ModelCache(60, log.release)
    cache.get_or_load("a", 30, log.loader("a"))
    cache.get_or_load("b", 30, log.loader("b"))
    assert cache.peek("a") == "model:a" and cache.peek("zzz") is None
    cache.get_or_load("c", 30, log.loader("c"))
    assert log.released == ["a"]  # peeked, still the least recently used
    assert log.loaded == ["a", "b", "c"]


def test_a_model_that_cannot_fit_beside_the_pinned_ones_is_refused_by_name():
    log = Loads()
    cache: ModelCache[str] = ModelCache(100, log.release, setting="COMFYBENTO_MODEL_CACHE_BYTES")
    cache.pin("base", 70, log.loader("base"))
    cache.get_or_load("small", 20, log.loader("small"))
    with pytest.raises(TooLarge, match=r"model huge \(40 bytes\).*COMFYBENTO_MODEL_CACHE_BYTES is 100 bytes.*take 70"):
        cache.get_or_load("huge", 40, log.loader("huge"))
    assert "huge" not in log.loaded and log.released == [] and cache.keys() == ["base", "small"]  # nothing lost for it


def test_pinning_keeps_a_model_whatever_the_budget_and_pins_a_cached_one_in_place():
    log = Loads()
    cache: ModelCache[str] = ModelCache(10, log.release)
    cache.pin("big", 50, log.loader("big"))  # the defaults are loaded even over the budget (the engine warns)
    assert cache.keys() == ["big"] and cache.used_bytes == 50
    roomy: ModelCache[str] = ModelCache(100, log.release)
    roomy.get_or_load("x", 30, log.loader("x"))
    roomy.pin("x", 30, log.loader("x"))
    assert log.loaded.count("x") == 1 and roomy.is_pinned("x")
