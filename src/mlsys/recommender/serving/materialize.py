"""Materialize the offline feature views into the online store: a whole dataset into a new
namespace, then one pointer switch, then the old namespaces pruned.

The key layout and why a reader never sees half a load are in `online_store.py`; this module
is the writer's side of it (`mlsys features load`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mlsys.files import JsonIn
from mlsys.platform.redis_client import RedisClient, is_cluster, key_slot
from mlsys.recommender.serving.geo_cells import cell_of
from mlsys.recommender.serving.online_store import (
    NAMESPACES_KEY,
    POINTER_KEY,
    RESTAURANT_DTYPE,
    SEQ_KEY,
    USER_DTYPE,
    cell_key,
    cell_records,
    cold_user_key,
    current_namespace,
    decode,
    restaurant_key,
    schema,
    user_key,
)

_CLUSTER_WINDOW = 1_000_000  # keys grouped by slot at a time: bounded memory, big MSETs


def write_rows(
    client: RedisClient, key_of: Callable[[int], str], rows: npt.NDArray[Any], batch: int, bar: Any
) -> None:
    """MSETs of up to `batch` keys, pipelined a few per round trip to keep Redis busy; keys are
    made a window at a time, so memory stays bounded whatever the table's size.

    A cluster takes an MSET only within one hash slot, so there each window (a million keys)
    is grouped by slot first and redis-py's cluster pipeline routes each MSET to its node.
    """
    buf = rows.tobytes()
    width = rows.dtype.itemsize
    cluster = is_cluster(client)
    step = _CLUSTER_WINDOW if cluster else batch
    pipe = client.pipeline(transaction=False)
    pending = 0
    for start in range(0, len(rows), step):
        keys = [key_of(i) for i in range(start, min(start + step, len(rows)))]
        groups = [np.arange(len(keys))]
        if cluster:
            slots = np.fromiter(map(key_slot, keys), np.int64, count=len(keys))
            order = np.argsort(slots, kind="stable")
            by_slot = np.split(order, np.flatnonzero(np.diff(slots[order])) + 1)
            groups = [g for part in by_slot for g in np.array_split(part, -(-len(part) // batch))]
        for group in groups:
            flat: list[str | bytes] = []
            for j in group.tolist():
                i = start + j
                flat += (keys[j], buf[i * width : (i + 1) * width])
            pipe.execute_command("MSET", *flat)
            pending += 1
            if pending >= (2_000 if cluster else 4):
                pipe.execute()
                pending = 0
            if bar is not None:
                bar.update(len(group))
    if pending:
        pipe.execute()


def cold_start_profile(users: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """What a user the store does not know is ranked as: the mean user. The baseline of cold
    start (a new user's features are unknown, and the mean minimises the squared error of
    guessing them); its true CTR beside known users' is in docs/funnel.md."""
    profile = np.empty(1, dtype=USER_DTYPE)
    profile["features"][0] = users["features"].mean(axis=0, dtype=np.float64)
    return profile


def write_geo_index(
    client: RedisClient, ns: str, restaurants: npt.NDArray[Any], progress: bool = True
) -> int:
    """The cells of `geo_cells.py`: each restaurant's row, with its id, in its cell's key.
    Returns the number of cells written."""
    from tqdm import tqdm

    n = len(restaurants)
    rows = cell_records(np.arange(n), restaurants)
    lat, lon = restaurants["latitude"].tolist(), restaurants["longitude"].tolist()
    cells = np.fromiter(
        ((band << 20) | column
         for band, column in map(cell_of, tqdm(lat, unit="row", desc=f"geo index {ns}",
                                               disable=not progress), lon)),
        dtype=np.int64, count=n,
    )  # fmt: skip
    order = np.argsort(cells, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(cells[order]) != 0])
    ends = np.r_[starts[1:], n]
    pipe = client.pipeline(transaction=False)
    for i, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        code = int(cells[order[start]])
        pipe.set(cell_key(ns, (code >> 20, code & 0xFFFFF)), rows[order[start:end]].tobytes())
        if i % 1_000 == 999:
            pipe.execute()
    pipe.execute()
    return len(starts)


