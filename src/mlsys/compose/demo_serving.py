"""The demo's serving half: Redis -> features load -> `mlsys serve` -> 10 s at 30 rps -> stop.

Called by `demo.run_demo` after training and evaluation. Uses `stack.running_stack`, so Redis
and the API are child processes that are stopped in every case (error, Ctrl-C included).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def ensure_model(model_dir: Path) -> Path:
    """The trained model if the training step produced one, else a random-init stand-in (the
    demo then still shows the serving path; scores are meaningless and it says so)."""
    if (model_dir / "model.pt").is_file():
        return model_dir
    import torch

    from mlsys.recommender.artifact import save_ranknet
    from mlsys.recommender.model import RankNet

    stand_in = model_dir.parent / "ranknet-random-init"
    if not (stand_in / "model.pt").is_file():
        torch.manual_seed(0)
        save_ranknet(RankNet(), stand_in, data_checksum="none", config={"init": "seed 0"},
                     metrics={})  # fmt: skip
    print(f"no trained model at {model_dir}: serving a random-init RankNet from {stand_in}")
    return stand_in


def run_serving_steps(
    work: Path, data_dir: Path, model_dir: Path, first_step: int, seconds: float = 10.0
) -> dict[str, float]:
    from mlsys.compose.loadtest import plot_run, run_once
    from mlsys.compose.stack import running_stack, stack_memory

    model = ensure_model(model_dir)
    n = first_step
    _step(f"{n}. start Redis, load the feature tables, start `mlsys serve` (all cores)")
    t0 = time.perf_counter()
    workers = os.cpu_count() or 1
    with running_stack(data_dir, model, work / "serving", workers=workers) as stack:
        meta = stack.load_meta
        print(
            f"redis {stack.redis.url} (pid {stack.redis.pid}); loaded "
            f"{meta['counts']['users']:,} users + {meta['counts']['restaurants']:,} restaurants "
            f"into {meta['namespace']} in {meta['load_seconds']:.1f} s"
        )
        print(f"API {stack.api_url} ({workers} workers, logs {stack.log_path}) ready after "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip

        _step(f"{n + 1}. {seconds:g} s of load at 30 requests/s from requests.parquet")
        result, summary = run_once(
            stack.api_url, data_dir / "requests.parquet", rate=30, duration=seconds
        )
        plot_run(result, summary, work / "loadtest-30rps.png")
        memory = stack_memory(stack)
        print(
            f"{summary['requests']} requests, achieved {summary['achieved_rate']:.1f} rps, "
            f"errors {summary['errors']}\n"
            f"p50 {summary['p50_ms']:.1f} ms   p95 {summary['p95_ms']:.1f} ms   "
            f"p99 {summary['p99_ms']:.1f} ms   (spec: p95 < 100 ms)\n"
            f"stack RSS {memory['total_rss_mib']:.0f} MiB (API {memory['api_rss_mib']:.0f}, "
            f"Redis {memory['redis_rss_mib']:.0f}); plot {work / 'loadtest-30rps.png'}"
        )
        _step(f"{n + 2}. stop the API and Redis")
    print("stopped")
    return {k: summary[k] for k in ("p50_ms", "p95_ms", "p99_ms", "errors")}
