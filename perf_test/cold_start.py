"""New users through the API: simulated users, a share of them never seen by the store.

    .venv/bin/python perf_test/cold_start.py --data /work/data/full --model /work/models/after \
        [--share 0.2] [--rate 10] [--duration 150] [--out docs/funnel]

One stack (`compose.stack.running_stack`), then `simulate users` with the requests' candidate
lists (`--no-candidates`: without, so from the geo index; those answers hold `size` restaurants,
100-1,000, and the simulated users click ~59 of them each, which the simulator's one client
cannot post at any useful rate). The run reports the known and the new users'
true CTR (expected clicks per answer from the generator's true click probabilities) beside
their oracle's, and how many new users got no answer. The rate is low because the simulator
posts ~6 clicks per answer from one asyncio client, which saturates a core near 20 rps on
this machine (docs/performance.md): its own timeouts would muddy the counts. Writes
OUT/cold_start.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mlsys.compose.stack import running_stack
from mlsys.recommender.online.simulate import load_population, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--share", type=float, default=0.2)
    ap.add_argument("--rate", type=float, default=10)
    ap.add_argument("--duration", type=float, default=150)
    ap.add_argument("--out", type=Path, default=Path("docs/funnel"))
    ap.add_argument("--no-candidates", action="store_true")
    args = ap.parse_args()
    report: dict[str, object] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "new_user_share": args.share,
        "rate": args.rate,
        "duration_s": args.duration,
    }
    with (
        tempfile.TemporaryDirectory(prefix="cold-") as work,
        running_stack(args.data, args.model, work, log_redis=True, progress=False) as st,
    ):
        lists = not args.no_candidates
        population = load_population(args.data, candidates=lists)
        result = simulate(st.api_url, args.data, args.rate, args.duration, seed=3,
                          population=population, new_user_share=args.share)  # fmt: skip
        key = "with_lists" if lists else "without_lists"
        report[key] = {k: result[k] for k in ("requests", "ok", "statuses", "cohorts", "p95_ms")}
        print(key, json.dumps(report[key]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold_start.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
