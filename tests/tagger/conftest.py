"""Garment-tagger fixtures: a tiny generated photo set and a model trained on it in seconds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mlsys.tagger.generate import generate_garments


@pytest.fixture(scope="session")
def garments_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """72 labelled + 24 test items (seed 17). Treat as read-only."""
    out = tmp_path_factory.mktemp("garments") / "tiny"
    generate_garments(out, count=72, test_count=24, seed=17, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def tagger_model(garments_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The QUICK config (64 px, 2 epochs): exercises cache -> fine-tune -> export -> INT8."""
    from mlsys.tagger.train import QUICK, train_tagger

    out = tmp_path_factory.mktemp("tagger") / "model"
    train_tagger(garments_tiny, out, replace(QUICK, seed=1), log=lambda s: None)
    return out
