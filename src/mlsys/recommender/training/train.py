"""Train RankNet out of core: the kit's model, loss, optimizer and schedule, in ~1/20 the memory.

Fixed by the task: `RankNet`, `BCEWithLogitsLoss` (mean), `Adam(lr=1e-8)`, 5 epochs, batch
1024, raw 40-column input, every training row in every epoch. What changed against the kit's
script, and why (numbers in docs/training-report.md):

- memory: the click files are streamed (stream.py) instead of merged into one 17 GB frame;
- compute: each step computes the forward pass and the exact gradients through W2·W1
  (fastgrad.py), then the real `torch.optim.Adam` (its fused kernel: one call for all six
  parameters instead of ~10 small ops per parameter) applies them;
- robustness: a checkpoint after every epoch (atomic), `--resume` continues from it with the
  same result as an uninterrupted run, progress and metrics are logged as it goes.

The loop reads top to bottom: `train()` sets up, `run_epoch()` is one pass over the data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mlsys.errors import MlsysError
from mlsys.files import atomic_file, atomic_write_json
from mlsys.platform.tracking import Run
from mlsys.recommender.artifact import load_ranknet, save_ranknet
from mlsys.recommender.data.dataset import ClickDataset, open_dataset
from mlsys.recommender.data.stream import FeatureTables, iter_chunks, pooled_prefetch
from mlsys.recommender.model import RankNet
from mlsys.recommender.ranking import Scorer
from mlsys.recommender.training.distributed import (
    GradientSync,
    Ranks,
    all_sum,
    broadcast_parameters,
    shard,
)
from mlsys.recommender.training.fastgrad import FactoredStep
from mlsys.recommender.training.reference import write_reference
from mlsys.recommender.training.threads import default_threads

CHECKPOINT_FILE = "checkpoint.pt"
ONE_PROCESS = Ranks()
METRICS_FILE = "metrics.json"


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 1024
    lr: float = 1e-8
    seed: int = 0
    threads: int = 0  # 0: default_threads()
    shuffle: bool = True
    chunk_batches: int = 16  # batches gathered per prefetched chunk (2.6 MB at batch 1024)
    prefetch: int = 2
    limit_rows: int | None = None  # train on the first N rows per epoch (benchmarks, tests)
    fused_adam: bool = True

    def resolved_threads(self) -> int:
        return self.threads if self.threads > 0 else default_threads()


@dataclass
class EpochStats:
    epoch: int
    rows: int
    steps: int
    loss: float  # mean training BCE, each batch scored before its update (like the kit)
    accuracy: float  # training accuracy of those same predictions
    seconds: float
    input_wait_s: float = 0.0  # time the loop waited for the reader: >0 means input-bound

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class TrainResult:
    model: RankNet
    history: list[EpochStats] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)


def make_optimizer(model: RankNet, config: TrainConfig) -> torch.optim.Adam:
    """The task's optimizer: Adam(lr) on all parameters; fused= only picks the kernel."""
    return torch.optim.Adam(model.parameters(), lr=config.lr, fused=config.fused_adam or None)


