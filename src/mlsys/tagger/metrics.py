"""The tagger's metrics, shared by training (validation), evaluation and the notebook.

Plain numpy so the same function scores eager PyTorch, ONNX fp32 and INT8 outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlsys.tagger.schema import TAGS


def topk_accuracy(probs: np.ndarray, y: np.ndarray, k: int) -> float:
    if len(y) == 0:
        return float("nan")
    topk = np.argsort(-probs, axis=1)[:, :k]
    return float((topk == y[:, None]).any(axis=1).mean())


def precision_recall_f1(pred: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """For one binary tag; an empty denominator counts as 0 (no credit for silence)."""
    tp = float(((pred == 1) & (y == 1)).sum())
    fp = float(((pred == 1) & (y == 0)).sum())
    fn = float(((pred == 0) & (y == 1)).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def best_threshold(probs: np.ndarray, y: np.ndarray) -> float:
    """The probability cut that maximises F1 on these labels (midpoint between scores).

    Sweeps every distinct score, so the chosen cut is exact rather than a grid point.
    """
    if y.sum() == 0:
        return 0.5
    order = np.argsort(-probs)
    p_sorted, y_sorted = probs[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(1 - y_sorted)
    f1 = 2 * tp / (tp + fp + y.sum())
    # Only cut between distinct scores.
    valid = np.r_[p_sorted[1:] < p_sorted[:-1], True]
    i = int(np.argmax(np.where(valid, f1, -1.0)))
    below = p_sorted[i + 1] if i + 1 < len(p_sorted) else 0.0
    return float((p_sorted[i] + below) / 2)


def best_thresholds(tag_probs: np.ndarray, tags: np.ndarray) -> np.ndarray:
    return np.array([best_threshold(tag_probs[:, j], tags[:, j]) for j in range(tags.shape[1])])


def summary(
    probs: dict[str, np.ndarray],
    category: np.ndarray,
    tags: np.ndarray,
    colour: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
) -> dict[str, Any]:
    """top-1/top-2, per-tag precision/recall/F1 (at `thresholds`, default 0.5), colour accuracy."""
    th = np.full(tags.shape[1], 0.5) if thresholds is None else np.asarray(thresholds)
    per_tag: dict[str, dict[str, float]] = {}
    for j, name in enumerate(TAGS):
        pred = (probs["tags"][:, j] >= th[j]).astype(np.int64)
        p, r, f = precision_recall_f1(pred, tags[:, j].astype(np.int64))
        per_tag[name] = {"precision": p, "recall": r, "f1": f, "threshold": float(th[j]),
                         "support": int(tags[:, j].sum())}  # fmt: skip
    out: dict[str, Any] = {
        "n": len(category),
        "top1": topk_accuracy(probs["category"], category, 1),
        "top2": topk_accuracy(probs["category"], category, 2),
        "tag_macro_f1": float(np.mean([v["f1"] for v in per_tag.values()])),
        "tags": per_tag,
    }
    if colour is not None and "colour" in probs:
        out["colour_acc"] = topk_accuracy(probs["colour"], colour, 1)
    return out
