"""`mlsys rollout`, `mlsys log export`, `mlsys simulate users`, `mlsys experiment report`
(work in `compose/experiments.py` and `recommender/online/`).

Every command that reaches the running system's Redis takes `--redis URL`, defaulting to
MLSYS_LOG_REDIS_URL, else MLSYS_REDIS_URL, as the server falls back (the log and the rollout
state live in the log's Redis). `--json` prints one JSON object for scripts.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from mlsys.compose.cli import checks as C
from mlsys.platform.rollout import MODES
from mlsys.platform.settings import LOG_REDIS_HELP, log_redis_url_from_env

if TYPE_CHECKING:
    from mlsys.cli import Verbs


def add_commands(verbs: Verbs) -> None:
    for mode in (*MODES, "stop", "status"):
        helps = {
            "shadow": "score every request with the challenger too; answer with the champion",
            "canary": "send a small share of users (default 5%%) to the challenger",
            "ab": "split users between champion and challenger (default 50%%)",
            "interleave": "merge both rankings in every answer (team draft)",
            "stop": "end the rollout: the champion answers everything",
            "status": "show the rollout state and its history",
        }
        p = verbs.add("rollout", mode, _rollout, helps[mode])
        p.add_argument("name", metavar="NAME", help="registered model name, e.g. ranknet")
        p.add_argument("--redis", default=log_redis_url_from_env(), metavar="URL",
                       help=LOG_REDIS_HELP)  # fmt: skip
        if mode in MODES:
            p.add_argument("--challenger", default="challenger", metavar="ALIAS")
            share = "shadow, interleave: share of requests; canary, ab: share of users"
            p.add_argument("--percent", type=C.percent, default=None, metavar="P", help=share)
            p.add_argument("--max-p95-ms", type=C.finite, default=5.0,
                           help="guardrail: challenger p95 over the champion's (ms)")  # fmt: skip
            p.add_argument("--max-error-rate", type=C.share, default=0.01,
                           help="guardrail: challenger error rate over the champion's")  # fmt: skip
        p.set_defaults(mode=mode)

    p = verbs.add("log", "export", _export, "write the impression and click log to parquet")
    p.add_argument("out", metavar="OUT_DIR")
    p.add_argument("--redis", default=log_redis_url_from_env(), metavar="URL", help=LOG_REDIS_HELP)
    p.add_argument("--batch", type=C.count(1), default=50_000, help="entries per parquet part")
    p.add_argument("--no-trim", action="store_true",
                   help="keep exported entries in the streams")  # fmt: skip

    p = verbs.add("simulate", "users", _simulate, "replay users who click by the true rule")
    p.add_argument("url", metavar="URL", help="the API, e.g. http://127.0.0.1:8000")
    p.add_argument("--data", required=True, metavar="DATA_DIR", help="the generated dataset")
    p.add_argument("--rate", type=C.positive, default=30.0, help="requests per second")
    p.add_argument("--duration", type=C.positive, default=60.0, help="seconds")
    p.add_argument("--seed", type=C.count(0), default=0)
    p.add_argument("--timeout", type=C.positive, default=5.0, help="seconds per HTTP request")
    p.add_argument("--new-user-share", type=C.share, default=0.0, metavar="SHARE",
                   help="share of requests from users the store never saw (each with the taste "
                   "of the request's own user); their true CTR is reported apart")  # fmt: skip
    p.add_argument("--no-candidates", action="store_true",
                   help="send no candidate lists (the API retrieves what is in reach)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = verbs.add("experiment", "report", _report, "analyse an online experiment")
    p.add_argument("name", metavar="NAME", help="registered model name")
    p.add_argument("--experiment", default=None, help="experiment id (default: current or last)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="for report.json/.md and ctr.png (default experiments/ID)")  # fmt: skip
    p.add_argument("--log", default=None, metavar="DIR",
                   help="an export folder to read before the streams")  # fmt: skip
    p.add_argument("--redis", default=log_redis_url_from_env(), metavar="URL", help=LOG_REDIS_HELP)
    p.add_argument("--n-opt", type=C.positive, default=None, metavar="N",
                   help="where the always-valid intervals are tightest (default by mode: "
                   "2000 for A/B and canary, 200 for interleaving)")  # fmt: skip
    p.add_argument("--enforce", action="store_true",
                   help="stop the rollout when a guardrail fails")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _rollout(args: argparse.Namespace) -> int:
    from mlsys.compose.experiments import log_client, start_rollout
    from mlsys.platform.rollout import Guardrails, Mode, RolloutStore

    client = log_client(args.redis)
    store = RolloutStore(client)
    if args.mode == "status":
        state = store.get(args.name)
        print(json.dumps({"state": None if state is None else json.loads(state.to_json()),
                          "history": store.history(args.name)[-10:]}, indent=2))  # fmt: skip
        return 0
    if args.mode == "stop":
        from mlsys.compose.experiments import stop_rollout

        old = stop_rollout(client, args.name)
        print(f"{args.name}: rollout stopped" + (f" (was {old.experiment})" if old else ""))
        return 0
    started = start_rollout(
        client, args.name, Mode(args.mode), args.challenger, args.percent,
        Guardrails(args.max_p95_ms, args.max_error_rate),
    )  # fmt: skip
    state = started.state
    if started.champion_version == started.challenger_version:
        print(f"note: {args.challenger} and champion are the same version "
              f"({started.champion_version})")  # fmt: skip
    print(
        f"{args.name}: {state.mode} {state.percent:g}%, challenger {args.challenger} "
        f"(version {started.challenger_version}) vs champion (version "
        f"{started.champion_version}); experiment {state.experiment}. Workers apply it within "
        "about a second once the challenger loads."
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from mlsys.compose.experiments import export_log, log_client

    written = export_log(log_client(args.redis), args.out, batch=args.batch,
                         trim=not args.no_trim)  # fmt: skip
    for name, rows in written.items():
        print(f"{name}: {rows} rows")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from mlsys.recommender.online.simulate import print_summary, simulate

    result = simulate(
        args.url, args.data, args.rate, args.duration, args.seed, args.timeout,
        new_user_share=args.new_user_share, candidates=not args.no_candidates,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        print_summary(result)
    return 0


def _report(args: argparse.Namespace) -> int:
    from mlsys.compose.experiments import log_client, report_experiment

    done = report_experiment(
        log_client(args.redis), args.name, args.experiment, args.out, log_dir=args.log,
        n_opt=args.n_opt, enforce=args.enforce,
    )  # fmt: skip
    if args.json:
        print(json.dumps(done.report.to_json()))
        return 0
    print((done.out / "report.md").read_text())
    if done.stopped:
        print(f"guardrail failed: rollout of {args.name} stopped")
    print(f"written to {done.out}/report.json, report.md, ctr.png")
    return 0
