"""Redis layouts for the restaurant feature view, measured side by side (docs/serving-report.md).

    flock /tmp/mlsys-heavy.lock .venv/bin/python perf_test/layouts.py --data /work/data/full

- strings: one key per restaurant, `MGET` of the request's 1,000 keys (what we ship);
- one hash: all restaurants as fields of one hash, `HMGET` of 1,000 fields;
- buckets: hashes of 64 restaurants (listpack-encoded, compact), one `HMGET` per bucket touched
  (pipelined), since 1,000 random ids out of 100,000 touch ~1,000 different buckets.
Each on a fresh redis-server: memory (`used_memory` delta) and the median time of the fetch
over 500 requests' candidate lists from requests.parquet.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mlsys.platform.redis_client import connect
from mlsys.platform.redis_server import RedisServer
from mlsys.recommender.data.dataset import open_dataset
from mlsys.recommender.serving.online_store import RESTAURANT_DTYPE


def rows(data: Path) -> np.ndarray:
    ds = open_dataset(data)
    out = np.empty(ds.n_restaurants, dtype=RESTAURANT_DTYPE)
    out["features"] = ds.restaurant_features()
    loc = ds.restaurant_locations()
    out["latitude"], out["longitude"] = loc[:, 0], loc[:, 1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--requests", type=int, default=500)
    args = ap.parse_args()
    table = rows(Path(args.data))
    blobs = [r.tobytes() for r in table]
    reqs = pq.read_table(Path(args.data) / "requests.parquet", columns=["candidate_restaurant_ids"])
    cands = reqs.column(0).to_pylist()[: args.requests]

    def strings_load(c) -> None:  # type: ignore[no-untyped-def]
        for s in range(0, len(blobs), 10_000):
            flat = []
            for i in range(s, min(s + 10_000, len(blobs))):
                flat += [f"r:{i}", blobs[i]]
            c.execute_command("MSET", *flat)

    def strings_fetch(c, ids):  # type: ignore[no-untyped-def]
        return c.execute_command("MGET", *map("r:".__add__, map(str, ids)))

    def hash_load(c) -> None:  # type: ignore[no-untyped-def]
        for s in range(0, len(blobs), 10_000):
            c.hset("r", mapping={i: blobs[i] for i in range(s, min(s + 10_000, len(blobs)))})

    def hash_fetch(c, ids):  # type: ignore[no-untyped-def]
        return c.execute_command("HMGET", "r", *ids)

    def bucket_load(c) -> None:  # type: ignore[no-untyped-def]
        pipe = c.pipeline(transaction=False)
        for b in range(0, len(blobs), 64):
            pipe.hset(
                f"b:{b // 64}", mapping={i: blobs[i] for i in range(b, min(b + 64, len(blobs)))}
            )
        pipe.execute()

    def bucket_fetch(c, ids):  # type: ignore[no-untyped-def]
        pipe = c.pipeline(transaction=False)
        for i in ids:
            pipe.execute_command("HGET", f"b:{i // 64}", i)
        return pipe.execute()

    layouts = {
        "strings + MGET (shipped)": (strings_load, strings_fetch),
        "one hash + HMGET": (hash_load, hash_fetch),
        "64-row hash buckets + pipelined HGET": (bucket_load, bucket_fetch),
    }
    print("| layout | memory for 100k restaurants | fetch 1,000 candidates, median | p95 |")
    print("|---|---|---|---|")
    for name, (load, fetch) in layouts.items():
        with RedisServer() as srv:
            c = connect(srv.url, timeout_s=30)
            before = c.info("memory")["used_memory"]
            load(c)
            mem = (c.info("memory")["used_memory"] - before) / 2**20
            for ids in cands[:20]:
                fetch(c, ids)
            ms = []
            for ids in cands:
                t = time.perf_counter()
                fetch(c, ids)
                ms.append((time.perf_counter() - t) * 1e3)
            print(f"| {name} | {mem:.1f} MiB | {np.median(ms):.2f} ms | "
                  f"{np.percentile(ms, 95):.2f} ms |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
