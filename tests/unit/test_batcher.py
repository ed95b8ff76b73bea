from __future__ import annotations

import pytest

from comfybento.errors import NodeExecutionError, OutOfMemory
from comfybento.scheduling.admission import Admission
from comfybento.scheduling.batcher import Batcher


def _key(item):
    return item[0]


def _always(item):
    return True


def test_groups_by_key_in_arrival_order_and_caps_size():
    batcher = Batcher()
    items = [("a", 0), ("b", 1), ("a", 2), ("a", 3), ("b", 4)]
    groups = batcher.groups(items, _key, _always, max_batch=2)
    assert groups == [("a", [0, 2]), ("a", [3]), ("b", [1, 4])]
    solo = batcher.groups(items, _key, lambda item: item[0] == "a", max_batch=8)
    assert solo == [("a", [0, 2, 3]), ("b", [1]), ("b", [4])]


def test_out_of_memory_splits_in_halves_and_remembers_the_fit():
    batcher = Batcher()
    calls = []

    def execute(chunk):
        calls.append(len(chunk))
        if len(chunk) > 2:
            raise OutOfMemory("too big")
        return [f"ok{i}" for _, i in chunk]

    items = [("k", i) for i in range(8)]
    assert batcher.run(items, _key, _always, execute, max_batch=8) == [f"ok{i}" for i in range(8)]
    assert calls == [8, 4, 2, 2, 4, 2, 2]
    assert batcher.largest_fit("k") == 2
    calls.clear()
    batcher.run(items, _key, _always, execute, max_batch=8)
    assert calls == [2, 2, 2, 2]  # the remembered fit is used straight away


def test_one_failing_item_does_not_fail_its_neighbours():
    batcher = Batcher()

    def execute(chunk):
        if any(i == 2 for _, i in chunk):
            raise NodeExecutionError("3", "KSampler", "boom")
        return [i * 10 for _, i in chunk]

    results = batcher.run([("k", i) for i in range(4)], _key, _always, execute, max_batch=4)
    assert results[:2] == [0, 10] and results[3] == 30
    assert isinstance(results[2], NodeExecutionError) and "node 3 (KSampler)" in str(results[2])


def test_out_of_memory_on_a_single_item_is_its_result():
    batcher = Batcher()

    def execute(chunk):
        raise OutOfMemory("no room")

    results = batcher.run([("k", 0)], _key, _always, execute, max_batch=4)
    assert isinstance(results[0], OutOfMemory)


def test_admission_is_bounded_per_key():
    admission = Admission(limit=2, retry_after_s=3)
    assert admission.try_enter("a") and admission.try_enter("a")
    assert admission.try_enter("a") is None
    assert admission.try_enter("b")
    admission.leave("a")
    assert admission.try_enter("a") and admission.in_flight("a") == 2


@pytest.mark.parametrize("size", [1, 3, 7])
def test_every_item_gets_exactly_one_result(size):
    batcher = Batcher()
    items = [(str(i % 2), i) for i in range(size)]
    results = batcher.run(items, _key, _always, lambda chunk: [i for _, i in chunk], max_batch=2)
    assert results == list(range(size))
