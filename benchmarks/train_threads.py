"""Training epoch time by torch thread count, on a quiet machine and with one core busy.

    flock /tmp/mlsys-heavy.lock .venv/bin/python benchmarks/train_threads.py /work/data/full

Issue 14: with one of two cores busy, a 2-thread epoch ran 4.4x slower than a 1-thread one
(OpenMP barriers wait for the descheduled thread). This runs, in one go and interleaved
round by round so a slow spell hits every arm alike, `run_epoch` over `--rows` rows for each
thread count in `--threads` (plus the default, `threads.default_threads()`), once on a quiet
machine and once beside a busy process (a spinning Python loop, standing in for Redis, the
API or a load generator). Each arm is its own child process. It prints the medians over
`--repeats` rounds, each arm's busy/quiet ratio, and writes OUT/train_threads.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def epoch_seconds(data: str, threads: int, rows: int) -> float:
    """One epoch of `rows` rows with the training loop `mlsys train` runs (child process)."""
    import torch

    from mlsys.recommender.data.dataset import open_dataset
    from mlsys.recommender.data.stream import FeatureTables
    from mlsys.recommender.model import RankNet
    from mlsys.recommender.training.fastgrad import FactoredStep
    from mlsys.recommender.training.train import TrainConfig, make_optimizer, run_epoch

    torch.set_num_threads(threads)
    dataset = open_dataset(data)
    tables = FeatureTables.load(dataset)
    config = TrainConfig(threads=threads, limit_rows=rows)
    torch.manual_seed(0)
    model = RankNet()
    step = FactoredStep(model, config.batch_size)
    stats = run_epoch(
        dataset, tables, step, make_optimizer(model, config), config, 0, progress=False
    )
    return stats.seconds


def _spin(stop: Any) -> None:
    while not stop.is_set():
        sum(range(10_000))


def _child(data: str, threads: int, rows: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, data, "--child", str(threads), "--rows", str(rows)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", metavar="DATA_DIR")
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="docs/figures")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(epoch_seconds(args.data, args.child, args.rows))
        return 0

    from mlsys.recommender.training.threads import default_threads

    counts = sorted({int(t) for t in args.threads.split(",")} | {default_threads()})
    times: dict[str, list[float]] = {}
    for round_ in range(args.repeats):
        for busy in (False, True):
            stop = mp.Event()
            spinner = mp.Process(target=_spin, args=(stop,)) if busy else None
            if spinner is not None:
                spinner.start()
                time.sleep(0.5)
            try:
                for threads in counts:
                    key = f"{threads} thread(s), {'one core busy' if busy else 'quiet'}"
                    seconds = _child(args.data, threads, args.rows)
                    times.setdefault(key, []).append(seconds)
                    print(f"round {round_ + 1}: {key}: {seconds:.2f} s", flush=True)
            finally:
                if spinner is not None:
                    stop.set()
                    spinner.join()

    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmedian epoch seconds over {args.repeats} rounds, {args.rows:,} rows:")
    for threads in counts:
        quiet = medians[f"{threads} thread(s), quiet"]
        busy = medians[f"{threads} thread(s), one core busy"]
        default = "  (default)" if threads == default_threads() else ""
        print(
            f"  {threads} thread(s): quiet {quiet:6.2f} s   one core busy {busy:6.2f} s   "
            f"busy/quiet {busy / quiet:4.2f}x{default}"
        )
    result = {
        "rows": args.rows,
        "repeats": args.repeats,
        "default_threads": default_threads(),
        "seconds": times,
        "median_seconds": medians,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_threads.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'train_threads.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
