"""CLI commands of the restaurant recommender."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mlsys.compose.cli import checks as C
from mlsys.platform.settings import REDIS_HELP, redis_url_from_env

if TYPE_CHECKING:
    from mlsys.cli import Verbs


def add_commands(verbs: Verbs) -> None:
    p = verbs.add("generate", "clicks", _generate_clicks, "generate the click dataset")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument(
        "--scale",
        choices=("tiny", "small", "full"),
        default="small",
        help="tiny: unit tests; small: 1/100 of the rows; full: the kit's sizes",
    )
    p.add_argument(
        "--seed", type=C.count(0), default=7, help="7 reproduces the kit's feature tables"
    )
    p.add_argument("--force", action="store_true", help="replace an existing dataset")
    p.add_argument(
        "--workers", type=C.count(1), default=None, help="processes (default: all cores)"
    )
    p.add_argument(
        "--restaurants", type=C.count(1), default=None, metavar="N",
        help="catalogue size instead of the scale's; beyond the kit's 100k the area and the "
        "density both grow as sqrt(N/100k) (docs/funnel.md)",
    )  # fmt: skip

    p = verbs.add("generate", "drift", _generate_drift,
                  "write a drifted copy of a dataset (same ids) to test monitoring")  # fmt: skip
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--kind", required=True,
                   choices=("covariate", "concept", "prior", "new-restaurants"),
                   help="covariate: user f00-f04 move; concept: a new click rule; prior: fewer "
                   "clicks; new-restaurants: part of the catalogue redrawn")  # fmt: skip
    p.add_argument(
        "--strength",
        type=C.positive,
        default=None,
        help="covariate: shift in standard deviations (0.5); new-restaurants: share "
        "redrawn (0.3); concept: share of taste moved (1.0); prior: logit bias (1.0)",
    )
    p.add_argument("--seed", type=C.count(0), default=1)
    p.add_argument("--force", action="store_true", help="replace an existing OUT_DIR")

    p = verbs.add("validate", "data", _validate_data, "validate a click dataset directory")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument(
        "--checksums",
        action="store_true",
        help="also verify every file's sha256 against manifest.json (reads all bytes)",
    )

    p = verbs.add("report", "data", _report_data, "exploratory report of a click dataset")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--out", default=None, help="output folder (default DATA_DIR/report)")
    p.add_argument(
        "--sample-rows",
        type=C.count(1),
        default=1_000_000,
        help="click rows sampled for the report",
    )
    _add_feature_commands(verbs)
    _add_train_commands(verbs)


def _generate_clicks(args: argparse.Namespace) -> int:
    from mlsys.recommender.data.dataset import open_dataset
    from mlsys.recommender.data.generate import generate_clicks

    manifest = generate_clicks(
        args.out_dir, scale=args.scale, seed=args.seed, force=args.force, workers=args.workers,
        restaurants=args.restaurants,
    )  # fmt: skip
    dataset = open_dataset(args.out_dir)
    print(dataset.summary(seconds=manifest["seconds"]))
    return 0


def _generate_drift(args: argparse.Namespace) -> int:
    from mlsys.recommender.data.drift_scenarios import generate_drift

    manifest = generate_drift(
        args.data_dir, args.out_dir, args.kind, args.strength, seed=args.seed, force=args.force
    )
    drift = manifest["drift"]
    shifted = ", ".join(drift["shifted_features"]) or "none (the click rule moved)"
    print(f"{args.out_dir}: {drift['kind']} drift, strength {drift['strength']:g}, in "
          f"{manifest['seconds']} s; features moved: {shifted}")  # fmt: skip
    return 0


def _validate_data(args: argparse.Namespace) -> int:
    from mlsys.recommender.data.dataset import open_dataset

    dataset = open_dataset(args.data_dir, verify_checksums=args.checksums)
    print(dataset.summary())
    print(
        "checksums: verified"
        if args.checksums and dataset.manifest
        else "checksums: not verified (pass --checksums)"
        if dataset.manifest
        else "no manifest.json: a kit-generated dataset, schema checked only"
    )
    return 0


def _report_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlsys.recommender.data.dataset import open_dataset
    from mlsys.recommender.data.report import write_data_report

    dataset = open_dataset(args.data_dir)
    out = Path(args.out) if args.out else dataset.root / "report"
    path = write_data_report(dataset, out, sample_rows=args.sample_rows)
    print(f"wrote {path}")
    return 0


def _add_feature_commands(verbs: Verbs) -> None:
    """`mlsys features load|set|info`: the online feature store in Redis."""
    p = verbs.add("features", "load", _features_load, "materialize the feature tables into Redis")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--redis", default=redis_url_from_env(), metavar="URL", help=REDIS_HELP)
    p.add_argument("--keep", type=C.count(1), default=1, help="namespaces kept after the switch")
    p.add_argument("--batch", type=C.count(1), default=10_000, help="keys per MSET")

    p = verbs.add("features", "set", _features_set, "update one user's or restaurant's features")
    p.add_argument("entity", choices=("user", "restaurant"))
    p.add_argument("entity_id", metavar="ID", type=C.entity_id)
    p.add_argument("--redis", default=redis_url_from_env(), metavar="URL", help=REDIS_HELP)
    p.add_argument("--features", default=None, help="comma-separated values (30 or 10)")
    p.add_argument("--latitude", type=C.finite, default=None, help="restaurants only")
    p.add_argument("--longitude", type=C.finite, default=None, help="restaurants only")
    p.add_argument(
        "--create",
        action="store_true",
        help="add the entity if the store does not hold it (without: an unknown id is an error)",
    )

    p = verbs.add("features", "info", _features_info, "show the current namespace's metadata")
    p.add_argument("--redis", default=redis_url_from_env(), metavar="URL", help=REDIS_HELP)


def _redis(url: str) -> Any:
    import redis

    from mlsys.errors import MlsysError
    from mlsys.platform.redis_client import connect

    try:
        return connect(url, timeout_s=30.0)
    except (redis.RedisError, ValueError, OSError) as exc:  # down, or not a Redis URL
        raise MlsysError(f"--redis {url}: {type(exc).__name__}: {exc}") from None


def _features_load(args: argparse.Namespace) -> int:
    import redis

    from mlsys.errors import MlsysError
    from mlsys.platform.redis_client import is_cluster, used_memory
    from mlsys.recommender.serving.materialize import materialize

    client = _redis(args.redis)
    try:
        meta = materialize(args.data_dir, client, keep=args.keep, batch=args.batch)
        memory = used_memory(client)
    except redis.RedisError as exc:
        raise MlsysError(f"redis at {args.redis}: {exc}") from exc
    counts = meta["counts"]
    print(
        f"loaded {counts['users']:,} users and {counts['restaurants']:,} restaurants into "
        f"namespace {meta['namespace']} in {meta['load_seconds']:.1f} s "
        f"(read parquet {meta['read_seconds']:.1f} s); pointer switched"
    )
    if meta["pruned"]:
        print(f"deleted old namespaces: {', '.join(meta['pruned'])}")
    where = f"{len(client.get_primaries())} cluster masters" if is_cluster(client) else "redis"
    print(f"{where} used_memory {memory / 2**20:.1f} MiB")
    return 0


def _features_set(args: argparse.Namespace) -> int:
    import redis

    from mlsys.errors import MlsysError
    from mlsys.recommender.serving.entity_updates import set_restaurant, set_user

    values = None
    if args.features is not None:
        try:
            values = [float(v) for v in args.features.split(",")]
        except ValueError as exc:
            raise MlsysError(f"--features: {exc}") from exc
    client = _redis(args.redis)
    try:
        if args.entity == "user":
            if values is None or args.latitude is not None or args.longitude is not None:
                raise MlsysError("a user update takes --features (30 values) and nothing else")
            key = set_user(client, args.entity_id, values, create=args.create)
        else:
            key = set_restaurant(
                client, args.entity_id, values, args.latitude, args.longitude, create=args.create
            )
    except redis.RedisError as exc:
        raise MlsysError(f"redis at {args.redis}: {exc}") from exc
    print(f"updated {key}")
    return 0


def _features_info(args: argparse.Namespace) -> int:
    import json

    import redis

    from mlsys.errors import MlsysError
    from mlsys.recommender.serving.online_store import read_meta

    try:
        meta = read_meta(_redis(args.redis))
    except redis.RedisError as exc:
        raise MlsysError(f"redis at {args.redis}: {exc}") from exc
    if meta is None:
        raise MlsysError("the online store is empty: run `mlsys features load` first")
    print(json.dumps(meta, indent=2))
    return 0


def _add_train_commands(verbs: Verbs) -> None:
    """`mlsys train|evaluate ranknet` and `mlsys bench train` (issue 3: train out of core)."""
    p = verbs.add("train", "ranknet", _train_ranknet, "train RankNet, streaming the click files")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model.pt, model.json, ...")
    p.add_argument("--epochs", type=C.count(1), default=5)
    p.add_argument("--batch-size", type=C.count(1), default=1024)
    p.add_argument(
        "--lr",
        type=C.positive,
        default=1e-8,
        help="Adam's learning rate (default: the task's 1e-8, which binds its benchmark; a "
        "retraining job may choose another, e.g. a challenger at 1e-3)",
    )
    p.add_argument(
        "--threads",
        type=C.count(0),
        default=0,
        help="torch threads (default: cores - 2, at least 1; see docs/training-report.md)",
    )
    p.add_argument("--seed", type=C.count(0), default=0, help="init and shuffle seed")
    p.add_argument("--no-shuffle", action="store_true", help="read rows in file order")
    p.add_argument(
        "--limit-rows", type=C.count(1), default=None, help="use the first N rows per epoch"
    )
    p.add_argument("--init-from", default=None, metavar="MODEL", help="warm start from an artifact")
    p.add_argument("--resume", action="store_true", help="continue from MODEL_DIR/checkpoint.pt")
    p.add_argument(
        "--nproc", type=C.count(1), default=1, metavar="N",
        help="data-parallel ranks on this machine (torch.distributed, gloo); each steps on "
        "1/N of every batch of --batch-size rows (across machines: torchrun)",
    )  # fmt: skip
    p.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--no-track",
        action="store_true",
        help="do not log the run to MLflow ($MLFLOW_TRACKING_URI)",
    )

    p = verbs.add("evaluate", "ranknet", _evaluate_ranknet, "evaluate a RankNet on the test split")
    p.add_argument("model", metavar="MODEL_DIR", help="a model directory or a bare kit model.pt")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--out", default=None, help="output folder (default: next to the model)")
    p.add_argument(
        "--threads", type=C.count(0), default=0, help="torch threads (default as training)"
    )
    p.add_argument("--limit-rows", type=C.count(1), default=None)
    p.add_argument("--no-progress", action="store_true")


def _train_ranknet(args: argparse.Namespace) -> int:
    from mlsys.recommender.training.distributed import from_env, launch

    if args.nproc > 1:
        launch(args.nproc, _train_rank, args)
        return 0
    _train_rank(from_env(), args)  # one process, or one rank that torchrun started
    return 0


def _train_rank(ranks: Any, args: argparse.Namespace) -> None:
    """One rank of `mlsys train ranknet` (rank 0 of 1 without --nproc or torchrun)."""
    from mlsys.platform.tracking import tracked_run, tracking_uri
    from mlsys.recommender.training.train import TrainConfig, train

    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        shuffle=not args.no_shuffle,
        limit_rows=args.limit_rows,
    )
    with tracked_run("ranknet", enabled=ranks.is_main and not args.no_track) as run:
        train(
            args.data_dir,
            args.out,
            config,
            init_from=args.init_from,
            resume=args.resume,
            progress=not args.no_progress,
            evaluate_test=not args.no_eval,
            run=run,
            ranks=ranks,
        )
    if run.enabled:
        print(f"tracked as MLflow run {run.run_id} at {tracking_uri()}")


def _evaluate_ranknet(args: argparse.Namespace) -> int:
    from mlsys.recommender.training.evaluate import evaluate, format_report

    report = evaluate(
        args.model,
        args.data_dir,
        out_dir=args.out,
        threads=args.threads,
        limit_rows=args.limit_rows,
        progress=not args.no_progress,
    )
    print(format_report(report))
    return 0
