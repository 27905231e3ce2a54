"""The serving measurements of docs/serving-report.md, in one run (hold the shared CPU lock):

    flock /tmp/mlsys-heavy.lock .venv/bin/python perf_test/serving_bench.py \
        --data /work/data/full --model MODEL_DIR

1. starts the stack exactly as the demo does (redis-server, `features load`, `mlsys serve
   --workers 2`), recording the load time and Redis memory;
2. a per-request latency breakdown, in process against the same Redis (parse, Redis round
   trip, distance + score + sort, JSON), over the first 2,000 rows of requests.parquet;
3. `mlsys loadtest` at 30 rps for 60 s (open model);
   (plus the server-side time of the same requests, from the API's JSON logs);
4. `mlsys loadtest --sweep` (20 s per step) for the highest rate with p95 < 100 ms and no errors;
5. whole-stack RSS (API process tree + redis-server), sampled every second during 3 and 4.

Writes perf_test/results/serving.json plus the load tests' JSON and PNG files.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def breakdown(redis_url: str, model_dir: str, requests_path: Path, n: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from mlsys.platform.redis_client import connect
    from mlsys.recommender.ranking import rank
    from mlsys.recommender.serving.api_schemas import parse_query
    from mlsys.recommender.serving.online_store import OnlineStore
    from mlsys.recommender.serving.served_model import load_model

    model = load_model(model_dir)
    store = OnlineStore(connect(redis_url, timeout_s=1.0))
    rows = pq.read_table(requests_path).slice(0, n).to_pylist()
    bodies = [json.dumps({k: r[k] for k in r if k != "user_id"}).encode() for r in rows]
    stages: dict[str, list[float]] = {"parse": [], "redis": [], "rank": [], "json": []}
    kept: list[int] = []
    for r, body in zip(rows, bodies, strict=True):
        t0 = time.perf_counter()
        q = parse_query(r["user_id"], body, 10_000)
        t1 = time.perf_counter()
        fetched = store.fetch(q.user_id, q.candidate_ids)
        t2 = time.perf_counter()
        ranking = rank(q, fetched, model.scorer)
        t3 = time.perf_counter()
        ranking.to_json()
        t4 = time.perf_counter()
        for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[name].append(dt * 1e3)
        kept.append(ranking.candidates - ranking.unknown - ranking.too_far)
    total = np.sum([stages[k] for k in stages], axis=0)
    out: dict[str, Any] = {
        name: {
            "median_ms": round(float(np.median(v)), 3),
            "p95_ms": round(float(np.percentile(v, 95)), 3),
        }
        for name, v in {**stages, "total": total}.items()
    }
    out["requests"] = n
    out["scored_candidates_median"] = float(np.median(kept))
    return out


def server_side(log_path: Path, start: int, end: int) -> dict[str, float]:
    """Median/p95 of the API's own duration_ms (middleware: request in -> response out) for
    the 200s logged between two byte offsets of its JSON log."""
    with log_path.open("rb") as fh:
        fh.seek(start)
        chunk = fh.read(end - start).decode(errors="replace")
    ms = []
    for line in chunk.splitlines():
        if line.startswith("{") and '"endpoint": "/recommend/{user_id}"' in line:
            entry = json.loads(line)
            if entry["status"] == 200:
                ms.append(entry["duration_ms"])
    return {
        "requests": len(ms),
        "median_ms": round(float(np.median(ms)), 3) if ms else float("nan"),
        "p95_ms": round(float(np.percentile(ms, 95)), 3) if ms else float("nan"),
    }


def _sample_rss(pids: list[int], stop: Any, out: Any) -> None:
    """In a separate process (the load generator's event loop must not stall on /proc reads):
    plain RSS of both process trees every 2 s; the peak goes back through `out`."""
    import psutil

    peak = {"api_rss_mib": 0.0, "redis_rss_mib": 0.0, "total_rss_mib": 0.0}
    while not stop.wait(2.0):
        parts = []
        for pid in pids:
            rss = 0
            try:
                root = psutil.Process(pid)
                for p in [root, *root.children(recursive=True)]:
                    rss += p.memory_info().rss
            except psutil.Error:
                pass
            parts.append(rss / 2**20)
        if sum(parts) > peak["total_rss_mib"]:
            peak = {
                "api_rss_mib": round(parts[0], 1),
                "redis_rss_mib": round(parts[1], 1),
                "total_rss_mib": round(sum(parts), 1),
            }
    out.put(peak)


class MemorySampler:
    def __init__(self, stack: Any) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.queue: Any = ctx.Queue()
        self.proc = ctx.Process(
            target=_sample_rss, args=([stack.api.pid, stack.redis.pid], self.stop, self.queue)
        )

    def start(self) -> None:
        self.proc.start()

    def peak(self) -> dict[str, float]:
        self.stop.set()
        peak: dict[str, float] = self.queue.get(timeout=30)
        self.proc.join()
        return peak


def main() -> None:
    from mlsys.compose.loadtest import load_requests, parse_url, run_once
    from mlsys.compose.stack import running_stack, stack_memory

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="perf_test/results")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--sweep-duration", type=float, default=20)
    ap.add_argument("--sweep-rates", default="100,200,300,400,500,600,700,800,1000")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    requests_path = Path(args.data) / "requests.parquet"
    report: dict[str, Any] = {
        "data": args.data,
        "model": args.model,
        "workers": args.workers,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="mlsys-stack-") as work:
        t0 = time.perf_counter()
        with running_stack(args.data, args.model, work, workers=args.workers) as stack:
            report["stack_start_s"] = round(time.perf_counter() - t0, 1)
            report["features_load"] = {
                k: stack.load_meta[k] for k in ("load_seconds", "read_seconds", "counts")
            }
            report["memory_idle"] = stack_memory(stack)
            print("stack up:", report["features_load"], report["memory_idle"], flush=True)
            report["breakdown"] = breakdown(stack.redis.url, args.model, requests_path, 2000)
            print("breakdown:", json.dumps(report["breakdown"]), flush=True)

            sampler = MemorySampler(stack)
            sampler.start()
            from mlsys.compose.loadtest import plot_run, plot_sweep

            payloads = load_requests(requests_path, parse_url(stack.api_url))
            log_start = stack.log_path.stat().st_size
            result, summary = run_once(
                stack.api_url, requests_path, 30, args.duration, payloads=payloads
            )
            time.sleep(0.5)  # let the last log lines reach the file
            summary["server_side"] = server_side(
                stack.log_path, log_start, stack.log_path.stat().st_size
            )
            plot_run(result, summary, out / "loadtest-30rps.png")
            (out / "loadtest-30rps.json").write_text(json.dumps(summary, indent=2) + "\n")
            report["rate_30"] = summary
            print("30 rps:", json.dumps(summary), flush=True)

            steps = []
            best = None
            for rate in [float(r) for r in args.sweep_rates.split(",")]:
                result, summary = run_once(
                    stack.api_url, requests_path, rate, args.sweep_duration, payloads=payloads
                )
                steps.append(summary)
                print(f"sweep {rate:g} rps:", json.dumps(summary), flush=True)
                plot_run(result, summary, out / f"sweep-{rate:g}rps.png")
                if not summary["meets_spec"]:
                    break
                best = rate
                time.sleep(1.0)
            plot_sweep(steps, out / "sweep.png")
            report["sweep"] = {"best_rate": best, "steps": steps}
            report["memory_peak_under_load"] = sampler.peak()
            report["memory_after_load"] = stack_memory(stack)
    (out / "serving.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("memory_peak_under_load", "memory_after_load")}))
    print(f"best rate: {best}; wrote {out / 'serving.json'}")


if __name__ == "__main__":
    main()
