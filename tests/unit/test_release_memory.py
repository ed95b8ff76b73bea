"""engine/engine.py `release_freed_memory`: the heap an execution freed goes back to the system (glibc)."""

from __future__ import annotations

import psutil
import pytest

from comfybento.engine.engine import _malloc_trim, release_freed_memory


@pytest.mark.skipif(_malloc_trim() is None, reason="not glibc: malloc_trim does not exist")
def test_freed_heap_memory_is_returned_to_the_system():
    rss = psutil.Process().memory_info().rss
    chunks = [bytearray(60_000) for _ in range(5_000)]  # 300 MB in heap chunks (below glibc's mmap threshold)
    keep = chunks[::50]  # pins the heap's top, as long-lived objects do, so glibc cannot trim it by itself
    del chunks
    held = psutil.Process().memory_info().rss
    release_freed_memory()
    released = psutil.Process().memory_info().rss
    assert held - rss > 200e6, "the allocations did not grow the heap"
    assert held - released > 150e6, f"RSS {held / 1e6:.0f} MB before, {released / 1e6:.0f} MB after"
    assert len(keep) == 100
