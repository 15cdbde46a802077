"""Shared test fixtures. Everything here is real: files on disk, tiny models trained in the test."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures_dir() -> Path:
    """tests/fixtures: hand-written exports of invented people, one folder per format."""
    return FIXTURES
