"""`mlsys demo`, `mlsys serve` and `mlsys loadtest`: the commands that span domains (work in
`compose/demo.py`, `platform/server.py` with `compose/app.py`, and `compose/loadtest.py`)."""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import TYPE_CHECKING

from mlsys.compose.cli import checks as C
from mlsys.platform.settings import REDIS_HELP, Settings, redis_url_from_env

if TYPE_CHECKING:
    from mlsys.cli import Verbs


def add_commands(verbs: Verbs) -> None:
    demo = verbs.add_verb("demo", _demo)
    demo.add_argument("--workdir", default=".demo", help="where the demo writes (default .demo)")
    demo.add_argument(
        "--scale",
        choices=("full", "small"),
        default="full",
        help="full: the task's 50M rows, about 10 min; small: under 2 min",
    )
    _add_serving_commands(verbs)


def _demo(args: argparse.Namespace) -> int:
    from mlsys.compose.demo import run_demo

    return run_demo(args.workdir, args.scale)


def _add_serving_commands(verbs: Verbs) -> None:
    """`mlsys serve` (server.py) and `mlsys loadtest` (loadtest.py)."""
    p = verbs.add_verb("serve", _serve)
    p.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="RankNet: a model dir, a model.pt, or models:/ranknet@champion (followed)",
    )
    p.add_argument("--redis", default=redis_url_from_env(), metavar="URL", help=REDIS_HELP)
    p.add_argument(
        "--log-redis",
        default=os.environ.get("MLSYS_LOG_REDIS_URL") or None,
        metavar="URL",
        help="the impression log's and rollout state's Redis (default: $MLSYS_LOG_REDIS_URL, "
        "else --redis; run it with an append-only file)",
    )
    p.add_argument(
        "--no-impressions", action="store_true",
        help="do not log impressions or tag answers (no /feedback, no drift monitoring)",
    )  # fmt: skip
    p.add_argument(
        "--monitor-sample", type=C.share, default=1.0, metavar="SHARE",
        help="share of logged /recommend answers that carry a scored row for the drift "
        "monitor (default 1: every answer, ~0.4 KB)",
    )  # fmt: skip
    p.add_argument(
        "--first-stage-k", type=C.count(0), default=Settings.first_stage_k, metavar="K",
        help="with more restaurants in reach, a cheap first stage keeps the best K (at least "
        "the request's size) for the full model; 0 scores all (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=C.count(0), default=8000)
    p.add_argument(
        "--workers", type=C.count(1), default=None, help="processes (default: all cores)"
    )
    p.add_argument(
        "--tagger-model",
        default=None,
        metavar="MODEL",
        help="also serve POST /tag: a garment-tagger dir or models:/garment-tagger@champion",
    )
    p.add_argument(
        "--model-refresh",
        type=C.positive,
        default=Settings.model_refresh_s,
        metavar="SECONDS",
        help="how often each worker re-resolves a models:/ alias (default %(default)s)",
    )
    p.add_argument(
        "--redis-timeout",
        type=C.positive,
        default=Settings.redis_timeout_s,
        metavar="SECONDS",
        help="Redis connect/read timeout; past it a request gets 503",
    )
    p.add_argument("--max-body-bytes", type=C.count(1), default=Settings.max_body_bytes)
    p.add_argument("--no-access-log", action="store_true", help="no JSON line per request")
    p.add_argument(
        "--header-timeout",
        type=C.positive,
        default=Settings.header_timeout_s,
        metavar="SECONDS",
        help="close a connection whose request headers take longer (default %(default)s)",
    )
    p.add_argument(
        "--body-timeout",
        type=C.positive,
        default=Settings.body_timeout_s,
        metavar="SECONDS",
        help="answer 408 when a request body takes longer (default %(default)s)",
    )
    p.add_argument(
        "--max-connections",
        type=C.count(1),
        default=Settings.max_connections,
        metavar="N",
        help="per worker: close new connections beyond N open ones (default %(default)s)",
    )
    p.add_argument(
        "--limit-concurrency",
        type=C.count(1),
        default=None,
        metavar="N",
        help="per worker: answer 503 at once beyond N connections+requests (load shedding)",
    )

    p = verbs.add(
        "bench",
        "serve",
        _bench_serve,
        "this tree's API against another revision's, side by side: capacity ratio",
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="the dataset whose features are served")
    p.add_argument("--model", required=True, metavar="MODEL_DIR")
    p.add_argument(
        "--against",
        required=True,
        metavar="REV",
        help="a git revision, or . for this tree (with other --against-flags)",
    )
    p.add_argument("--flags", default="--log-redis {log_redis}",
                   help="this tree's `mlsys serve` options (default: %(default)s; {log_redis} "
                   "is a fresh append-only Redis)")  # fmt: skip
    p.add_argument("--against-flags", default="", help="the other's options (default none)")
    p.add_argument("--rates", default="30,100,200,300,400,500,600",
                   help="requests per second, in turn (default %(default)s)")  # fmt: skip
    p.add_argument("--duration", type=C.positive, default=20.0, help="seconds per run")
    p.add_argument("--workers", type=C.count(1), default=2)
    p.add_argument("--workdir", default=None, help="where the worktree and servers live")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = verbs.add_verb("loadtest", _loadtest)
    p.add_argument("url", metavar="URL", help="the API base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--requests", required=True, metavar="PARQUET", help="requests.parquet")
    p.add_argument("--no-candidates", action="store_true",
                   help="send each request without its candidate list (retrieval)")  # fmt: skip
    p.add_argument("--rate", type=C.positive, default=30.0, help="requests per second (open model)")
    p.add_argument(
        "--duration", type=C.positive, default=60.0, help="seconds per run or sweep step"
    )
    p.add_argument("--timeout", type=C.positive, default=5.0, help="seconds before a request fails")
    p.add_argument("--out", default="perf_test/results", help="folder for JSON and PNG")
    p.add_argument("--name", default=None, help="file stem (default loadtest-<rate>rps)")
    p.add_argument(
        "--sweep",
        action="store_true",
        help="raise the rate step by step; report the highest with p95<100ms, no errors",
    )
    p.add_argument(
        "--rates",
        default=None,
        help="comma-separated sweep rates (default 50,100,200,300,400,500,...)",
    )


def _serve(args: argparse.Namespace) -> int:

    from mlsys.compose.app import FACTORY
    from mlsys.compose.models import model_source
    from mlsys.platform.server import serve

    model = model_source(args.model, "model.pt", "train one with `mlsys train ranknet`")
    tagger = (
        None
        if args.tagger_model is None
        else model_source(args.tagger_model, "tagger.json", "train one with `mlsys train tagger`")
    )
    settings = serve_settings(args, model, tagger)
    workers = args.workers or os.cpu_count() or 1
    print(
        f"serving on http://{args.host}:{args.port} with {workers} workers "
        f"(model {model}, redis {args.redis})",
        flush=True,
    )
    serve(
        settings,
        factory=FACTORY,
        host=args.host,
        port=args.port,
        workers=workers,
        limit_concurrency=args.limit_concurrency,
    )
    return 0


def serve_settings(args: argparse.Namespace, model: str, tagger: str | None) -> Settings:
    """Settings without a flag (log_stream_mb, spool_dir, ...) come from the environment
    (MLSYS_*, as docker-compose and the Kubernetes ConfigMap set them); flags override."""
    import dataclasses

    return dataclasses.replace(
        Settings.from_env(),
        model_dir=model,
        redis_url=args.redis,
        redis_timeout_s=args.redis_timeout,
        max_body_bytes=args.max_body_bytes,
        tagger_model_dir=tagger,
        log_requests=not args.no_access_log,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        max_connections=args.max_connections,
        model_refresh_s=args.model_refresh,
        log_redis_url=args.log_redis,
        log_impressions=not args.no_impressions,
        monitor_sample=args.monitor_sample,
        first_stage_k=args.first_stage_k,
    )


def _loadtest(args: argparse.Namespace) -> int:
    from mlsys.compose.loadtest import main

    return main(args)


def _bench_serve(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import tempfile

    from mlsys.compose.bench_serve import THIS_TREE, Variant, bench_serve, table
    from mlsys.errors import MlsysError

    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError as exc:
        raise MlsysError(f"--rates: {exc}") from exc
    variants = [
        Variant("this", THIS_TREE, args.flags),
        Variant("against", args.against, args.against_flags),
    ]
    with contextlib.ExitStack() as stack:
        work = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-"))
        sweeps = bench_serve(
            args.data_dir,
            args.model,
            variants,
            rates,
            args.duration,
            work,
            workers=args.workers,
            say=(lambda _: None) if args.json else print,
        )
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "variant": dataclasses.asdict(s.variant),
                        "capacity": s.capacity,
                        "runs": [dataclasses.asdict(r) for r in s.runs],
                    }
                    for s in sweeps
                ]
            )
        )
        return 0
    print(table(sweeps))
    return 0
