"""Streamed evaluation agrees with metrics computed the plain way on the whole test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from mlsys.recommender.data.dataset import open_dataset
from mlsys.recommender.data.stream import FeatureTables
from mlsys.recommender.model import RankNet
from mlsys.recommender.training.evaluate import evaluate, evaluate_model, roc_auc


def test_roc_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=5000), 1).astype(np.float32)  # many ties
    labels = rng.random(5000) < 1 / (1 + np.exp(-scores))
    want = roc_auc_score(labels, scores)
    assert roc_auc(scores, labels) == pytest.approx(want, abs=1e-12)
    assert roc_auc(scores, labels, chunk=7) == pytest.approx(want, abs=1e-12)  # in pieces
    assert np.isnan(roc_auc(scores, np.zeros(5000, dtype=bool)))  # one class: undefined


def test_streamed_metrics_equal_the_plain_computation(tiny_data: Path) -> None:
    torch.manual_seed(0)
    model = RankNet().eval()
    ds = open_dataset(tiny_data)
    tables = FeatureTables.load(ds)
    report = evaluate_model(model, ds, tables, progress=False)
    parts = [(u, r, c) for _, u, r, c in ds.iter_clicks("test")]
    users, rests, clicks = (np.concatenate(cols) for cols in zip(*parts, strict=True))
    with torch.no_grad():
        z = model(torch.from_numpy(tables.gather(users, rests))).numpy().astype(np.float64)
    p = 1 / (1 + np.exp(-z))
    assert report["rows"] == len(clicks)
    assert report["accuracy"] == pytest.approx(float(((p > 0.5) == (clicks > 0.5)).mean()))
    assert report["roc_auc"] == pytest.approx(roc_auc_score(clicks, z), abs=1e-6)
    assert report["log_loss"] == pytest.approx(log_loss(clicks, p), rel=1e-5)
    assert report["brier"] == pytest.approx(brier_score_loss(clicks, p), rel=1e-5)
    assert sum(report["calibration"]["count"]) == len(clicks)
    assert 0.0 <= report["ece"] <= 1.0


def test_evaluates_a_bare_kit_model_pt(tiny_data: Path, tmp_path: Path) -> None:
    torch.manual_seed(5)
    torch.jit.script(RankNet()).save(str(tmp_path / "model.pt"))
    report = evaluate(tmp_path / "model.pt", tiny_data, out_dir=tmp_path / "eval", progress=False)
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["accuracy"] == report["accuracy"]
    assert saved["same_data_as_training"] is None
    assert (tmp_path / "eval" / "reliability.png").is_file()
