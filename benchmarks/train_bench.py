"""Training benchmark (issue 3): our epoch vs the plain-autograd loop, and a batch-size sweep.

    flock /tmp/mlsys-heavy.lock .venv/bin/python benchmarks/train_bench.py /work/data/full

One run, same data, same streamed batches, same thread count. Each arm runs in its own child
process so its peak RSS (from `wait4`) is its own, including loading the feature tables:

- ours:     FactoredStep (exact gradients through W2·W1) + torch.optim.Adam(fused=True);
- autograd: the kit's step, `zero_grad; BCEWithLogitsLoss(model(x), y).backward(); Adam.step`
            (default Adam), fed by the same streamed chunks: the kit's script minus its memory bug;
- sweep:    batch sizes 256..8192, each from the same init over a fixed number of rows, then
            accuracy on a fixed slice of the test split: at lr 1e-8 accuracy follows the number
            of Adam steps, so larger batches are faster per epoch but learn less per row.

Epoch time is the training loop only (feature tables are loaded before the clock starts, as in
`mlsys train`); `--rows` / `--baseline-rows` bound the arms, and rows/s is what is compared.
Results go to OUT/train_bench.json and OUT/train_batch_sweep.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BATCHES = (256, 512, 1024, 2048, 4096, 8192)


def _setup(data: str, threads: int) -> tuple[Any, Any]:
    import torch

    from mlsys.recommender.data.dataset import open_dataset
    from mlsys.recommender.data.stream import FeatureTables

    torch.set_num_threads(threads)
    dataset = open_dataset(data)
    return dataset, FeatureTables.load(dataset)


def worker_ours(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mlsys.recommender.model import RankNet
    from mlsys.recommender.training.fastgrad import FactoredStep
    from mlsys.recommender.training.train import TrainConfig, make_optimizer, run_epoch

    dataset, tables = _setup(args.data, args.threads)
    config = TrainConfig(batch_size=args.batch, seed=0, threads=args.threads, limit_rows=args.rows)
    torch.manual_seed(0)
    model = RankNet()
    stats = run_epoch(
        dataset, tables, FactoredStep(model, args.batch), make_optimizer(model, config), config, 0
    )
    return {
        "rows": stats.rows,
        "steps": stats.steps,
        "seconds": stats.seconds,
        "input_wait_s": stats.input_wait_s,
    }


def worker_autograd(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from mlsys.recommender.data.stream import iter_chunks, prefetch
    from mlsys.recommender.model import RankNet

    dataset, tables = _setup(args.data, args.threads)
    torch.manual_seed(0)
    model = RankNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-8)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    batch = args.batch
    total = min(args.rows or dataset.rows("train"), dataset.rows("train"))
    chunks = prefetch(
        iter_chunks(dataset, tables, "train", batch_size=batch, shuffle=True, limit=args.rows)
    )
    rows = steps = 0
    started = time.perf_counter()
    with tqdm(total=total, unit="row", unit_scale=True, desc="autograd") as bar:
        for chunk in chunks:
            x = torch.from_numpy(chunk.x)
            y = torch.from_numpy((chunk.sign + 1) / 2)
            for start in range(0, chunk.rows, batch):
                optimizer.zero_grad()
                loss = loss_fn(model(x[start : start + batch]), y[start : start + batch])
                loss.backward()
                optimizer.step()
                steps += 1
            rows += chunk.rows
            bar.update(chunk.rows)
    return {"rows": rows, "steps": steps, "seconds": time.perf_counter() - started}


def worker_sweep(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mlsys.recommender.model import RankNet
    from mlsys.recommender.training.evaluate import evaluate_model
    from mlsys.recommender.training.fastgrad import FactoredStep
    from mlsys.recommender.training.train import TrainConfig, make_optimizer, run_epoch

    dataset, tables = _setup(args.data, args.threads)
    results = []
    for batch in args.sweep_batches:
        config = TrainConfig(
            batch_size=batch, seed=0, threads=args.threads, limit_rows=args.sweep_rows
        )
        torch.manual_seed(0)
        model = RankNet()
        stats = run_epoch(
            dataset, tables, FactoredStep(model, batch), make_optimizer(model, config), config, 0
        )
        report = evaluate_model(model, dataset, tables, limit_rows=args.sweep_test_rows)
        results.append(
            {
                "batch": batch,
                "rows": stats.rows,
                "steps": stats.steps,
                "seconds": stats.seconds,
                "rows_per_s": stats.rows_per_s,
                "epoch_seconds_50m": 50_000_000 / stats.rows_per_s,
                "test_accuracy": report["accuracy"],
                "test_rows": report["rows"],
            }
        )
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    torch.manual_seed(0)
    init = evaluate_model(RankNet(), dataset, tables, limit_rows=args.sweep_test_rows)
    return {"sweep": results, "init_accuracy": init["accuracy"]}


def worker_profile(args: argparse.Namespace) -> dict[str, Any]:
    """torch.profiler tables of 200 steps of each loop on random batches: where time goes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from mlsys.recommender.model import RankNet
    from mlsys.recommender.training.fastgrad import FactoredStep

    torch.set_num_threads(args.threads)
    batch, steps = args.batch, 200
    x = torch.randn(steps * batch, 40) * 2
    y = (torch.rand(steps * batch) < 0.46).float()
    sign = 2 * y - 1
    torch.manual_seed(0)
    plain, ours = RankNet(), RankNet()
    ours.load_state_dict(plain.state_dict())
    opt_plain = torch.optim.Adam(plain.parameters(), lr=1e-8)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=1e-8, fused=True)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    step = FactoredStep(ours, batch)
    logits = torch.empty(steps * batch)

    def run_plain() -> None:
        for i in range(steps):
            opt_plain.zero_grad()
            sl = slice(i * batch, (i + 1) * batch)
            loss_fn(plain(x[sl]), y[sl]).backward()
            opt_plain.step()

    def run_ours() -> None:
        for i in range(steps):
            sl = slice(i * batch, (i + 1) * batch)
            step.step(x[sl], sign[sl], logits[sl])
            opt_ours.step()

    tables = {}
    for name, fn in (("autograd", run_plain), ("ours", run_ours)):
        fn()  # warm up
        started = time.perf_counter()
        fn()
        per_step_ms = (time.perf_counter() - started) / steps * 1e3
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
        tables[name] = {"ms_per_step": per_step_ms, "table": table}
        print(f"--- {name}: {per_step_ms:.3f} ms/step (random data, no input pipeline)",
              file=sys.stderr)  # fmt: skip
        print(table, file=sys.stderr)
    return tables


