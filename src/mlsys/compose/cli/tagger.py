"""CLI commands of the garment tagger."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mlsys.compose.cli import checks as C

if TYPE_CHECKING:
    from mlsys.cli import Verbs
    from mlsys.platform.tracking import Run


def add_commands(verbs: Verbs) -> None:
    """The tagger adds its commands here (generate garments, train/evaluate/predict tagger)."""
    add_generate_commands(verbs)
    add_model_commands(verbs)


# --- generate garments (the data half) -----------------------------------------------------


def add_generate_commands(verbs: Verbs) -> None:
    p = verbs.add(
        "generate",
        "garments",
        _generate_garments,
        "generate the procedural garment photo set (kit layout)",
    )
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--count", type=C.count(1), default=12_000, help="labelled items (data.parquet)")
    p.add_argument(
        "--test-count",
        type=C.count(1),
        default=2_000,
        help="held-out items (test.parquet, labels in test_labels.parquet)",
    )
    p.add_argument("--seed", type=C.count(0), default=5)
    p.add_argument("--force", action="store_true", help="replace an existing directory")
    p.add_argument("--workers", type=C.count(1), default=2, help="processes (default 2)")

    p = verbs.add(
        "validate",
        "garments",
        _validate_garments,
        "check a garment directory (kit files or generated) against the contract",
    )
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument(
        "--images", default=None, metavar="DIR", help="image folder (default DATA_DIR/images)"
    )


def _generate_garments(args: argparse.Namespace) -> int:
    from mlsys.tagger.data.generate import generate_garments
    from mlsys.tagger.schema import open_garments

    m = generate_garments(
        args.out_dir,
        count=args.count,
        test_count=args.test_count,
        seed=args.seed,
        force=args.force,
        workers=args.workers,
    )
    ds = open_garments(args.out_dir)
    ceiling = m["ceiling"]["test"]
    print(f"dataset      {ds.root}")
    print(
        f"items        {ds.data.num_rows:,} labelled, {ds.test.num_rows:,} test "
        f"({m['images_per_second']} images/s, {m['seconds']:.1f} s)"
    )
    print("tags         " + ", ".join(f"{t} {v:.1%}" for t, v in m["tag_share"].items()))
    print(
        f"ceiling      test top-1 {ceiling['expected_top1']:.4f}, "
        f"top-2 {ceiling['expected_top2']:.4f} (Bayes on the shape latents)"
    )
    return 0


def _validate_garments(args: argparse.Namespace) -> int:
    from collections import Counter

    from mlsys.tagger.schema import TAGS, open_garments

    ds = open_garments(args.data_dir, images_dir=args.images)
    n = ds.data.num_rows
    print(f"dataset      {ds.root}")
    m = ds.manifest
    origin = f"mlsys generator v{m['generator_version']}, seed {m['seed']}" if m else "kit"
    print(f"origin       {origin}")
    print(f"items        {n:,} labelled, {ds.test.num_rows:,} test, {len(ds.images):,} images")
    cats = Counter(ds.data.column("cc3").to_pylist())
    print("categories   " + ", ".join(f"{c} {k / n:.1%}" for c, k in sorted(cats.items())))
    print(
        "tags         "
        + ", ".join(f"{t} {sum(ds.data.column(t).to_pylist()) / n:.1%}" for t in TAGS)
    )
    print(f"test labels  {'present' if ds.test_labels is not None else 'absent'}")
    return 0


# --- train / evaluate / predict / bench tagger (the model half) ---------------------------


def add_model_commands(verbs: Verbs) -> None:
    p = verbs.add("train", "tagger", _train_tagger, "train the garment tagger (CPU, <= 30 min)")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="where the model goes")
    p.add_argument("--quick", action="store_true", help="tiny config: 64 px, 2 epochs (smoke)")
    p.add_argument("--size", type=C.count(1), default=None, help="input resolution (default 160)")
    p.add_argument("--epochs", type=C.count(1), default=None)
    p.add_argument("--views", type=C.count(1), default=None, help="cached views per image")
    p.add_argument(
        "--tune-from-block",
        type=C.count(0),
        default=None,
        help="fine-tune blocks from this index on (0-15); earlier ones are cached",
    )
    p.add_argument("--max-images", type=C.count(1), default=None, help="train on a subset")
    p.add_argument("--threads", type=C.count(0), default=None)
    p.add_argument("--seed", type=C.count(0), default=None)
    p.add_argument(
        "--no-track",
        action="store_true",
        help="do not log the run to MLflow ($MLFLOW_TRACKING_URI)",
    )

    p = verbs.add("evaluate", "tagger", _evaluate_tagger, "score the tagger on the test split")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--model", required=True, metavar="MODEL_DIR")
    p.add_argument("--out", default=None, help="report folder (default MODEL_DIR/eval)")
    p.add_argument("--variant", choices=("deployed", "fp32", "int8"), default="deployed")
    p.add_argument("--no-corruptions", action="store_true", help="skip the robustness check")
    p.add_argument("--no-baseline", action="store_true", help="skip the raw-pixel baseline")

    p = verbs.add("predict", "tagger", _predict_tagger, "predictions.parquet for test.parquet")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--model", required=True, metavar="MODEL_DIR")
    p.add_argument("--out", default=None, help="file (default MODEL_DIR/predictions.parquet)")
    p.add_argument(
        "--images", default=None, metavar="DIR", help="image folder (default DATA_DIR/images)"
    )

    p = verbs.add("bench", "tagger", _bench_tagger, "eager vs ONNX fp32 vs ONNX INT8 speed")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--model", required=True, metavar="MODEL_DIR")
    p.add_argument("--images", type=C.count(1), default=512, help="test images used")
    p.add_argument("--out", default=None, help="JSON file for the results")


def _train_tagger(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from mlsys.platform.tracking import tracked_run, tracking_uri
    from mlsys.tagger.training.config import QUICK, TrainConfig
    from mlsys.tagger.training.train import train_tagger

    cfg = QUICK if args.quick else TrainConfig()
    overrides = {
        k: getattr(args, k)
        for k in ("size", "epochs", "views", "tune_from_block", "max_images", "threads", "seed")
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    with tracked_run("garment-tagger", enabled=not args.no_track) as run:
        meta = train_tagger(args.data_dir, args.out, cfg)
        track_training(run, meta, args.out)
    if run.enabled:
        print(f"tracked as MLflow run {run.run_id} at {tracking_uri()}")
    return 0


def track_training(run: Run, meta: dict[str, Any], model_dir: str) -> None:
    """What `tagger.json` holds, as MLflow sees it: config as params, each epoch as a step,
    the validation metrics, and the model directory as artifacts."""
    run.log_params(meta["config"])
    run.set_tags({"mlsys.data_checksum": meta["data_checksum"], "mlsys.model": "garment-tagger"})
    for row in meta["history"]:
        run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    numbers = {k: v for k, v in meta["val_metrics"].items() if isinstance(v, int | float)}
    run.log_metrics({f"val_{k}": v for k, v in numbers.items()})
    run.log_metrics({"val_top1_changed_by_int8": meta["val_top1_changed_by_int8"]})
    run.log_artifacts(model_dir, "model")


def _evaluate_tagger(args: argparse.Namespace) -> int:
    from mlsys.tagger.training.evaluate import evaluate_tagger

    evaluate_tagger(
        args.data_dir,
        args.model,
        args.out,
        variant=args.variant,
        corruptions=not args.no_corruptions,
        baseline=not args.no_baseline,
    )
    return 0


def _predict_tagger(args: argparse.Namespace) -> int:
    from mlsys.tagger.serving.predict import predict_tagger

    path = predict_tagger(args.data_dir, args.model, args.out, images_dir=args.images)
    print(f"wrote {path}")
    return 0


def _bench_tagger(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from mlsys.tagger.training.bench import bench_tagger, load_test_images

    images, labels = load_test_images(args.data_dir, args.model, args.images)
    result = bench_tagger(args.model, images, labels)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0