def run_epoch(
    dataset: ClickDataset,
    tables: FeatureTables,
    step: FactoredStep,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    epoch: int,
    *,
    progress: bool = True,
    ranks: Ranks = ONE_PROCESS,
    sync: GradientSync | None = None,
) -> EpochStats:
    """One pass over the training rows: step + Adam per batch, loss/accuracy per chunk. With
    several ranks (`distributed.py`) each steps on its shard of every batch and `sync` sums
    the gradients; loss and accuracy are over the rank's rows, summed over ranks at the end."""
    batch = config.batch_size
    total = dataset.rows("train")
    if config.limit_rows is not None:
        total = min(total, config.limit_rows)
    chunks = pooled_prefetch(
        lambda pool: iter_chunks(
            dataset,
            tables,
            "train",
            batch_size=batch,
            chunk_batches=config.chunk_batches,
            shuffle=config.shuffle,
            seed=config.seed,
            epoch=epoch,
            limit=config.limit_rows,
            pool=pool,
        ),
        rows=config.chunk_batches * batch,
        depth=config.prefetch,
    )
    logits = torch.empty(config.chunk_batches * batch)
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    rows = steps = 0
    bar = tqdm(
        total=total,
        unit="row",
        unit_scale=True,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        disable=not progress,
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    waited = 0.0
    with bar:
        ready = time.perf_counter()
        for chunk in chunks:
            waited += time.perf_counter() - ready
            x = torch.from_numpy(chunk.x)
            sign = torch.from_numpy(chunk.sign)
            n = chunk.rows
            z = logits[:n]
            mine = torch.zeros(n, dtype=torch.bool) if sync is not None else None
            for start in range(0, n, batch):
                stop = min(start + batch, n)
                if sync is None:
                    step.step(x[start:stop], sign[start:stop], z[start:stop])
                else:
                    a, b = shard(start, stop, ranks)
                    if b > a:
                        step.step(x[a:b], sign[a:b], z[a:b])
                        mine[a:b] = True  # type: ignore[index]
                    else:  # more ranks than rows in a last batch: this rank adds nothing
                        sync.flat.zero_()
                    sync.reduce((b - a) / (stop - start))
                optimizer.step()
                steps += 1
            if mine is not None:
                z, sign, n = z[mine], sign[mine], int(mine.sum())
            # BCE-with-logits is softplus(-margin); accuracy is margin > 0 (z > 0 <=> p > 0.5).
            margin = z * sign
            loss_sum += torch.nn.functional.softplus(-margin).sum(dtype=torch.float64)
            if not torch.isfinite(loss_sum):
                raise MlsysError(
                    f"training diverged in epoch {epoch + 1} after {steps} steps: the loss is "
                    f"{float(loss_sum)}; nothing of this epoch was written (check the feature "
                    "values' scale and the learning rate)"
                )
            correct += (margin > 0).sum()
            rows += n
            bar.update(n)
            ready = time.perf_counter()
    seconds = time.perf_counter() - started
    if sync is not None:
        total_loss, total_correct, total_rows = all_sum([float(loss_sum), float(correct), rows])
        loss_sum = torch.tensor(total_loss, dtype=torch.float64)
        correct = torch.tensor(int(total_correct))
        rows = int(total_rows)
    return EpochStats(
        epoch=epoch + 1,
        rows=rows,
        steps=steps,
        loss=float(loss_sum) / max(rows, 1),
        accuracy=int(correct) / max(rows, 1),
        seconds=seconds,
        input_wait_s=waited,
    )


def _save_checkpoint(
    path: Path,
    model: RankNet,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    history: list[EpochStats],
    data_checksum: str,
) -> None:
    """Everything a resumed run needs to continue bit-for-bit; written via temp file + rename.

    No RNG state is needed: the only randomness after init is the shuffle, seeded from
    (seed, epoch).
    """
    payload = {
        "epochs_done": len(history),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": asdict(config),
        "history": [asdict(h) for h in history],
        "data_checksum": data_checksum,
    }
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


# Settings that change the result: a resumed run must match the checkpoint on all of them.
_RESUME_KEYS = ("batch_size", "lr", "seed", "shuffle", "limit_rows", "fused_adam")


def _load_checkpoint(
    path: Path,
    model: RankNet,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    data_checksum: str,
) -> list[EpochStats]:
    if not path.is_file():
        raise MlsysError(f"{path}: no checkpoint to resume from (run without --resume)")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload["data_checksum"] != data_checksum:
        raise MlsysError(f"{path}: checkpoint was trained on different data (checksum differs)")
    saved = payload["config"]
    for key in _RESUME_KEYS:
        if saved.get(key) != getattr(config, key):
            raise MlsysError(
                f"{path}: checkpoint has {key}={saved.get(key)!r}, "
                f"this run {getattr(config, key)!r}; resume with the same settings"
            )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    return [EpochStats(**h) for h in payload["history"]]


def _metrics_payload(
    config: TrainConfig, history: list[EpochStats], test: dict[str, float]
) -> dict[str, Any]:
    return {
        "config": asdict(config),
        "epochs": [{**asdict(h), "rows_per_s": h.rows_per_s} for h in history],
        "test": test,
    }


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    init_from: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    evaluate_test: bool = True,
    stop_after_epochs: int | None = None,
    log: Callable[[str], None] = print,
    run: Run | None = None,
    ranks: Ranks = ONE_PROCESS,
) -> TrainResult:
    """Train, checkpoint every epoch, evaluate on the test split, write model.pt + model.json.

    `stop_after_epochs` ends the run early as if killed after that many epochs (tests use it
    to check that `resume` reproduces an uninterrupted run). `run` (platform.tracking) gets
    the config, every epoch's figures, the test metrics and the model directory. With
    several `ranks` (distributed.py) each trains on its shard of every batch and rank 0 alone
    writes, logs and evaluates.
    """
    run = run or Run(None, None)
    if not ranks.is_main:
        log, progress = (lambda _: None), False
    if config.epochs < 1 or config.batch_size < 1:
        raise MlsysError("epochs and batch size must be >= 1")
    dataset = open_dataset(data_dir)
    # The feature tables are read (and their values checked) before anything is written: a
    # bad data file stops the run with one line and leaves no half-made model directory.
    t0 = time.perf_counter()
    tables = FeatureTables.load(dataset)
    tables_s = time.perf_counter() - t0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = config.resolved_threads()
    torch.set_num_threads(threads)
    run.log_params({**asdict(config), "threads": threads, "init_from": str(init_from or "")})
    run.set_tags({"mlsys.data_checksum": dataset.checksum, "mlsys.model": "ranknet"})

    torch.manual_seed(config.seed)
    model = RankNet()
    if init_from is not None:
        warm, meta = load_ranknet(init_from)
        model.load_state_dict(warm.state_dict())
        log(f"warm start from {init_from} (version {meta['version']})")
    model.train()
    optimizer = make_optimizer(model, config)
    checkpoint = out / CHECKPOINT_FILE
    history: list[EpochStats] = []
    if resume:
        history = _load_checkpoint(checkpoint, model, optimizer, config, dataset.checksum)
        log(f"resumed from {checkpoint}: {len(history)} epoch(s) done")

    log(
        f"feature tables: {tables.nbytes / 2**20:.0f} MiB in {tables_s:.1f} s; "
        f"{dataset.rows('train'):,} train rows, batch {config.batch_size}, {threads} thread(s)"
    )
    step = FactoredStep(model, config.batch_size)
    sync = None
    if ranks.world > 1:
        broadcast_parameters(model)
        sync = GradientSync(step.params)  # after FactoredStep, whose .grad it replaces
        log(f"data parallel: {ranks.world} ranks, {config.batch_size} rows per step in all")
    for epoch in range(len(history), config.epochs):
        if stop_after_epochs is not None and epoch >= stop_after_epochs:
            return TrainResult(model, history)
        stats = run_epoch(dataset, tables, step, optimizer, config, epoch, progress=progress,
                          ranks=ranks, sync=sync)  # fmt: skip
        history.append(stats)
        if not ranks.is_main:
            continue
        _save_checkpoint(checkpoint, model, optimizer, config, history, dataset.checksum)
        atomic_write_json(out / METRICS_FILE, _metrics_payload(config, history, {}))
        run.log_metrics(
            {"train_loss": stats.loss, "train_accuracy": stats.accuracy,
             "epoch_seconds": stats.seconds, "rows_per_s": stats.rows_per_s},
            step=stats.epoch,
        )  # fmt: skip
        log(
            f"epoch {stats.epoch}/{config.epochs}  loss {stats.loss:.4f}  acc {stats.accuracy:.4f}"
            f"  {stats.seconds:.1f} s  {stats.rows_per_s / 1e6:.2f}M rows/s  ({stats.steps} steps,"
            f" {stats.input_wait_s:.1f} s waiting for input)"
        )

    if not ranks.is_main:
        return TrainResult(model, history)
    test: dict[str, float] = {}
    report: dict[str, Any] | None = None
    if evaluate_test:
        from mlsys.recommender.training.evaluate import evaluate_model

        report = evaluate_model(model, dataset, tables, progress=progress)
        test = {k: report[k] for k in ("accuracy", "roc_auc", "log_loss", "brier", "ece", "rows")}
        log(f"test: accuracy {test['accuracy']:.4f}  roc_auc {test['roc_auc']:.4f}")
    atomic_write_json(out / METRICS_FILE, _metrics_payload(config, history, test))
    final = history[-1]
    meta = save_ranknet(
        model,
        out,
        data_checksum=dataset.checksum,
        config={**asdict(config), "threads": threads, "init_from": str(init_from or "")},
        metrics={
            "train_loss": final.loss,
            "train_accuracy": final.accuracy,
            "epoch_seconds": [h.seconds for h in history],
            "test": test,
        },
    )
    log(f"wrote {out / 'model.pt'} and {out / 'model.json'}")
    # The drift monitor's reference: registered with the model, as the files below are.
    write_reference(out, dataset, tables, Scorer(dict(model.state_dict())))
    del tables, step  # the last users of the feature tables: the plots below need the room
    _release_memory()
    if report is not None:  # the same files `mlsys evaluate ranknet` writes
        from mlsys.recommender.training.evaluate import write_evaluation

        write_evaluation(report, meta, str(out), dataset, out)
    run.log_metrics({f"test_{k}": v for k, v in test.items()})
    run.log_artifacts(out, "model")
    return TrainResult(model, history, test)


def _release_memory() -> None:
    """Hand freed memory back: Python's cycles, then what pyarrow's allocator keeps."""
    import gc

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
