"""The funnel through the API: requests with and without their candidate lists, side by side.

    .venv/bin/python perf_test/funnel_serve.py --data /work/data/full --model /work/models/after \
        [--big /work/data/r10m] [--out docs/funnel]

One stack (`compose.stack.running_stack`: Redis, `features load`, `mlsys serve --workers 2`,
the impression log on its own Redis) per dataset. At the dataset's own size (100k): 30 rps for
`--duration` s with the kit's 1,000 candidates, then the same requests without lists, then
both again (A B A B: the host is shared, so the ratio is what holds); p95 and the API's CPU
per answer for each; then a sweep without lists for the highest rate with p95 < 100 ms. With
`--big`, a sweep without lists on that catalogue (e.g. 10M restaurants from `mlsys generate
clicks --restaurants 10000000`). Writes OUT/serve.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from mlsys.compose.loadtest import load_requests, parse_url, run_once
from mlsys.compose.stack import running_stack, stack_memory


def tree_cpu(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def measured(stack: Any, payloads: list[bytes], rate: float, duration: float) -> dict[str, Any]:
    before = tree_cpu(stack.api.pid)
    _, summary = run_once(stack.api_url, "", rate, duration, payloads=payloads)
    used = tree_cpu(stack.api.pid) - before
    answered = summary["requests"] - summary["errors"]
    keep = ("target_rate", "achieved_rate", "requests", "errors", "p50_ms", "p95_ms", "p99_ms")
    return {**{k: summary[k] for k in keep}, "api_cpu_ms_per_answer": used / answered * 1e3}


def sweep(stack: Any, payloads: list[bytes], rates: list[float], duration: float) -> Any:
    steps, best = [], None
    for rate in rates:
        step = measured(stack, payloads, rate, duration)
        steps.append(step)
        print("  sweep", json.dumps(step), flush=True)
        if step["errors"] or step["p95_ms"] >= 100:
            break
        best = rate
        time.sleep(1.0)
    return {"best_rate_p95_under_100ms": best, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--big", type=Path, default=None)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--sweep-duration", type=float, default=20)
    ap.add_argument("--rates", default="50,100,150,200,300,400")
    ap.add_argument("--big-rates", default="10,20,30,50,75,100,150,200")
    ap.add_argument("--out", type=Path, default=Path("docs/funnel"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "model": args.model}  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="funnel-") as work,
        running_stack(args.data, args.model, work, log_redis=True, progress=False) as st,
    ):
        target = parse_url(st.api_url)
        path = args.data / "requests.parquet"
        lists = load_requests(path, target)
        bare = load_requests(path, target, candidates=False)
        runs: list[dict[str, Any]] = []
        for label, payloads in (("lists", lists), ("none", bare)) * 2:
            run = {"candidates": label, **measured(st, payloads, 30, args.duration)}
            runs.append(run)
            print("30 rps", json.dumps(run), flush=True)
        report["at_30rps"] = runs
        rates = [float(r) for r in args.rates.split(",")]
        report["sweep_without_lists"] = sweep(st, bare, rates, args.sweep_duration)
        report["memory"] = stack_memory(st)
        report["load"] = st.load_meta
    if args.big is not None:
        with (
            tempfile.TemporaryDirectory(prefix="funnel-big-") as work,
            running_stack(args.big, args.model, work, log_redis=True, progress=False) as st,
        ):
            bare = load_requests(args.big / "requests.parquet", parse_url(st.api_url),
                                 candidates=False)  # fmt: skip
            rates = [float(r) for r in args.big_rates.split(",")]
            report["big"] = {"data": str(args.big), "load": st.load_meta,
                             "memory": stack_memory(st),
                             "sweep_without_lists": sweep(st, bare, rates,
                                                          args.sweep_duration)}  # fmt: skip
    (args.out / "serve.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out / 'serve.json'}")


if __name__ == "__main__":
    main()
