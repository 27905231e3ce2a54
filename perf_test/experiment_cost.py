"""Where the impression log and shadow scoring spend CPU (issue 16): per request, by process.

    flock /tmp/mlsys-heavy.lock .venv/bin/python perf_test/experiment_cost.py \
        --data /work/data/full --champion MODEL_DIR --challenger MODEL_DIR

On a 2-core machine the highest sustainable rate is set by CPU seconds per request summed over
every process that serves it (API workers, the feature store's Redis, the log's Redis), so
that sum, not latency at low load, is what the log and the shadow add. For each configuration
(no log; log; log + shadow on every request; log + interleaving) the API is restarted, loaded
at `--rate` for `--duration` seconds by `mlsys loadtest`'s generator, and the CPU time each
process used is divided by the answers. Writes perf_test/results/experiment_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIGS = (
    ("no log", ["--no-impressions"], None),
    ("log", [], None),
    ("log + shadow", [], "shadow"),
    ("log + interleave", [], "interleave"),
)


def cpu_seconds(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--champion", required=True)
    parser.add_argument("--challenger", required=True)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--configs", default=",".join(c[0] for c in CONFIGS),
                        help="comma-separated subset of the configurations")  # fmt: skip
    parser.add_argument("--out", default="perf_test/results/experiment_cost.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mlsys-cost-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLSYS_MODEL_CACHE"] = str(work / "cache")

    def cli(*words: str) -> None:
        subprocess.run([sys.executable, "-m", "mlsys", *words], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip

    cli("models", "register", args.champion, "--name", "ranknet", "--alias", "champion")
    cli("models", "register", args.challenger, "--name", "ranknet", "--alias", "challenger")

    from mlsys.compose.loadtest import load_requests, parse_url, run_once
    from mlsys.compose.stack import running_stack, settle, start_api, stop_process, wait_ready

    results: dict[str, list[dict[str, Any]]] = {}
    with running_stack(
        args.data, "models:/ranknet@champion", work / "stack", workers=2, access_log=False,
        progress=False, log_redis=True,
    ) as stack:  # fmt: skip
        assert stack.log_redis is not None and stack.log_redis.pid and stack.redis.pid
        log_url = stack.log_redis.url
        payloads = load_requests(Path(args.data) / "requests.parquet", parse_url(stack.api_url))
        api = stack.api
        port = int(stack.api_url.rsplit(":", 1)[1])
        for round_ in range(args.rounds):
            for label, flags, mode in [c for c in CONFIGS if c[0] in args.configs.split(",")]:
                stop_process(api)
                api = start_api(
                    "models:/ranknet@champion", stack.redis.url, port=port, workers=2,
                    log_path=work / "api.log", access_log=False,
                    extra_args=["--log-redis", log_url, *flags],
                )  # fmt: skip
                wait_ready(stack.api_url, api)
                if mode:
                    cli("rollout", mode, "ranknet", "--redis", log_url)
                settle(api.pid)
                time.sleep(2)
                before = {name: cpu_seconds(pid) for name, pid in
                          (("api", api.pid), ("feature redis", stack.redis.pid),
                           ("log redis", stack.log_redis.pid))}  # fmt: skip
                _, summary = run_once(stack.api_url, "", args.rate, args.duration,
                                      payloads=payloads, warmup=0)  # fmt: skip
                used = {name: cpu_seconds(pid) - before[name] for name, pid in
                        (("api", api.pid), ("feature redis", stack.redis.pid),
                         ("log redis", stack.log_redis.pid))}  # fmt: skip
                n = summary["status_counts"].get("200", 0)
                per = {k: round(v / n * 1e3, 3) for k, v in used.items()}
                row = {"cpu_ms_per_request": per, "total_ms": round(sum(per.values()), 3),
                       "p50_ms": summary["p50_ms"], "p95_ms": summary["p95_ms"],
                       "answered": n, "errors": summary["errors"]}  # fmt: skip
                results.setdefault(label, []).append(row)
                print(f"#{round_ + 1} {label:<18} {json.dumps(row)}", flush=True)
                if mode:
                    cli("rollout", "stop", "ranknet", "--redis", log_url)
        stop_process(api)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rate": args.rate, "duration_s": args.duration,
                               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "configs": results}, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
