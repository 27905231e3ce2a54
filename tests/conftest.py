"""Fixtures shared across domains. Domain-specific fixtures live in tests/<domain>/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlsys.recommender.generate import generate_clicks


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated `tiny` click dataset (seed 7), made once per test session. Treat as read-only."""
    out = tmp_path_factory.mktemp("clicks") / "tiny"
    generate_clicks(out, scale="tiny", seed=7, progress=False)
    return out
