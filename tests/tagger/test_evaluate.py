"""Evaluation: the metrics themselves, and the report a trained model gets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlsys.tagger import metrics as M
from mlsys.tagger.training.augment import CORRUPTIONS
from mlsys.tagger.training.evaluate import confusion, evaluate_tagger


def test_topk_and_prf_on_known_values() -> None:
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    y = np.array([1, 1, 2, 2])
    assert M.topk_accuracy(probs, y, 1) == 0.5
    assert M.topk_accuracy(probs, y, 2) == 1.0
    p, r, f = M.precision_recall_f1(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))
    assert (p, r, f) == (0.5, 0.5, 0.5)
    assert M.precision_recall_f1(np.zeros(3, np.int64), np.zeros(3, np.int64)) == (0.0, 0.0, 0.0)
    cm = confusion(y, probs.argmax(1), 3)
    assert cm.sum() == 4 and cm[1, 1] == 1 and cm[2, 0] == 1


def test_evaluate_writes_metrics_plots_robustness_and_baseline(
    tagger_model: Path, garments_tiny: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    result = evaluate_tagger(garments_tiny, tagger_model, out, progress=False, log=lambda s: None)
    for name in ("metrics.json", "report.md", "confusion_matrix.png", "pr_curves.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["top1"] == result["top1"]
    assert 0.0 <= result["top1"] <= result["top2"] <= 1.0
    assert set(result["corruptions"]) == set(CORRUPTIONS)
    assert np.array(result["confusion_matrix"]).sum() == result["n"]
    assert {"top1", "top2", "tag_macro_f1"} <= set(result["pixel_baseline"])
    assert result["ceiling_top1"] is None or 0.0 < result["ceiling_top1"] <= 1.0
    # The generated set has latents, so errors are broken down against the Bayes classifier.
    cm = np.array(result["confusion_matrix"])
    assert sum(e["model"] for e in result["error_pairs"]) == cm.sum() - np.trace(cm)
    assert all(e["true"] != e["predicted"] for e in result["error_pairs"])
    assert "| true | predicted | model | Bayes | excess |" in (out / "report.md").read_text()
