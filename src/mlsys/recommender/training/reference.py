"""The reference profile a RankNet is trained with: what "undrifted" inputs and scores look like.

Written by `mlsys train ranknet` into the model directory (`reference.parquet`), so it is
registered and fetched with the version, and drift is always judged against the data that
version learned from (issue 17). It is a uniform sample of training rows, `REFERENCE_ROWS` by
default: each row's user features (user_f00-f29), restaurant features (restaurant_f00-f09) and
the model's click probability for the pair, the score `/recommend` returns. A sample, not
histograms: the two-sample statistics of `platform/drift.py` (Kolmogorov-Smirnov, Wasserstein)
need values, and thresholds are calibrated on chunks of this sample for whatever window a
monitor uses.

Beside it, `reference_requests.parquet` profiles the requests of the data's requests.parquet
(when it has one) the way /recommend meets them: per request, the candidates asked for, how
many are within `max_dist`, and the distance of one reachable candidate drawn at random, the
same three things every logged answer carries (`impressions.scored_sample`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlsys.files import atomic_write_bytes
from mlsys.recommender.data.dataset import ClickDataset
from mlsys.recommender.data.schema import CLICKS_SCHEMA, open_parquet
from mlsys.recommender.data.stream import FeatureTables
from mlsys.recommender.model import RESTAURANT_FEATURES, USER_FEATURES
from mlsys.recommender.ranking import Scorer

REFERENCE_FILE = "reference.parquet"
REQUESTS_REFERENCE_FILE = "reference_requests.parquet"
REFERENCE_ROWS = 5000
REQUEST_COLUMNS = ("distance", "candidates", "reachable")


def reference_columns() -> list[str]:
    return [f"user_{f}" for f in USER_FEATURES] + [f"restaurant_{f}" for f in RESTAURANT_FEATURES]


def write_reference(
    out: Path,
    dataset: ClickDataset,
    tables: FeatureTables,
    scorer: Scorer,
    rows: int = REFERENCE_ROWS,
    seed: int = 0,
) -> Path:
    """Sample `rows` training rows (from the first batch of each train file, in proportion)
    and write their features and scores to OUT/reference.parquet."""
    rng = np.random.default_rng(seed)
    users, restaurants = [], []
    files = dataset.files("train")
    share = rows // len(files) + 1
    for click_file in files:  # the first batch of each file: uniform enough, and fast
        pf = open_parquet(click_file.path, CLICKS_SCHEMA)
        batch = next(pf.iter_batches(batch_size=max(share * 20, 65_536),
                                     columns=["user_id", "restaurant_id"]))  # fmt: skip
        pick = rng.choice(batch.num_rows, size=min(share, batch.num_rows), replace=False)
        users.append(batch.column(0).to_numpy()[pick].astype(np.int64))
        restaurants.append(batch.column(1).to_numpy()[pick].astype(np.int64))
    user_ids = np.concatenate(users)[:rows]
    restaurant_ids = np.concatenate(restaurants)[:rows]
    u = tables.users[user_ids]
    r = tables.restaurants[restaurant_ids]
    scores = scorer.scores(scorer.user_part(u), r)  # row i: user i with restaurant i
    features = np.concatenate([u, r], axis=1)
    columns: dict[str, Any] = {name: features[:, j] for j, name in enumerate(reference_columns())}
    columns["score"] = scores
    path = out / REFERENCE_FILE
    _write(path, columns)
    if dataset.has_requests:
        _write(out / REQUESTS_REFERENCE_FILE, _request_profile(dataset, tables, rows, rng))
    return path


def _request_profile(
    dataset: ClickDataset, tables: FeatureTables, rows: int, rng: np.random.Generator
) -> dict[str, Any]:
    """Up to `rows` requests of requests.parquet with a reachable candidate, met the way
    `ranking.reachable` meets them."""
    from mlsys.recommender.ranking import Rows, reachable

    requests = dataset.requests()
    locations = dataset.restaurant_locations()
    out: dict[str, list[float]] = {name: [] for name in REQUEST_COLUMNS}
    for i in rng.permutation(len(requests)).tolist():
        query = requests.query(i)
        cands = requests.candidates_of(i)
        user = tables.users[query.user_id]
        reach = reachable(query, Rows.in_memory(user, cands, tables.restaurants, locations))
        if not len(reach.ids):  # such an answer carries no monitored row either
            continue
        out["distance"].append(float(reach.displacement[rng.integers(len(reach.ids))]))
        out["candidates"].append(float(len(cands)))
        out["reachable"].append(float(len(reach.ids)))
        if len(out["distance"]) == rows:
            break
    return out


def _write(path: Path, columns: dict[str, Any]) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