def materialize(
    data_dir: str | Path,
    client: RedisClient,
    *,
    keep: int = 1,
    batch: int = 10_000,
    progress: bool = True,
) -> JsonIn:
    """Load both feature views into a new namespace, switch the pointer, prune old namespaces."""
    from tqdm import tqdm

    from mlsys.recommender.data.dataset import open_dataset

    started = time.perf_counter()
    dataset = open_dataset(data_dir)
    users = np.empty(dataset.n_users, dtype=USER_DTYPE)
    users["features"] = dataset.user_features()
    restaurants = np.empty(dataset.n_restaurants, dtype=RESTAURANT_DTYPE)
    restaurants["features"] = dataset.restaurant_features()
    locations = dataset.restaurant_locations()
    restaurants["latitude"] = locations[:, 0]
    restaurants["longitude"] = locations[:, 1]
    read_s = time.perf_counter() - started

    ns = f"f{int(client.incr(SEQ_KEY))}"
    # Registered before writing, so a crash mid-load leaves a namespace the next load prunes.
    client.rpush(NAMESPACES_KEY, ns)
    total = len(users) + len(restaurants)
    with tqdm(
        total=total, unit="key", unit_scale=True, desc=f"load {ns}", disable=not progress
    ) as bar:
        write_rows(client, partial(user_key, ns), users, batch, bar)
        write_rows(client, partial(restaurant_key, ns), restaurants, batch, bar)
    client.set(cold_user_key(ns), cold_start_profile(users).tobytes())
    cells = write_geo_index(client, ns, restaurants, progress)

    manifest = dataset.manifest or {}
    files = manifest.get("files", {})
    meta = {
        "namespace": ns,
        "schema": schema(),
        "source": {
            "path": str(Path(data_dir).resolve()),
            "dataset_checksum": dataset.checksum,
            "scale": manifest.get("scale"),
            "seed": manifest.get("seed"),
            "user_features_sha256": files.get("user_features.parquet", {}).get("sha256"),
            "restaurant_features_sha256": files.get("restaurant_features.parquet", {}).get(
                "sha256"
            ),
        },
        "counts": {"users": len(users), "restaurants": len(restaurants), "geo_cells": cells},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "read_seconds": round(read_s, 2),
        "load_seconds": round(time.perf_counter() - started, 2),
    }
    client.set(f"{ns}:meta", json.dumps(meta))
    client.set(POINTER_KEY, ns)  # the switch: one atomic command
    meta["pruned"] = prune(client, keep=keep)
    return meta


def _scan_unlink(client: RedisClient, ns: str) -> int:
    """SCAN + UNLINK of one namespace; in a cluster, on each master for the keys it holds (an
    UNLINK of many keys must stay within one slot there, so each key is its own command)."""
    if is_cluster(client):
        nodes = [client.get_redis_connection(n) for n in client.get_primaries()]
    else:
        nodes = [client]
    deleted = 0
    for node in nodes:
        batch: list[bytes] = []
        for key in node.scan_iter(match=f"{ns}:*", count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                deleted += _unlink(node, batch, one_by_one=node is not client)
                batch = []
        if batch:
            deleted += _unlink(node, batch, one_by_one=node is not client)
    return deleted


def _unlink(client: RedisClient, keys: list[bytes], *, one_by_one: bool) -> int:
    if not one_by_one:
        return int(client.unlink(*keys))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return int(sum(pipe.execute()))


def prune(client: RedisClient, keep: int = 1) -> list[str]:
    """Delete all but the newest `keep` namespaces (never the current one)."""
    current = current_namespace(client)
    names = [decode(n) for n in client.lrange(NAMESPACES_KEY, 0, -1)]
    doomed = [n for n in names[: max(0, len(names) - keep)] if n and n != current]
    for ns in doomed:
        _scan_unlink(client, ns)
        client.lrem(NAMESPACES_KEY, 0, ns)
    return doomed
