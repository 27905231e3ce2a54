"""Generate the reference click dataset, vectorised and streamed.

The feature tables are drawn exactly as the kit draws them (legacy NumPy `RandomState(seed)`,
same calls in the same order), so with seed 7 they equal the kit's value for value. Clicks and
requests follow the kit's generative rules, but drawn a file at a time from independent PCG64
streams (`default_rng([seed, split, file])`) instead of one Python loop per row: the same
distribution, a different draw order, and files that can be written in parallel.

Click rule, per row: user ~ U{0..n_users-1}, restaurant ~ U{0..n_restaurants-1},
score = user.f00..f09 . restaurant.f00..f09 + N(0, 0.1), click ~ Bernoulli(sigmoid(score)).
`ClickRule` writes that rule down so that a drifted world (`drift_scenarios.py`) can change it:
a user's taste is `user_features @ taste` (the kit: the first 10 columns), plus a bias.

Everything is written to a hidden sibling directory and renamed into place at the end, so an
interrupted run never leaves a half dataset under the requested name.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mlsys.errors import MlsysError
from mlsys.files import JsonIn, atomic_directory, ignore_sigint, sha256_file
from mlsys.recommender.data.dataset import (
    MANIFEST,
    REQUESTS_FILE,
    RESTAURANTS_FILE,
    USERS_FILE,
)
from mlsys.recommender.model import RESTAURANT_FEATURES, USER_FEATURES

GENERATOR_VERSION = "1"

# The kit's bounding box (Bangkok and surroundings).
MIN_LAT, MAX_LAT = 13.581327544528989, 14.171447685944495
MIN_LNG, MAX_LNG = 100.30471258549801, 100.85824174657563
KIT_RESTAURANTS = 100_000  # the kit's catalogue, spread over the box above
N_CLUSTERS = 10
CLUSTER_SPREAD = 2.0
FEATURE_NOISE = 0.1
SCORE_NOISE = 0.1
FEATURE_CHUNK_ROWS = 100_000
SPLIT_CODES = {"train": 0, "test": 1, "requests": 2}


@dataclass(frozen=True)
class Scale:
    users: int
    restaurants: int
    train_rows: int
    train_files: int
    test_rows: int
    test_files: int
    requests: int
    candidates: int


SCALES: dict[str, Scale] = {
    # The kit's sizes.
    "full": Scale(1_000_000, 100_000, 50_000_000, 80, 5_000_000, 8, 10_000, 1_000),
    # All users and restaurants (same seed-7 tables), 1/100 of the click rows.
    "small": Scale(1_000_000, 100_000, 500_000, 8, 50_000, 2, 10_000, 1_000),
    # Unit tests: a couple of seconds. Same draw order, so same cluster centres as the kit.
    "tiny": Scale(2_000, 1_000, 40_000, 4, 8_000, 2, 200, 100),
}


def catalogue_box(restaurants: int) -> tuple[float, float, float, float]:
    """(min_lat, max_lat, min_lng, max_lng) of a catalogue of this size: the kit's box up to
    the kit's 100k restaurants; beyond, a box about the same centre whose area and whose
    density both grow as sqrt(N / 100k) (a bigger catalogue is more cities and denser ones):
    at 10M, 10x the area and 10x the restaurants per km^2. Requests stay in the kit's box,
    so they meet the denser centre."""
    if restaurants <= KIT_RESTAURANTS:
        return MIN_LAT, MAX_LAT, MIN_LNG, MAX_LNG
    grow = (restaurants / KIT_RESTAURANTS) ** 0.25  # per side: area x sqrt(N / 100k)
    mid_lat, mid_lng = (MIN_LAT + MAX_LAT) / 2, (MIN_LNG + MAX_LNG) / 2
    half_lat, half_lng = grow * (MAX_LAT - MIN_LAT) / 2, grow * (MAX_LNG - MIN_LNG) / 2
    return mid_lat - half_lat, mid_lat + half_lat, mid_lng - half_lng, mid_lng + half_lng


def draw_catalogue(
    rs: np.random.RandomState, restaurants: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Restaurant features and locations, the kit's draws (after the users' on `rs`)."""
    features = draw_entity_features(rs, restaurants, len(RESTAURANT_FEATURES))
    min_lat, max_lat, min_lng, max_lng = catalogue_box(restaurants)
    lat = rs.uniform(min_lat, max_lat, (restaurants, 1))[:, 0]
    lng = rs.uniform(min_lng, max_lng, (restaurants, 1))[:, 0]
    return features, lat, lng


