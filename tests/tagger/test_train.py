"""Training: the split, the thresholds, and what a trained model dir must contain."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mlsys.errors import MlsysError
from mlsys.files import file_version
from mlsys.tagger import metrics as M
from mlsys.tagger.schema import CATEGORIES, COLORS, TAGS, open_garments
from mlsys.tagger.training.labels import Labelled, labelled_test, stratified_split
from mlsys.tagger.training.model import load_pretrained
from mlsys.tagger.training.train import _colour_loss, _pos_weight, _tag_loss


def _labels(n: int, seed: int = 0) -> Labelled:
    rng = np.random.default_rng(seed)
    return Labelled(
        uuids=[f"u{i}" for i in range(n)],
        category=rng.integers(0, len(CATEGORIES), n),
        tags=(rng.random((n, 3)) < [0.1, 0.2, 0.15]).astype(np.float32),
        colour=rng.integers(0, len(COLORS), n),
    )


def test_stratified_split_is_disjoint_complete_and_keeps_class_shares() -> None:
    labels = _labels(2000)
    tr, va = stratified_split(labels, 0.1, seed=3)
    assert len(np.intersect1d(tr, va)) == 0
    assert len(tr) + len(va) == 2000
    assert abs(len(va) - 200) <= 25
    for c in range(len(CATEGORIES)):
        share_all = (labels.category == c).mean()
        share_val = (labels.category[va] == c).mean()
        assert abs(share_all - share_val) < 0.02
    again, _ = stratified_split(labels, 0.1, seed=3)
    assert np.array_equal(tr, again)


def test_best_threshold_maximises_f1_over_every_cut() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(500) < 0.2).astype(np.int64)
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    th = M.best_threshold(p, y)
    best = max(M.precision_recall_f1((p >= t).astype(np.int64), y)[2] for t in np.unique(p))
    assert M.precision_recall_f1((p >= th).astype(np.int64), y)[2] == best


def test_trained_model_dir_is_complete(tagger_model: Path) -> None:
    meta = json.loads((tagger_model / "tagger.json").read_text())
    assert meta["categories"] == list(CATEGORIES)
    assert meta["tags"] == list(TAGS)
    assert set(meta["thresholds"]) == set(TAGS)
    assert all(0.0 <= v <= 1.0 for v in meta["thresholds"].values())
    assert meta["preprocessing"]["size"] == 64
    deployed = tagger_model / meta["model_file"]
    assert meta["version"] == file_version(deployed)
    for key in ("fp32_file", "int8_file", "torch_file"):
        assert (tagger_model / meta[key]).is_file()
    history = meta["history"]
    assert 1 <= len(history) <= 2
    assert {"train_loss", "val_tag_loss", "val_tag_macro_f1_at_0.5"} <= set(history[0])
    # Every labelled image trains (on its category); the validation split is a part of them
    # whose tag and colour labels are held out, stratified like the whole.
    labelled_uuids = set(open_garments(meta["data_dir"]).data.column("uuid").to_pylist())
    assert meta["n_train"] == len(labelled_uuids)
    assert meta["n_val"] == len(meta["val_uuids"]) > 0
    assert set(meta["val_uuids"]) < labelled_uuids
    assert meta["val_metrics"]["tags"].keys() == set(TAGS)
    assert 0.0 <= meta["val_top1_changed_by_int8"] <= 1.0


def test_training_only_changes_the_tuned_blocks(tagger_model: Path) -> None:
    meta = json.loads((tagger_model / "tagger.json").read_text())
    tuned_from = meta["config"]["tune_from_block"]
    trained = torch.load(tagger_model / meta["torch_file"], map_location="cpu", weights_only=True)
    pretrained = load_pretrained().state_dict()
    frozen = [
        k for k in pretrained if k.startswith("_blocks.") and int(k.split(".")[1]) < tuned_from
    ]
    assert frozen
    for k in frozen:
        assert torch.equal(trained["backbone." + k], pretrained[k]), k
    changed = [
        k for k in pretrained if k.startswith(f"_blocks.{tuned_from}.") and k.endswith("weight")
    ]
    assert any(not torch.equal(trained["backbone." + k], pretrained[k]) for k in changed)


def test_test_labels_come_in_test_parquet_order(garments_tiny: Path, tmp_path: Path) -> None:
    data = open_garments(garments_tiny)
    test = labelled_test(data)
    assert test.uuids == data.test_uuids
    rows = {r["uuid"]: r for r in pq.read_table(garments_tiny / "test_labels.parquet").to_pylist()}
    assert [CATEGORIES[c] for c in test.category] == [rows[u]["cc3"] for u in test.uuids]

    bare = tmp_path / "kit"
    shutil.copytree(garments_tiny, bare)
    (bare / "test_labels.parquet").unlink()
    with pytest.raises(MlsysError, match=r"no test_labels\.parquet"):
        labelled_test(open_garments(bare))


def test_colour_loss_skips_recoloured_views_and_never_goes_nan() -> None:
    logits = torch.randn(4, len(COLORS), requires_grad=True)
    y = torch.tensor([3, -1, 5, -1])
    loss = _colour_loss(logits, y)
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], y[[0, 2]])
    torch.testing.assert_close(loss, expected)
    none_known = _colour_loss(logits, torch.full((4,), -1))
    assert none_known.item() == 0.0
    none_known.backward()  # type: ignore[no-untyped-call]  # still a graph, zero gradient
    assert logits.grad is not None and not logits.grad.any()


def test_held_out_tag_labels_reach_neither_the_loss_nor_pos_weight() -> None:
    labels = _labels(40, seed=2)
    known, held = labels.subset(np.arange(30)), labels.subset(np.arange(30, 40))
    fit = known + held.category_only()
    assert fit.uuids == labels.uuids
    assert np.array_equal(fit.category, labels.category)
    assert (fit.tags[30:] == -1).all() and (fit.colour[30:] == -1).all()
    torch.testing.assert_close(_pos_weight(fit.tags), _pos_weight(known.tags))

    logits = torch.randn(40, 3, requires_grad=True)
    pw = _pos_weight(known.tags)
    loss = _tag_loss(logits, torch.from_numpy(fit.tags), pw)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:30], torch.from_numpy(known.tags), pos_weight=pw
    )
    torch.testing.assert_close(loss, expected)
    loss.backward()  # type: ignore[no-untyped-call]
    assert logits.grad is not None and not logits.grad[30:].any() and logits.grad[:30].any()
    all_held = _tag_loss(logits, torch.full((40, 3), -1.0), pw)
    assert all_held.item() == 0.0
