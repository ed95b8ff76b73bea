"""The front's call into the engine when BentoML's adaptive batcher stands in front of it (COMFYBENTO_ENGINE_ENTRY=bentoml)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from comfybento.engine.messages import EngineItem, ItemResult
from comfybento.front.endpoints import call_engine


def _front(raises: Exception | None = None, result: ItemResult | None = None) -> SimpleNamespace:
    async def txt2img(items: list[EngineItem]) -> list[ItemResult]:
        if raises is not None:
            raise raises
        assert result is not None
        return [result]

    return SimpleNamespace(engine_client=None, engine=SimpleNamespace(to_async=SimpleNamespace(txt2img=txt2img)))


def test_bentoml_shedding_is_a_503_that_says_so():
    """BentoML's batcher answers ServiceUnavailable when its queue is full: a 503 result, never an exception."""
    result = asyncio.run(call_engine(_front(ServiceUnavailable("queue full")), "txt2img", EngineItem(values={}, seed=3)))
    assert not result.ok and result.status == 503 and result.error_kind == "unavailable" and result.seed == 3
    assert "at capacity" in (result.error or "")


def test_other_batcher_errors_are_not_mistaken_for_shedding():
    with pytest.raises(BentoMLException):
        asyncio.run(call_engine(_front(BentoMLException("boom")), "txt2img", EngineItem(values={}, seed=1)))


def test_a_batched_result_comes_back_as_is():
    done = ItemResult(ok=True, seed=9, batch_size=4)
    assert asyncio.run(call_engine(_front(result=done), "txt2img", EngineItem(values={}, seed=9))) == done