def _even_split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def draw_entity_features(
    rs: np.random.RandomState, n: int, dim: int, on_chunk: Any = None
) -> npt.NDArray[np.float32]:
    """The kit's clustered features: centres*2, a cluster per row, then 0.1 noise, as float32.

    The noise is drawn in row chunks: legacy `standard_normal` is one sequential stream, so
    chunked draws give the same values as one big draw without its 8-byte-per-value peak.
    """
    centers = rs.standard_normal((N_CLUSTERS, dim)) * CLUSTER_SPREAD
    assign = rs.choice(N_CLUSTERS, size=n)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, FEATURE_CHUNK_ROWS):
        stop = min(start + FEATURE_CHUNK_ROWS, n)
        noise = rs.standard_normal((stop - start, dim))
        out[start:stop] = centers[assign[start:stop]] + FEATURE_NOISE * noise
        if on_chunk is not None:
            on_chunk(stop - start)
    return out


def write_feature_table(
    path: Path,
    id_name: str,
    features: npt.NDArray[np.float32],
    names: tuple[str, ...],
    extra: dict[str, npt.NDArray[np.float64]] | None = None,
) -> None:
    """Write row group by row group: the double-precision copy never exists whole."""
    writer: pq.ParquetWriter | None = None
    try:
        for start in range(0, len(features), FEATURE_CHUNK_ROWS):
            stop = min(start + FEATURE_CHUNK_ROWS, len(features))
            columns: dict[str, Any] = {id_name: np.arange(start, stop, dtype=np.int64)}
            for key, values in (extra or {}).items():
                columns[key] = values[start:stop]
            for j, name in enumerate(names):
                # Stored as double (float32-rounded values), like the kit.
                columns[name] = features[start:stop, j].astype(np.float64)
            table = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