def worker_ours_reserved(args: argparse.Namespace) -> dict[str, Any]:
    """Ours with one core left to the input thread: torch gets threads - 1 (at least 1)."""
    args.threads = max(1, args.threads - 1)
    return worker_ours(args)


WORKERS = {
    "ours": worker_ours,
    "ours-reserved": worker_ours_reserved,
    "autograd": worker_autograd,
    "sweep": worker_sweep,
    "profile": worker_profile,
}


def run_child(args: argparse.Namespace, arm: str) -> dict[str, Any]:
    """Run one arm in a fresh process; its peak RSS comes from the kernel's rusage for it."""
    cmd = [sys.executable, __file__, args.data, "--worker", arm, *_passthrough(args, arm)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{arm} arm failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = rusage.ru_maxrss / 1024  # Linux reports KiB
    if "rows" in result:
        result["rows_per_s"] = result["rows"] / result["seconds"]
        result["epoch_seconds_50m"] = 50_000_000 / result["rows_per_s"]
    return result


def _passthrough(args: argparse.Namespace, arm: str) -> list[str]:
    out = ["--threads", str(args.threads), "--batch", str(args.batch)]
    out += ["--sweep-rows", str(args.sweep_rows), "--sweep-test-rows", str(args.sweep_test_rows)]
    out += ["--sweep-batches", ",".join(map(str, args.sweep_batches))]
    rows = args.baseline_rows if arm == "autograd" and args.baseline_rows else args.rows
    if rows:
        out += ["--rows", str(rows)]
    return out


def plot_sweep(sweep: dict[str, Any], path: Path, threads: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sweep["sweep"]
    batches = [r["batch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(batches, [r["epoch_seconds_50m"] for r in rows], "o-", color="tab:blue")
    ax.axhline(60, color="tab:blue", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"epoch time, 50M rows (s, {threads} threads)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(batches, [r["test_accuracy"] for r in rows], "s-", color="tab:red")
    ax2.axhline(sweep["init_accuracy"], color="tab:red", ls=":", lw=1)
    ax2.set_ylabel(f"test accuracy after {rows[0]['rows'] / 1e6:.0f}M rows", color="tab:red")
    ax.set_title("lr 1e-8: larger batches = faster epochs, fewer Adam steps, less learned")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--rows", type=int, default=0, help="rows per arm (0: a full epoch)")
    parser.add_argument(
        "--baseline-rows", type=int, default=0, help="rows for the autograd arm (0: as --rows)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--sweep-rows", type=int, default=10_000_000)
    parser.add_argument("--sweep-test-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--sweep-batches", type=lambda s: [int(v) for v in s.split(",")], default=list(BATCHES)
    )
    parser.add_argument("--arms", default="profile,ours,autograd,sweep")
    parser.add_argument("--out", default="docs/figures")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rows == 0:
        args.rows = None
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)), flush=True)
        return 0

    results: dict[str, Any] = {
        "data": args.data,
        "threads": args.threads,
        "batch": args.batch,
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    arms = args.arms.split(",")
    for arm in ("ours", "ours-reserved", "autograd"):
        if arm in arms:
            results[arm] = run_child(args, arm)
            r = results[arm]
            print(
                f"{arm:13s} {r['rows']:>11,} rows  {r['seconds']:7.1f} s  "
                f"{r['rows_per_s'] / 1e6:5.2f}M rows/s  "
                f"({1e3 * r['seconds'] / r['steps']:.3f} ms/step)  "
                f"50M-row epoch {r['epoch_seconds_50m']:6.1f} s  "
                f"peak RSS {r['peak_rss_mib']:6.0f} MiB",
                flush=True,
            )
    if "ours" in results and "autograd" in results:
        ratio = results["ours"]["rows_per_s"] / results["autograd"]["rows_per_s"]
        results["speedup"] = ratio
        print(f"speedup   {ratio:.2f}x rows/s (ours / autograd)")
    if "profile" in arms:
        results["profile"] = run_child(args, "profile")
        for name in ("autograd", "ours"):
            print(f"profile   {name:9s} {results['profile'][name]['ms_per_step']:.3f} ms/step")
    if "sweep" in arms:
        sweep = run_child(args, "sweep")
        results["sweep"] = sweep
        print(f"sweep: {sweep['sweep'][0]['rows']:,} rows per batch size, test accuracy on "
              f"{sweep['sweep'][0]['test_rows']:,} test rows (init {sweep['init_accuracy']:.4f}); "
              f"peak RSS {sweep['peak_rss_mib']:.0f} MiB")  # fmt: skip
        print(f"{'batch':>6} {'steps':>7} {'rows/s':>9} {'epoch 50M':>10} {'accuracy':>9}")
        for r in sweep["sweep"]:
            print(f"{r['batch']:>6} {r['steps']:>7} {r['rows_per_s'] / 1e6:>8.2f}M "
                  f"{r['epoch_seconds_50m']:>9.1f}s {r['test_accuracy']:>9.4f}")  # fmt: skip
        plot_sweep(sweep, Path(args.out) / "train_batch_sweep.png", args.threads)
    out = Path(args.out) / "train_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
