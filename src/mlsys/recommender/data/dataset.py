"""Open and validate a click dataset directory; every later stage reads data through here.

A dataset is the kit's layout (ours adds `manifest.json`):

    user_features.parquet        user_id, f00..f29
    restaurant_features.parquet  restaurant_id, latitude, longitude, f00..f09
    train/train_*.parquet        user_id, restaurant_id, click
    test/test_*.parquet          user_id, restaurant_id, click
    requests.parquet             user_id, latitude, longitude, candidate_restaurant_ids,
                                 size, max_dist, sort_dist

`open_dataset` checks what can be checked without reading the data: every file opens as
parquet, every column is present with the right type, entity ids are dense `0..n-1` in the
feature tables, and the id ranges of the click files (from parquet row-group statistics) fall
inside them; restaurant coordinates (100k rows, cheap) lie within their ranges. Feature
values are checked when they are read (`user_features`, `restaurant_features`: the feature
load and training both read them before writing anything) against the type they are kept in,
float32 (`values.py`). Problems raise `DatasetError` naming the file and the column, so a
truncated or foreign file fails at start-up with one line instead of a traceback from deep
inside torch. The kit's own output (no manifest) is accepted; ours is also checked against its
manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from mlsys.errors import DatasetError
from mlsys.files import JsonIn, sha256_file
from mlsys.recommender.data.schema import (
    CLICKS_SCHEMA,
    REQUESTS_SCHEMA,
    RESTAURANTS_SCHEMA,
    USERS_SCHEMA,
    TypeCheck,
    check_range,
    column_range,
    open_parquet,
    read_columns,
)
from mlsys.recommender.data.values import coordinate_problem, float32_problem
from mlsys.recommender.model import RESTAURANT_FEATURES, USER_FEATURES
from mlsys.recommender.ranking import Query

MANIFEST = "manifest.json"
USERS_FILE = "user_features.parquet"
RESTAURANTS_FILE = "restaurant_features.parquet"
REQUESTS_FILE = "requests.parquet"
SPLITS = ("train", "test")


FloatMatrix = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]


def _dense_ids(path: Path, pf: pq.ParquetFile, column: str) -> int:
    """Feature tables are indexed by id, so ids must be exactly 0..n-1 in file order."""
    ids = read_columns(path, pf, [column]).column(0).to_numpy()
    n = len(ids)
    if n == 0:
        raise DatasetError(path, "table is empty", column)
    if not np.array_equal(ids, np.arange(n, dtype=ids.dtype)):
        raise DatasetError(path, f"ids must be 0..{n - 1} in order (row i has id i)", column)
    return n


@dataclass(frozen=True)
class ClickFile:
    path: Path
    rows: int


@dataclass(frozen=True)
class RequestTable:
    """requests.parquet's columns; request i's candidates are candidates[offsets[i]:
    offsets[i + 1]]."""

    user_id: IdArray
    latitude: npt.NDArray[np.float64]
    longitude: npt.NDArray[np.float64]
    size: IdArray
    max_dist: npt.NDArray[np.float64]
    sort_dist: npt.NDArray[np.bool_]
    offsets: IdArray
    candidates: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return len(self.user_id)

    def candidates_of(self, i: int) -> npt.NDArray[np.int32]:
        return self.candidates[self.offsets[i] : self.offsets[i + 1]]

    def query(self, i: int) -> Query:
        """Request i as /recommend receives it."""
        return Query(
            int(self.user_id[i]), self.candidates_of(i).tolist(), float(self.latitude[i]),
            float(self.longitude[i]), int(self.size[i]), float(self.max_dist[i]),
            bool(self.sort_dist[i]),
        )  # fmt: skip


@dataclass(frozen=True)
class ClickDataset:
    """A validated dataset directory. Cheap to open: it holds paths and counts, not data."""

    root: Path
    n_users: int
    n_restaurants: int
    splits: dict[str, tuple[ClickFile, ...]]
    manifest: JsonIn | None = None
    has_requests: bool = False

    @property
    def users_path(self) -> Path:
        return self.root / USERS_FILE

    @property
    def restaurants_path(self) -> Path:
        return self.root / RESTAURANTS_FILE

    @property
    def requests_path(self) -> Path:
        return self.root / REQUESTS_FILE

    def files(self, split: str) -> tuple[ClickFile, ...]:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self.splits[split]

    def rows(self, split: str) -> int:
        return sum(f.rows for f in self.files(split))

    def summary(self, seconds: float | None = None) -> str:
        """A few lines a person reads after generating or validating a dataset."""
        m = self.manifest or {}
        origin = f"mlsys generator v{m['generator_version']}" if m else "kit (no manifest)"
        lines = [
            f"dataset      {self.root}",
            f"origin       {origin}" + (f", scale={m['scale']}, seed={m['seed']}" if m else ""),
            f"users        {self.n_users:,}",
            f"restaurants  {self.n_restaurants:,}",
            f"train        {self.rows('train'):,} rows in {len(self.files('train'))} files",
            f"test         {self.rows('test'):,} rows in {len(self.files('test'))} files",
            f"requests     {'present' if self.has_requests else 'absent'}",
        ]
        if seconds is not None:
            lines.append(f"time         {seconds:.1f} s")
        return "\n".join(lines)

    @property
    def checksum(self) -> str:
        """Identifies the data a model was trained on: the manifest's digest, else the layout's."""
        if self.manifest is not None:
            payload = json.dumps(self.manifest["files"], sort_keys=True)
        else:
            payload = json.dumps(
                {
                    str(f.path.relative_to(self.root)): [f.rows, f.path.stat().st_size]
                    for split in SPLITS
                    for f in self.splits[split]
                },
                sort_keys=True,
            )
        return hashlib.sha256(payload.encode()).hexdigest()

    def user_features(self, first: int = len(USER_FEATURES)) -> FloatMatrix:
        """(n_users, first) float32 (all 30 columns by default), row i = user i. Read column by
        column to bound memory; the click rule needs only the first 10."""
        return self._matrix(self.users_path, USERS_SCHEMA, USER_FEATURES[:first])

    def request_rows(self) -> list[JsonIn]:
        """requests.parquet as one dict per request (10,000 at the kit's size): what the
        simulator, the replay and the reference profile replay."""
        if not self.has_requests:
            raise DatasetError(self.requests_path, "no requests.parquet to replay")
        pf = open_parquet(self.requests_path, REQUESTS_SCHEMA)
        rows: list[JsonIn] = read_columns(self.requests_path, pf, list(REQUESTS_SCHEMA)).to_pylist()
        return rows

    def requests(self) -> RequestTable:
        """requests.parquet as columns (the candidate lists as one flat array and offsets):
        1,000 candidates x 10,000 requests are 80 MB here, against ~1 GB as Python objects."""
        if not self.has_requests:
            raise DatasetError(self.requests_path, "no requests.parquet to replay")
        pf = open_parquet(self.requests_path, REQUESTS_SCHEMA)
        scalars = [name for name in REQUESTS_SCHEMA if name != "candidate_restaurant_ids"]
        arrays: dict[str, list[npt.NDArray[np.generic]]] = {name: [] for name in scalars}
        # A batch at a time into one preallocated array: decoding the whole list column at
        # once cost ~4x its ids. The leaf's value count bounds the ids (an empty list counts 1).
        meta = pf.metadata
        leaf = [j for j in range(meta.num_columns)
                if meta.schema.column(j).path.startswith("candidate_restaurant_ids.")]  # fmt: skip
        bound = sum(meta.row_group(g).column(j).num_values
                    for g in range(meta.num_row_groups) for j in leaf)  # fmt: skip
        candidates = np.empty(bound, dtype=np.int32)  # ids < n_restaurants, checked below
        offsets = np.zeros(meta.num_rows + 1, dtype=np.int64)
        row = filled = 0
        try:
            for batch in pf.iter_batches(batch_size=1000, columns=list(REQUESTS_SCHEMA)):
                lists = batch.column(batch.schema.get_field_index("candidate_restaurant_ids"))
                ids = lists.flatten().to_numpy()
                _check_batch(
                    self.requests_path, ids, "candidate_restaurant_ids", self.n_restaurants
                )
                candidates[filled : filled + len(ids)] = ids
                lengths = np.diff(lists.offsets.to_numpy().astype(np.int64))
                offsets[row + 1 : row + 1 + len(lengths)] = filled + np.cumsum(lengths)
                row, filled = row + len(lengths), filled + len(ids)
                for name in scalars:
                    arrays[name].append(
                        batch.column(batch.schema.get_field_index(name)).to_numpy(
                            zero_copy_only=False
                        )
                    )
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise DatasetError(self.requests_path, f"cannot read: {exc}") from exc
        column = {name: np.concatenate(chunks) for name, chunks in arrays.items()}
        pa.default_memory_pool().release_unused()  # the decoded pages, kept by the allocator
        return RequestTable(
            user_id=column["user_id"].astype(np.int64, copy=False),
            latitude=column["latitude"].astype(np.float64, copy=False),
            longitude=column["longitude"].astype(np.float64, copy=False),
            size=column["size"].astype(np.int64, copy=False),
            max_dist=column["max_dist"].astype(np.float64, copy=False),
            sort_dist=column["sort_dist"].astype(np.bool_, copy=False),
            offsets=offsets,
            candidates=candidates[:filled],
        )

    def restaurant_features(self) -> FloatMatrix:
        """(n_restaurants, 10) float32, row i = restaurant i."""
        return self._matrix(self.restaurants_path, RESTAURANTS_SCHEMA, RESTAURANT_FEATURES)

    def restaurant_locations(self) -> npt.NDArray[np.float64]:
        """(n_restaurants, 2) float64 latitude, longitude in degrees, each within its range."""
        path = self.restaurants_path
        return _locations(path, open_parquet(path, RESTAURANTS_SCHEMA))

    def _matrix(
        self, path: Path, schema: dict[str, TypeCheck], columns: tuple[str, ...]
    ) -> FloatMatrix:
        pf = open_parquet(path, schema)
        out = np.empty((pf.metadata.num_rows, len(columns)), dtype=np.float32)
        for j, name in enumerate(columns):
            col = read_columns(path, pf, [name]).column(0)
            if col.null_count:
                raise DatasetError(path, "has missing values", name)
            values = col.to_numpy()
            problem = float32_problem(values)
            if problem is not None:
                raise DatasetError(path, problem, name)
            out[:, j] = values
        return out

    def iter_clicks(
        self, split: str, batch_rows: int = 1 << 18
    ) -> Iterator[tuple[ClickFile, IdArray, IdArray, npt.NDArray[np.float32]]]:
        """Stream (file, user_ids, restaurant_ids, clicks) one record batch at a time.

        Each batch is checked as it is read (ids in range, clicks 0/1), which also covers files
        whose statistics were not recorded at open time.
        """
        for cf in self.files(split):
            pf = open_parquet(cf.path, CLICKS_SCHEMA)
            try:
                batches = pf.iter_batches(
                    batch_size=batch_rows, columns=["user_id", "restaurant_id", "click"]
                )
                for batch in batches:
                    users = _int64(cf.path, batch, "user_id")
                    rests = _int64(cf.path, batch, "restaurant_id")
                    clicks = _int64(cf.path, batch, "click")
                    _check_batch(cf.path, users, "user_id", self.n_users)
                    _check_batch(cf.path, rests, "restaurant_id", self.n_restaurants)
                    _check_batch(cf.path, clicks, "click", 2)
                    yield cf, users, rests, clicks.astype(np.float32)
            except (pa.ArrowException, OSError) as exc:
                raise DatasetError(cf.path, f"cannot read rows: {exc}") from exc
            # The file's decoded pages: pyarrow's allocator keeps freed memory unless asked,
            # which over 80 files grew a training run by ~90 MB.
            pa.default_memory_pool().release_unused()


def _locations(path: Path, pf: pq.ParquetFile) -> npt.NDArray[np.float64]:
    table = read_columns(path, pf, ["latitude", "longitude"])
    out = np.empty((table.num_rows, 2), dtype=np.float64)
    for j, name in enumerate(("latitude", "longitude")):
        col = table.column(name)
        if col.null_count:
            raise DatasetError(path, "has missing values", name)
        out[:, j] = col.to_numpy()
        problem = coordinate_problem(name, out[:, j])
        if problem is not None:
            raise DatasetError(path, problem, name)
    return out


def _int64(path: Path, batch: pa.RecordBatch, column: str) -> IdArray:
    col = batch.column(column)
    if col.null_count:
        raise DatasetError(path, "has missing values", column)
    return np.asarray(col.to_numpy(), dtype=np.int64)


def _check_batch(path: Path, values: IdArray, column: str, high: int) -> None:
    if len(values):
        check_range(path, column, int(values.min()), int(values.max()), 0, high)


def _click_files(root: Path, split: str, n_users: int, n_restaurants: int) -> tuple[ClickFile, ...]:
    folder = root / split
    paths = sorted(folder.glob(f"{split}_*.parquet"))
    if not paths:
        raise DatasetError(folder, f"no {split}_*.parquet files")
    files = []
    for path in paths:
        pf = open_parquet(path, CLICKS_SCHEMA)
        for column, high in (("user_id", n_users), ("restaurant_id", n_restaurants), ("click", 2)):
            bounds = column_range(pf, column)
            if bounds is not None:
                check_range(path, column, bounds[0], bounds[1], 0, high)
        files.append(ClickFile(path=path, rows=pf.metadata.num_rows))
    return tuple(files)


def read_manifest(root: Path) -> JsonIn | None:
    path = root / MANIFEST
    if not path.exists():
        return None
    try:
        manifest: JsonIn = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(path, f"not valid JSON: {exc}") from exc
    for key in ("scale", "seed", "generator_version", "files"):
        if key not in manifest:
            raise DatasetError(path, f"missing key {key!r}")
    return manifest


def open_dataset(root: str | Path, *, verify_checksums: bool = False) -> ClickDataset:
    """Validate a dataset directory and return a handle to it (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "dataset directory does not exist")
    users_pf = open_parquet(root / USERS_FILE, USERS_SCHEMA)
    n_users = _dense_ids(root / USERS_FILE, users_pf, "user_id")
    rests_pf = open_parquet(root / RESTAURANTS_FILE, RESTAURANTS_SCHEMA)
    n_restaurants = _dense_ids(root / RESTAURANTS_FILE, rests_pf, "restaurant_id")
    _locations(root / RESTAURANTS_FILE, rests_pf)  # 100k rows: cheap, and every command checks
    splits = {split: _click_files(root, split, n_users, n_restaurants) for split in SPLITS}
    has_requests = (root / REQUESTS_FILE).exists()
    if has_requests:
        req_pf = open_parquet(root / REQUESTS_FILE, REQUESTS_SCHEMA)
        bounds = column_range(req_pf, "user_id")
        if bounds is not None:
            check_range(root / REQUESTS_FILE, "user_id", bounds[0], bounds[1], 0, n_users)
    manifest = read_manifest(root)
    if manifest is not None:
        _check_manifest(root, manifest, verify_checksums)
    return ClickDataset(
        root=root,
        n_users=n_users,
        n_restaurants=n_restaurants,
        splits=splits,
        manifest=manifest,
        has_requests=has_requests,
    )


def _check_manifest(root: Path, manifest: JsonIn, verify_checksums: bool) -> None:
    """Sizes and row counts always (cheap); content hashes only when asked (reads every byte)."""
    for rel, entry in manifest["files"].items():
        path = root / rel
        if not path.is_file():
            raise DatasetError(path, f"listed in {MANIFEST} but missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise DatasetError(
                path, f"is {size} bytes, {MANIFEST} says {entry['bytes']} (truncated or replaced?)"
            )
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows != entry["rows"]:
            raise DatasetError(path, f"has {rows} rows, {MANIFEST} says {entry['rows']}")
        if verify_checksums and sha256_file(path) != entry["sha256"]:
            raise DatasetError(path, f"content does not match the sha256 in {MANIFEST}")
