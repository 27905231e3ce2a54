"""Data-parallel RankNet training (issue 19): epoch time at 1 and 2 ranks on this machine, and
what one step's all-reduce costs. One run, side by side:

    flock /tmp/mlsys-heavy.lock .venv/bin/python benchmarks/train_ranks.py \
        --data /work/data/full --rows 5000000

1. `mlsys train ranknet --limit-rows ROWS --epochs 1 --no-eval` with --nproc 1 and --nproc 2,
   alternated twice (A, B, A, B); the epoch's seconds from metrics.json;
2. 2 gloo ranks on localhost all-reduce RankNet's flat gradient buffer (43,521 floats,
   170 KB) `--calls` times: the median per call, which every step pays once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--out", default="docs/scale-out/train_ranks.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlsys-ranks-"))
    epochs: dict[str, list[float]] = {"1": [], "2": []}
    for round_ in (1, 2):
        for nproc in ("1", "2"):
            out = work / f"r{nproc}-{round_}"
            subprocess.run(
                [sys.executable, "-m", "mlsys", "train", "ranknet", args.data, "--out", str(out),
                 "--epochs", "1", "--limit-rows", str(args.rows), "--no-eval", "--no-track",
                 "--no-progress", "--nproc", nproc],
                check=True, capture_output=True,
            )  # fmt: skip
            seconds = json.loads((out / "metrics.json").read_text())["epochs"][0]["seconds"]
            epochs[nproc].append(seconds)
            print(f"--nproc {nproc} #{round_}: {seconds:.1f} s for {args.rows:,} rows", flush=True)
    allreduce = _allreduce_ms(args.calls)
    steps = args.rows // 1024
    result: dict[str, Any] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": args.rows,
        "steps": steps,
        "epoch_seconds": epochs,
        "step_ms_median": {
            k: round(1e3 * float(np.median(v)) / steps, 3) for k, v in epochs.items()
        },
        "allreduce_ms_median": allreduce,
    }
    result["allreduce_share_at_2"] = round(allreduce / result["step_ms_median"]["2"], 3)
    print(json.dumps(result), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _allreduce_ms(calls: int) -> float:
    import torch.multiprocessing as mp

    from mlsys.platform.redis_server import free_port

    queue = mp.get_context("spawn").SimpleQueue()
    address = f"tcp://127.0.0.1:{free_port()}"
    mp.spawn(_rank, args=(address, calls, queue), nprocs=2, join=True)  # type: ignore[no-untyped-call]
    return float(queue.get())


def _rank(rank: int, address: str, calls: int, queue: Any) -> None:
    import torch
    import torch.distributed as dist

    from mlsys.recommender.model import RankNet
    from mlsys.recommender.training.distributed import GradientSync

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=2)
    sync = GradientSync(RankNet().parameters())
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        sync.reduce(0.5)
        times.append(time.perf_counter() - began)
    if rank == 0:
        queue.put(round(1e3 * float(np.median(times[100:])), 4))
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
