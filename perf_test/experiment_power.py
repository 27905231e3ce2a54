"""How many requests A/B and interleaving need to tell two RankNets apart (issue 16), by replay.

    .venv/bin/python perf_test/experiment_power.py --data /work/data/full \
        --champion MODEL_DIR --challenger MODEL_DIR

A live run is one draw of a random stopping time, and A/B needs tens of thousands of requests
here (40 simulated requests/s: many minutes per draw). So the distribution comes from a
replay that uses the serving code without HTTP: every request of requests.parquet is ranked by
both models exactly as `/recommend` ranks it (`service.rank` on the stored features,
`impressions.interleave` for the merge), simulated users click by `simulate.py`'s rule, and
`online_stats` decides, as `mlsys experiment report` does:

- the true CTR of each model over all requests (expected clicks per answer, noise-free), the
  oracle's, and so the true effect;
- per request and arm, `--replicas` independent click draws (A/B: the arm's ranking;
  interleaving: a fresh team-draft coin each time, clicks credited to the team);
- `--streams` streams per method, each a random sequence of (request, replica) draws, A/B arms
  50/50: the first count at which the always-valid interval excludes zero. Interleaving counts
  every answer served, also those where both rankings agree (they cost traffic, and show no
  preference).

The live runs (perf_test/experiments.py) check that the system measures what this replay
assumes: their CTR per arm and their stopping counts fall in these distributions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--champion", required=True)
    parser.add_argument("--challenger", required=True)
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="perf_test/results/experiment_power.json")
    args = parser.parse_args()

    from mlsys.platform.online_stats import first_decision
    from mlsys.recommender.data.dataset import open_dataset
    from mlsys.recommender.online.experiment import N_OPT_BY_MODE
    from mlsys.recommender.online.simulate import clicks, examination
    from mlsys.recommender.ranking import Query, Rows, rank
    from mlsys.recommender.serving.impressions import interleave
    from mlsys.recommender.serving.served_model import load_model

    started = time.monotonic()
    ds = open_dataset(args.data)
    users = ds.user_features()
    restaurants = ds.restaurant_features()
    locations = ds.restaurant_locations()
    rows = ds.request_rows()
    champion = load_model(args.champion).scorer
    challenger = load_model(args.challenger).scorer
    rng = np.random.default_rng(args.seed)

    ab_draws = np.empty((len(rows), 2, args.replicas))
    il_draws = np.empty((len(rows), args.replicas))
    truth = {"champion": 0.0, "challenger": 0.0, "oracle": 0.0}
    agree = 0
    for i, row in enumerate(rows):
        cands = np.asarray(row["candidate_restaurant_ids"], dtype=np.int64)
        query = Query.of_request(row)
        fetched = Rows.in_memory(users[query.user_id], cands, restaurants, locations)
        first, second = rank(query, fetched, champion), rank(query, fetched, challenger)
        u10 = users[row["user_id"], :10].astype(np.float64)

        def logits(ids: np.ndarray[Any, Any], u10: Any = u10) -> np.ndarray[Any, Any]:
            return restaurants[ids, :10].astype(np.float64) @ u10

        for j, ranking in enumerate((first, second)):
            p = 1 / (1 + np.exp(-logits(ranking.ids)))
            truth[("champion", "challenger")[j]] += float(examination(len(p)) @ p)
            ab_draws[i, j] = clicks(logits(ranking.ids), rng, args.replicas).sum(axis=1)
        p = 1 / (1 + np.exp(-logits(first.ids)))
        best = p if row["sort_dist"] else np.sort(p)[::-1]
        truth["oracle"] += float(examination(len(best)) @ best)
        same = bool(np.array_equal(first.ids, second.ids))
        agree += same
        for r in range(args.replicas):
            merged, teams = interleave(first, second, query.size, seed=int(rng.integers(1 << 62)))
            got = clicks(logits(merged.ids), rng)
            team_b = np.frombuffer(teams.encode(), dtype=np.uint8) == ord("b")
            il_draws[i, r] = np.nan if same else np.sign(int(got[team_b].sum())
                                                         - int(got[~team_b].sum()))  # fmt: skip
    n = len(rows)
    true_ctr = {k: v / n for k, v in truth.items()}
    rounded = {k: round(v, 4) for k, v in true_ctr.items()}
    print(f"replayed {n} requests x {args.replicas} draws in {time.monotonic() - started:.0f} s; "
          f"true CTR {json.dumps(rounded)}", flush=True)  # fmt: skip

    limits = {"ab": 200_000, "interleave": 20_000}
    stops: dict[str, list[float]] = {"ab": [], "interleave": []}
    wrong = {"ab": 0, "interleave": 0}  # decided that the champion is better
    for _ in range(args.streams):
        req = rng.integers(0, n, limits["ab"])
        rep = rng.integers(0, args.replicas, limits["ab"])
        arm = rng.random(limits["ab"]) < 0.5
        values = ab_draws[req, arm.astype(int), rep]
        t = first_decision(values, arm, n_opt=N_OPT_BY_MODE["ab"])
        stops["ab"].append(np.inf if t is None else t)
        if t is not None:
            wrong["ab"] += values[:t][arm[:t]].mean() < values[:t][~arm[:t]].mean()

        req = rng.integers(0, n, limits["interleave"])
        rep = rng.integers(0, args.replicas, limits["interleave"])
        outcome = il_draws[req, rep]
        informative = np.flatnonzero(~np.isnan(outcome))
        t = first_decision(outcome[informative], n_opt=N_OPT_BY_MODE["interleave"])
        stops["interleave"].append(np.inf if t is None else float(informative[t - 1] + 1))
        if t is not None:
            wrong["interleave"] += outcome[informative][:t].mean() < 0

    def summary(mode: str) -> dict[str, Any]:
        arr = np.asarray(stops[mode])
        q = {f"p{p}": float(np.percentile(arr, p, method="nearest")) for p in (25, 50, 75)}
        return {
            "streams": len(arr),
            "stream_length": limits[mode],
            "decided": int(np.isfinite(arr).sum()),
            "decided_champion_better": int(wrong[mode]),
            **{k: (v if np.isfinite(v) else None) for k, v in q.items()},
        }

    result = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "requests": n,
        "replicas": args.replicas,
        "true_ctr": true_ctr,
        "true_effect": true_ctr["challenger"] - true_ctr["champion"],
        "answers_where_rankings_agree": agree / n,
        "ab": summary("ab"),
        "interleave": summary("interleave"),
    }
    if result["ab"]["p50"] and result["interleave"]["p50"]:
        result["ratio_median"] = result["ab"]["p50"] / result["interleave"]["p50"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
