"""The garment labels as arrays, and the validation split training holds out of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlsys.errors import MlsysError
from mlsys.tagger.schema import CATEGORIES, COLORS, TAGS, GarmentDataset


@dataclass
class Labelled:
    """Labels of one split as arrays, aligned with `uuids`. -1 marks a label that training
    must not see (a held-out tag or colour)."""

    uuids: list[str]
    category: np.ndarray  # (N,) int64 index into CATEGORIES
    tags: np.ndarray  # (N, 3) float32 0/1, or -1 where held out
    colour: np.ndarray  # (N,) int64 index into COLORS, or -1 where unknown or held out

    def subset(self, idx: np.ndarray) -> Labelled:
        return Labelled(
            [self.uuids[i] for i in idx], self.category[idx], self.tags[idx], self.colour[idx]
        )

    def __len__(self) -> int:
        return len(self.uuids)

    def __add__(self, other: Labelled) -> Labelled:
        return Labelled(
            self.uuids + other.uuids,
            np.concatenate([self.category, other.category]),
            np.concatenate([self.tags, other.tags]),
            np.concatenate([self.colour, other.colour]),
        )

    def category_only(self) -> Labelled:
        """The same items with their tag and colour labels held out (-1)."""
        return Labelled(
            self.uuids,
            self.category,
            np.full_like(self.tags, -1.0),
            np.full_like(self.colour, -1),
        )


def labelled(table: Any) -> Labelled:
    """data.parquet / test_labels.parquet -> index arrays (the schema was checked on open)."""
    cat_index = {c: i for i, c in enumerate(CATEGORIES)}
    col_index = {c: i for i, c in enumerate(COLORS)}
    return Labelled(
        uuids=[str(u) for u in table.column("uuid").to_pylist()],
        category=np.array([cat_index[c] for c in table.column("cc3").to_pylist()], np.int64),
        tags=np.stack([np.asarray(table.column(t).to_pylist(), np.float32) for t in TAGS], 1),
        colour=np.array([col_index[c] for c in table.column("color1").to_pylist()], np.int64),
    )


def labelled_test(data: GarmentDataset) -> Labelled:
    """test_labels.parquet's labels in test.parquet's order: what predictions are scored
    against (open_garments has checked that both hold the same uuids)."""
    if data.test_labels is None:
        raise MlsysError(
            f"{data.root}: no test_labels.parquet, so there is nothing to score predictions against"
        )
    lab = labelled(data.test_labels)
    row = {u: i for i, u in enumerate(lab.uuids)}
    return lab.subset(np.array([row[u] for u in data.test_uuids], np.int64))


def stratified_split(
    labels: Labelled, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out `val_fraction` of every category (and of every tag pattern within it)."""
    rng = np.random.default_rng(seed)
    strata = labels.category * 8 + (labels.tags @ np.array([1, 2, 4], np.float32)).astype(np.int64)
    train, val = [], []
    for s in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == s))
        n_val = round(len(idx) * val_fraction)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