@dataclass(frozen=True)
class ClickRule:
    """logit = (user_features @ taste) . restaurant_features + bias + N(0, SCORE_NOISE).

    `taste` is (30, 10): which user features meet which restaurant feature. The kit's rule is
    the identity on the first 10 user features and bias 0; a drifted world stores its own in
    manifest.json under `click_rule`.
    """

    taste: tuple[tuple[float, ...], ...]
    bias: float = 0.0

    @classmethod
    def kit(cls) -> ClickRule:
        eye = np.zeros((len(USER_FEATURES), len(RESTAURANT_FEATURES)))
        eye[: len(RESTAURANT_FEATURES)] = np.eye(len(RESTAURANT_FEATURES))
        return cls.from_matrix(eye)

    @classmethod
    def from_matrix(cls, taste: npt.NDArray[np.float64], bias: float = 0.0) -> ClickRule:
        return cls(tuple(tuple(float(x) for x in row) for row in taste), float(bias))

    @classmethod
    def of(cls, manifest: JsonIn | None) -> ClickRule:
        rule = (manifest or {}).get("click_rule")
        if rule is None:
            return cls.kit()
        return cls.from_matrix(np.asarray(rule["taste"], dtype=np.float64), rule["bias"])

    @property
    def matrix(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.taste, dtype=np.float64)

    @property
    def user_columns(self) -> int:
        """How many leading user features the rule reads (10 for the kit's)."""
        used = np.flatnonzero(np.abs(self.matrix).sum(axis=1))
        return int(used.max()) + 1 if len(used) else 0

    def tastes(self, users: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(n, 10) taste vectors from the first `user_columns` features of each user."""
        m = self.matrix[: users.shape[1]]
        if np.array_equal(m, np.eye(*m.shape)):
            return np.ascontiguousarray(users[:, : m.shape[1]])  # the kit's: no copy math
        out: npt.NDArray[np.float32] = (users.astype(np.float64) @ m).astype(np.float32)
        return out

    def to_json(self) -> JsonIn:
        return {"taste": [list(row) for row in self.taste], "bias": self.bias}


# Worker state, inherited through fork so the feature tables are not pickled per task.
_USERS10: npt.NDArray[np.float32] | None = None
_RESTAURANTS: npt.NDArray[np.float32] | None = None
_BIAS = 0.0


def draw_clicks(
    rng: np.random.Generator,
    rows: int,
    users10: npt.NDArray[np.float32],
    restaurants: npt.NDArray[np.float32],
    bias: float = 0.0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The click rule, vectorised over `rows` rows; `users10` are the users' tastes
    (`ClickRule.tastes`: the first 10 features under the kit's rule)."""
    user = rng.integers(0, len(users10), size=rows, dtype=np.int64)
    restaurant = rng.integers(0, len(restaurants), size=rows, dtype=np.int64)
    score = np.einsum("ij,ij->i", users10[user], restaurants[restaurant], dtype=np.float64)
    score += bias + rng.normal(0.0, SCORE_NOISE, size=rows)
    p = 1.0 / (1.0 + np.exp(-score))
    click = (rng.random(rows) < p).astype(np.int64)
    return user, restaurant, click


def _write_click_file(task: tuple[Path, str, int, int, int]) -> tuple[str, int, int, str]:
    path, split, index, rows, seed = task
    assert _USERS10 is not None and _RESTAURANTS is not None
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    user, restaurant, click = draw_clicks(rng, rows, _USERS10, _RESTAURANTS, _BIAS)
    table = pa.table({"user_id": user, "restaurant_id": restaurant, "click": click})
    pq.write_table(table, path)
    return str(path), rows, path.stat().st_size, sha256_file(path)


def requests_table(scale: Scale, seed: int) -> pa.Table:
    rng = np.random.default_rng([seed, SPLIT_CODES["requests"]])
    n = scale.requests
    users = rng.choice(scale.users, size=n, replace=False).astype(np.int64)
    lat = rng.uniform(MIN_LAT, MAX_LAT, size=n)
    lng = rng.uniform(MIN_LNG, MAX_LNG, size=n)
    cands = np.empty((n, scale.candidates), dtype=np.int64)
    for i in range(n):  # 10k draws of 1,000 from 100k without replacement: ~0.3 s in total
        cands[i] = rng.choice(scale.restaurants, size=scale.candidates, replace=False)
    offsets = np.arange(0, n * scale.candidates + 1, scale.candidates, dtype=np.int32)
    return pa.table(
        {
            "user_id": users,
            "latitude": lat,
            "longitude": lng,
            "candidate_restaurant_ids": pa.ListArray.from_arrays(
                pa.array(offsets), pa.array(cands.ravel())
            ),
            "size": 100 * rng.integers(1, 11, size=n, dtype=np.int64),
            "max_dist": 1000 * rng.integers(5, 11, size=n, dtype=np.int64),
            "sort_dist": rng.integers(0, 2, size=n).astype(bool),
        }
    )


def file_entry(path: Path) -> JsonIn:
    return {
        "rows": pq.ParquetFile(path).metadata.num_rows,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def generate_clicks(
    out_dir: str | Path,
    scale: str = "small",
    seed: int = 7,
    force: bool = False,
    workers: int | None = None,
    progress: bool = True,
    restaurants: int | None = None,
) -> dict[str, Any]:
    """Write a complete dataset to `out_dir` atomically; returns its manifest. `restaurants`
    overrides the scale's catalogue size (`catalogue_box` says where they go)."""
    if scale not in SCALES:
        raise MlsysError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
    sizes = SCALES[scale]
    if restaurants is not None:
        if restaurants < sizes.candidates:
            raise MlsysError(
                f"--restaurants {restaurants}: at least the {sizes.candidates} candidates a "
                f"request of scale {scale!r} draws"
            )
        sizes = replace(sizes, restaurants=restaurants)
    started = time.perf_counter()
    with atomic_directory(Path(out_dir), force) as staging:
        (staging / "train").mkdir()
        (staging / "test").mkdir()
        manifest = _generate_into(staging, scale, sizes, seed, workers, progress)
        manifest["seconds"] = round(time.perf_counter() - started, 2)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def write_click_files(
    root: Path,
    splits: tuple[tuple[str, int, int], ...],
    tastes: npt.NDArray[np.float32],
    restaurants: npt.NDArray[np.float32],
    bias: float,
    seed: int,
    workers: int | None,
    bar: Any,
) -> dict[str, JsonIn]:
    """Write ROOT/SPLIT/SPLIT_NN.parquet for each (split, rows, files) by the click rule
    (`tastes`, `bias`); returns their manifest entries."""
    global _USERS10, _RESTAURANTS, _BIAS
    tasks: list[tuple[Path, str, int, int, int]] = []
    for split, rows, n_files in splits:
        (root / split).mkdir(exist_ok=True)
        for i, file_rows in enumerate(_even_split(rows, n_files)):
            tasks.append((root / split / f"{split}_{i:02d}.parquet", split, i, file_rows, seed))
    _USERS10, _RESTAURANTS, _BIAS = tastes, restaurants, bias
    files: dict[str, JsonIn] = {}
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    try:
        with mp.get_context("fork").Pool(n_workers, initializer=ignore_sigint) as pool:
            for path, rows, size, digest in pool.imap_unordered(_write_click_file, tasks):
                files[str(Path(path).relative_to(root))] = {
                    "rows": rows,
                    "bytes": size,
                    "sha256": digest,
                }
                bar.update(rows)
    finally:
        _USERS10 = _RESTAURANTS = None
        _BIAS = 0.0
    return files


def _generate_into(
    root: Path, scale: str, sizes: Scale, seed: int, workers: int | None, progress: bool
) -> dict[str, Any]:
    click_rows = sizes.train_rows + sizes.test_rows
    total = sizes.users + sizes.restaurants + click_rows + sizes.requests
    bar = tqdm(
        total=total,
        unit="row",
        unit_scale=True,
        desc=f"generate {scale}",
        disable=not progress,
        smoothing=0.1,
    )
    files: dict[str, JsonIn] = {}

    # 1-2. Feature tables, exactly the kit's legacy draw order.
    rs = np.random.RandomState(seed)
    users = draw_entity_features(rs, sizes.users, len(USER_FEATURES), bar.update)
    write_feature_table(root / USERS_FILE, "user_id", users, USER_FEATURES)
    users10 = np.ascontiguousarray(users[:, :10])
    del users
    restaurants, lat, lng = draw_catalogue(rs, sizes.restaurants)
    write_feature_table(
        root / RESTAURANTS_FILE,
        "restaurant_id",
        restaurants,
        RESTAURANT_FEATURES,
        {"latitude": lat, "longitude": lng},
    )
    bar.update(sizes.restaurants)

    # 3. Click files, in parallel worker processes that share the tables through fork.
    splits = (
        ("train", sizes.train_rows, sizes.train_files),
        ("test", sizes.test_rows, sizes.test_files),
    )
    files.update(write_click_files(root, splits, users10, restaurants, 0.0, seed, workers, bar))

    # 4. Requests for the load test.
    pq.write_table(requests_table(sizes, seed), root / REQUESTS_FILE)
    bar.update(sizes.requests)
    bar.close()

    for name in (USERS_FILE, RESTAURANTS_FILE, REQUESTS_FILE):
        files[name] = file_entry(root / name)
    return {
        "format": "mlsys-clicks",
        "generator_version": GENERATOR_VERSION,
        "scale": scale,
        "seed": seed,
        "sizes": asdict(sizes),
        "counts": {
            "users": sizes.users,
            "restaurants": sizes.restaurants,
            "train_rows": sizes.train_rows,
            "test_rows": sizes.test_rows,
            "requests": sizes.requests,
        },
        "files": dict(sorted(files.items())),
    }
