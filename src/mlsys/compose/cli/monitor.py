"""`mlsys monitor drift NAME` (a report), `mlsys monitor run NAME` (windows judged as they
arrive, exported as Prometheus gauges) and `mlsys monitor reference` (work in
`compose/drift_watch.py`)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mlsys.compose.cli import checks as C
from mlsys.platform.settings import LOG_REDIS_HELP, log_redis_url_from_env

if TYPE_CHECKING:
    from mlsys.cli import Verbs

MONITOR_PORT = 9108


def add_commands(verbs: Verbs) -> None:
    # The defaults live with each domain's monitor (recommender/online/drift_monitor.py,
    # tagger/online/drift_monitor.py) and are resolved in the handlers: importing those here
    # would load numpy and torch for `mlsys --help`.
    parsers = {}
    for noun, handler, text in (
        ("drift", _drift, "judge a model's logged traffic against its training reference"),
        ("run", _run, "judge windows as they arrive; export Prometheus gauges"),
    ):
        p = parsers[noun] = verbs.add("monitor", noun, handler, text)
        p.add_argument("name", metavar="NAME", help="registered model name, e.g. ranknet")
        p.add_argument("--redis", default=log_redis_url_from_env(), metavar="URL",
                       help=LOG_REDIS_HELP)  # fmt: skip
        p.add_argument("--window", type=C.count(1), default=None, metavar="N",
                       help="answers per window (default: 500 for a recommender, 200 for a "
                       "tagger)")  # fmt: skip
        p.add_argument("--settle", type=C.non_negative, default=None, metavar="S",
                       help="judge a recommender window once its last answer is S seconds "
                       "old, so that its clicks are in (default 60)")  # fmt: skip
        p.add_argument("--reference", default=None, metavar="DIR",
                       help="the model folder whose reference.parquet to use (default: the "
                       "registered version's)")  # fmt: skip
    p = parsers["drift"]
    p.add_argument("--version", default=None,
                   help="the version to judge, as in X-Model-Version (default: the latest "
                   "answering one)")  # fmt: skip
    p.add_argument("--log", default=None, metavar="DIR",
                   help="also read the parquet parts of `mlsys log export DIR`")  # fmt: skip
    p.add_argument("--out", default=None, metavar="DIR",
                   help="report folder (default monitoring/VERSION)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = verbs.add("monitor", "reference", _reference,
                  "write a model folder's reference profile (training does it too)")  # fmt: skip
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("data_dir", metavar="DATA_DIR", help="the data the model was trained on")

    p = parsers["run"]
    p.add_argument("--port", type=C.count(0), default=MONITOR_PORT, help="Prometheus scrape port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--every", type=C.positive, default=10.0, metavar="S", help="seconds between reads"
    )
    p.add_argument("--once", action="store_true", help="one pass, print the gauges, exit")


def _reference(args: argparse.Namespace) -> int:
    from mlsys.compose.drift_watch import write_reference

    started = time.perf_counter()
    path = write_reference(args.model_dir, args.data_dir)
    print(f"wrote {path} in {time.perf_counter() - started:.1f} s")
    return 0


def _drift(args: argparse.Namespace) -> int:
    from mlsys.compose.drift_watch import judge_drift
    from mlsys.compose.experiments import log_client
    from mlsys.platform.drift_report import summary, write_report

    judged = judge_drift(
        log_client(args.redis), args.name, window=args.window, settle=args.settle,
        log_dir=args.log, version=args.version, reference=args.reference,
    )  # fmt: skip
    result = summary(args.name, judged.version, judged.window, judged.windows)
    out = Path(args.out or f"monitoring/{judged.version.replace('/', '-')}")
    write_report(result, judged.reference, judged.live, out)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    print((out / "report.md").read_text().split("\n\nLatest window")[0])
    print(f"written to {out}/report.json, report.md, drift.png")
    return 0


def _run(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server

    from mlsys.compose.drift_watch import Watcher
    from mlsys.compose.experiments import log_client

    registry = CollectorRegistry()
    watcher = Watcher(args.name, args.window, args.settle, args.reference, registry)
    client = log_client(args.redis)
    if args.once:
        watcher.tick(client)
        print(generate_latest(registry).decode(), end="")
        return 0
    start_http_server(args.port, addr=args.host, registry=registry)
    print(f"monitoring {args.name}: gauges on http://{args.host}:{args.port}/metrics",
          flush=True)  # fmt: skip
    while True:
        began = time.monotonic()
        for line in watcher.tick(client):
            print(line, flush=True)
        time.sleep(max(0.0, args.every - (time.monotonic() - began)))
