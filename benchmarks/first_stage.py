"""Which cheap scorer can stand before RankNet: recall@size and cost of each candidate.

    .venv/bin/python benchmarks/first_stage.py --data /work/data/full --model /work/models/after \
        [--requests 300] [--keep 500]

For each by-score request of requests.parquet (the first `--requests`), every restaurant of the
catalogue within max_dist is scored exactly (the folded model in float64); each cheap scorer
keeps its best max(keep, size), the exact scores rank those, and recall@size is the share of
the exact top `size` that survives. Scorers: the folded model without its ReLU (one 10-value
dot product per restaurant), its 8/16/32/64 most important hidden units (by abs(w3) x the
spread of the unit's restaurant part over the catalogue), and the whole model in float32.
Milliseconds are per request over the same rows, in this process (medians).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mlsys.recommender.data.dataset import open_dataset
from mlsys.recommender.geo import haversine_m
from mlsys.recommender.serving.served_model import load_model


def per_call_ms(fn: Callable[[], object], n: int = 5) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--keep", type=int, default=500)
    args = ap.parse_args()
    m = load_model(args.model).scorer
    ds = open_dataset(args.data)
    rests, loc, users = ds.restaurant_features(), ds.restaurant_locations(), ds.user_features()
    requests = pq.read_table(args.data / "requests.parquet").slice(0, args.requests).to_pylist()
    spread = (rests[:20_000].astype(np.float64) @ m.mr_t).std(axis=0)
    units = np.argsort(-np.abs(m.w3) * spread)
    names = ["no ReLU", "8 units", "16 units", "32 units", "64 units", "float32"]
    recall: dict[str, list[float]] = {n: [] for n in names}
    cost: dict[str, list[float]] = {n: [] for n in [*names, "float64 (exact)"]}
    for r in requests:
        if r["sort_dist"]:
            continue
        d = haversine_m(r["latitude"], r["longitude"], loc[:, 0], loc[:, 1])
        feats = rests[d <= r["max_dist"]]
        hu = m.user_part(users[r["user_id"]])
        size, keep = r["size"], max(args.keep, r["size"])
        if len(feats) <= keep:
            continue
        exact = m.scores(hu, feats)
        top = set(np.argsort(-exact, kind="stable")[:size].tolist())
        cost["float64 (exact)"].append(per_call_ms(lambda hu=hu, feats=feats: m.scores(hu, feats)))
        scorers: dict[str, Callable[[], np.ndarray]] = {
            "no ReLU": lambda feats=feats: feats.astype(np.float64) @ (m.mr_t @ m.w3),
            "float32": lambda hu=hu, feats=feats: m.rough_logits(hu, feats),
        }
        for h in (8, 16, 32, 64):
            u = units[:h]
            mr, hh, w = m.mr_t[:, u].astype(np.float32), hu[u].astype(np.float32), m.w3[u]

            def subset(feats: np.ndarray = feats, mr=mr, hh=hh, w=w) -> np.ndarray:
                x = feats @ mr
                x += hh
                np.maximum(x, 0, out=x)
                return x @ w.astype(np.float32)

            scorers[f"{h} units"] = subset
        for name, fn in scorers.items():
            kept = np.argpartition(-fn(), keep - 1)[:keep]
            final = kept[np.argsort(-exact[kept], kind="stable")[:size]]
            recall[name].append(len(top & set(final.tolist())) / size)
            cost[name].append(per_call_ms(fn))
    n = len(cost["float64 (exact)"])
    print(f"{n} by-score requests with more than max({args.keep}, size) in reach\n")
    print(f"{'scorer':<18} {'recall mean':>11} {'min':>6} {'ms':>7}")
    for name in names:
        print(f"{name:<18} {np.mean(recall[name]):>11.3f} {np.min(recall[name]):>6.2f} "
              f"{np.median(cost[name]):>7.2f}")  # fmt: skip
    exact_ms = np.median(cost["float64 (exact)"])
    print(f"{'float64 (exact)':<18} {1.0:>11.3f} {1.0:>6.2f} {exact_ms:>7.2f}")


if __name__ == "__main__":
    main()
