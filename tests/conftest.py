"""Shared test helpers: paths of the test graphs."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
GRAPHS = TESTS / "graphs"
ROOT = TESTS.parent


@pytest.fixture
def graphs_dir() -> Path:
    return GRAPHS
