"""The funnel per request at 100k, 1M and 10M restaurants, against a real Redis.

    .venv/bin/python benchmarks/funnel.py --data /work/data/full --model /work/models/after \
        [--restaurants 100000,1000000,10000000] [--requests 400] [--out docs/funnel]

For each catalogue size (100k: the dataset's own restaurants; beyond: drawn by
`generate.draw_catalogue`, whose box grows as `catalogue_box` says), one redis-server is
loaded with the restaurants' rows, the geo index's cells and the requests' users, and the
first `--requests` rows of requests.parquet are answered without their candidate lists
(same user, coordinates, size, max_dist, sort_dist), stage by stage, in this process:

- retrieval: `OnlineStore.retrieve` (the covering, one round trip, decoding the cells);
- distance: `ranking.reachable` (exact great-circle filter);
- first stage: `ranking.first_stage` (k = --first-stage-k);
- RankNet: the full model on what the first stage kept, sorted, cut to size;

and beside them, for the by-score requests, the full model on everything in reach
(`exhaustive_ranknet_ms`), what the first stage saves.

Completeness: for the first 50 requests, the restaurants in reach after retrieval equal the
brute-force set (every restaurant of the catalogue within max_dist). Recall@size of the
funnel: for each by-score request, the share of the exact top `size`
(every reachable restaurant scored by the full model) that the funnel returns. Also per size:
the rows read per request, the geo index's Redis memory (used_memory before and after
writing it) and load time, and the alternative the index was chosen over: GEOSEARCH for the
ids, then the rows by key (`OnlineStore.fetch`). At 100k, the kit's path with its 1,000
candidates is timed beside retrieval, and retrieval used as a pre-filter of that list.

The covering itself (which cells to read) is timed for our grid (`geo_cells.covering`) and,
if `h3` is installed (`pip install h3`), for H3 at resolution 8: `grid_disk` with a centre per
cell, the way a covering of a circle is made with h3's Python API.

Writes OUT/funnel.json and OUT/funnel-stages.png.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mlsys.platform.redis_client import connect
from mlsys.platform.redis_server import RedisServer
from mlsys.recommender.data.dataset import open_dataset
from mlsys.recommender.data.generate import catalogue_box, draw_catalogue
from mlsys.recommender.geo import haversine_m
from mlsys.recommender.ranking import Query, first_stage, order, reachable
from mlsys.recommender.serving.materialize import write_geo_index, write_rows
from mlsys.recommender.serving.online_store import (
    POINTER_KEY,
    RESTAURANT_DTYPE,
    USER_DTYPE,
    OnlineStore,
    cold_user_key,
    restaurant_key,
    user_key,
)
from mlsys.recommender.serving.served_model import load_model

NS = "f1"


def used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def catalogue(data: Path, n: int) -> np.ndarray:
    rows = np.empty(n, dtype=RESTAURANT_DTYPE)
    ds = open_dataset(data)
    if n == ds.n_restaurants:
        rows["features"] = ds.restaurant_features()
        loc = ds.restaurant_locations()
        rows["latitude"], rows["longitude"] = loc[:, 0], loc[:, 1]
    else:
        features, lat, lng = draw_catalogue(np.random.RandomState(n % (1 << 32)), n)
        rows["features"], rows["latitude"], rows["longitude"] = features, lat, lng
    return rows


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "mean": float(a.mean()),
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - started) * 1e3


def run_size(
    data: Path,
    model: Any,
    n: int,
    requests: list[dict[str, Any]],
    k: int,
    work: Path,
    geosearch: bool,
) -> dict[str, Any]:
    result: dict[str, Any] = {"restaurants": n, "box": catalogue_box(n)}
    rows = catalogue(data, n)
    users = open_dataset(data).user_features()
    with RedisServer(workdir=work / f"redis-{n}") as server:
        client = connect(server.url, timeout_s=30)
        for r in requests:
            u = np.empty(1, dtype=USER_DTYPE)
            u["features"][0] = users[r["user_id"]]
            client.set(user_key(NS, r["user_id"]), u.tobytes())
        cold = np.empty(1, dtype=USER_DTYPE)
        cold["features"][0] = users.mean(axis=0)
        client.set(cold_user_key(NS), cold.tobytes())
        before = used_memory(client)
        _, load_rows = timed(
            lambda: write_rows(client, lambda i: restaurant_key(NS, i), rows, 10_000, None)
        )
        after_rows = used_memory(client)
        cells, load_cells = timed(lambda: write_geo_index(client, NS, rows, progress=False))
        after_cells = used_memory(client)
        client.set(POINTER_KEY, NS)
        result["load_s"] = {"rows": load_rows / 1e3, "geo_index": load_cells / 1e3}
        result["redis_mib"] = {
            "rows": (after_rows - before) / 2**20,
            "geo_index": (after_cells - after_rows) / 2**20,
        }
        result["geo_cells"] = cells
        if geosearch:
            geo_key = f"{NS}:geo"

            def geoadd() -> None:
                pipe = client.pipeline(transaction=False)
                lon, lat = rows["longitude"].tolist(), rows["latitude"].tolist()
                for start in range(0, n, 10_000):
                    flat: list[Any] = []
                    for i in range(start, min(start + 10_000, n)):
                        flat += (lon[i], lat[i], i)
                    pipe.execute_command("GEOADD", geo_key, *flat)
                    if start % 100_000 == 0:
                        pipe.execute()
                pipe.execute()

            mem = used_memory(client)
            _, geo_load = timed(geoadd)
            mib = (used_memory(client) - mem) / 2**20
            result["geosearch_index"] = {"load_s": geo_load / 1e3, "redis_mib": mib}

        store = OnlineStore(client)
        names = ("retrieval", "distance", "first_stage", "ranknet")
        stages: dict[str, list[float]] = {s: [] for s in names}
        read, reach_n, recall, geo_ms, cpu, exhaustive = [], [], [], [], [], []
        complete = []  # retrieval's reach == brute force over the whole catalogue

        kit_path, prefilter = [], []
        for r in requests:
            q = Query(
                r["user_id"],
                None,
                r["latitude"],
                r["longitude"],
                r["size"],
                float(r["max_dist"]),
                r["sort_dist"],
            )
            c0 = time.process_time()
            got, t_ret = timed(
                lambda q=q: store.retrieve(q.user_id, q.latitude, q.longitude, q.max_dist)
            )
            reach, t_dist = timed(lambda q=q, got=got: reachable(q, got))
            kept, t_first = timed(lambda q=q, reach=reach: first_stage(q, reach, model.scorer, k))
            ranking, t_rank = timed(lambda q=q, kept=kept: order(q, kept, model.scorer))
            cpu.append((time.process_time() - c0) * 1e3)
            for name, t in zip(stages, (t_ret, t_dist, t_first, t_rank), strict=True):
                stages[name].append(t)
            read.append(len(got.ids))
            reach_n.append(len(reach.ids))
            if len(complete) < 50:
                d = haversine_m(q.latitude, q.longitude, rows["latitude"], rows["longitude"])
                complete.append(
                    set(np.flatnonzero(d <= q.max_dist).tolist()) == set(reach.ids.tolist())
                )
            if not q.sort_dist:
                exact, t_exact = timed(lambda q=q, reach=reach: order(q, reach, model.scorer))
                exhaustive.append(t_exact)
                want = min(q.size, len(exact.ids))
                if want:
                    recall.append(len(set(ranking.ids.tolist()) & set(exact.ids.tolist())) / want)
            if geosearch:

                def by_geosearch(q: Query = q) -> Any:
                    ids = client.execute_command(
                        "GEOSEARCH",
                        geo_key,
                        "FROMLONLAT",
                        q.longitude,
                        q.latitude,
                        "BYRADIUS",
                        q.max_dist * 1.01 + 10,
                        "m",
                    )
                    return store.fetch(q.user_id, [int(i) for i in ids])

                _, t_geo = timed(by_geosearch)
                geo_ms.append(t_geo)
            if r["candidates"] is not None and n == 100_000:
                cands = r["candidates"]
                kq = Query(
                    q.user_id, cands, q.latitude, q.longitude, q.size, q.max_dist, q.sort_dist
                )

                def kit(kq: Query = kq) -> Any:
                    return order(
                        kq,
                        reachable(kq, store.fetch(kq.user_id, kq.candidate_ids)),
                        model.scorer,
                        k,
                    )

                def pre(kq: Query = kq) -> Any:
                    """The same answer from the geo index: the cells in reach, then the
                    caller's candidates among them."""
                    near = store.retrieve(kq.user_id, kq.latitude, kq.longitude, kq.max_dist)
                    mine = np.isin(near.ids, kq.candidate_ids)
                    rows = replace(
                        near,
                        ids=near.ids[mine],
                        features=near.features[mine],
                        latitude=near.latitude[mine],
                        longitude=near.longitude[mine],
                    )
                    return order(kq, reachable(kq, rows), model.scorer, k)

                kit_path.append(timed(kit)[1])
                prefilter.append(timed(pre)[1])
        result["stages_ms"] = {s: percentiles(v) for s, v in stages.items()}
        total = [sum(x) for x in zip(*stages.values(), strict=True)]
        result["total_ms"] = percentiles(total)
        result["cpu_ms_per_request"] = percentiles(cpu)
        result["rows_read"] = percentiles(read)
        result["reachable"] = percentiles(reach_n)
        result["retrieval_complete"] = {"requests": len(complete), "equal": int(sum(complete))}
        result["exhaustive_ranknet_ms"] = percentiles(exhaustive)  # by score, all in reach
        result["recall_at_size"] = {
            "mean": float(np.mean(recall)),
            "min": float(np.min(recall)),
            "requests": len(recall),
        }
        if geosearch:
            result["geosearch_then_fetch_ms"] = percentiles(geo_ms)
        if kit_path:
            result["kit_candidates_path_ms"] = percentiles(kit_path)
            result["retrieve_as_prefilter_ms"] = percentiles(prefilter)
    return result


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["restaurants"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bottom = np.zeros(len(sizes))
    labels = [f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k" for n in sizes]
    for stage in ("retrieval", "distance", "first_stage", "ranknet"):
        vals = np.asarray([r["stages_ms"][stage]["p50"] for r in results])
        ax.bar(labels, vals, bottom=bottom, label=f"{stage} (median)")
        bottom += vals
    ax.plot(labels, [r["total_ms"]["p95"] for r in results], "k.-", label="total, p95")
    ax.set_ylabel("ms per request (in process, one Redis)")
    ax.set_xlabel("restaurants in the catalogue")
    ax.set_title("The funnel per request: retrieval, distance, first stage, RankNet")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def covering_costs(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Milliseconds per covering: our grid's, and H3's if installed."""
    from mlsys.recommender.serving.geo_cells import covering_suffixes

    out: dict[str, Any] = {}
    grid = [
        timed(lambda r=r: covering_suffixes(r["latitude"], r["longitude"], float(r["max_dist"])))
        for r in requests
    ]
    out["grid"] = {
        **percentiles([t for _, t in grid]),
        "cells": percentiles([len(c) for c, _ in grid]),
    }
    try:
        import h3
    except ImportError:
        out["h3"] = "not installed"
        return out

    def h3_cover(r: dict[str, Any]) -> list[str]:
        origin = h3.latlng_to_cell(r["latitude"], r["longitude"], 8)
        radius = 1.15 * h3.average_hexagon_edge_length(8, "m")
        k = int(np.ceil((r["max_dist"] + 2 * radius) / (1.5 * radius)))
        cells = h3.grid_disk(origin, k)
        centres = np.asarray([h3.cell_to_latlng(c) for c in cells])
        near = haversine_m(r["latitude"], r["longitude"], centres[:, 0], centres[:, 1])
        return [c for c, ok in zip(cells, near <= r["max_dist"] + radius, strict=True) if ok]

    h3_runs = [timed(lambda r=r: h3_cover(r)) for r in requests]
    out["h3_res8"] = {
        **percentiles([t for _, t in h3_runs]),
        "cells": percentiles([len(c) for c, _ in h3_runs]),
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--restaurants", default="100000,1000000,10000000")
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--first-stage-k", type=int, default=500)
    p.add_argument("--no-geosearch", action="store_true")
    p.add_argument("--out", type=Path, default=Path("docs/funnel"))
    p.add_argument("--work", type=Path, default=Path("/tmp/funnel-bench"))
    args = p.parse_args()
    table = pq.read_table(args.data / "requests.parquet").slice(0, args.requests).to_pylist()
    requests = [{**r, "candidates": r.pop("candidate_restaurant_ids")} for r in table]
    model = load_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    costs = covering_costs(requests)
    print("covering, ms per request:", json.dumps(costs), flush=True)
    results = []
    for n in [int(x) for x in args.restaurants.split(",")]:
        print(f"{n:,} restaurants ...", flush=True)
        res = run_size(
            args.data,
            model,
            n,
            requests,
            args.first_stage_k,
            args.work,
            geosearch=not args.no_geosearch,
        )
        results.append(res)
        print(json.dumps(res, indent=1), flush=True)
    report = {
        "covering": costs,
        "sizes": results,
        "first_stage_k": args.first_stage_k,
        "requests": len(requests),
    }
    (args.out / "funnel.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(results, args.out / "funnel-stages.png")
    print(f"wrote {args.out / 'funnel.json'} and {args.out / 'funnel-stages.png'}")


if __name__ == "__main__":
    main()
