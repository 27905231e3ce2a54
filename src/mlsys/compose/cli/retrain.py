"""`mlsys data from-log` and `mlsys retrain ranknet` (work in `recommender/online/log_data.py`
and `compose/retrain.py`).

    mlsys data from-log LOG_DIR OUT_DIR --features DATA_DIR --window MIN [--holdout 0.2]
    mlsys retrain ranknet --from models:/ranknet@champion --data DIR --out DIR
                          [--epochs 2 --lr 1e-4 --ips --force --json]
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from mlsys.compose.cli import checks as C
from mlsys.compose.retrain import retrain

if TYPE_CHECKING:
    from mlsys.cli import Verbs


def add_commands(verbs: Verbs) -> None:
    p = verbs.add("data", "from-log", _from_log, "join exported impressions with their clicks")
    p.add_argument("log_dir", metavar="LOG_DIR", help="what `mlsys log export` wrote")
    p.add_argument("out", metavar="OUT_DIR")
    p.add_argument("--features", required=True, metavar="DATA_DIR",
                   help="the dataset whose feature tables were served")  # fmt: skip
    p.add_argument("--window", type=C.positive, default=30.0, metavar="MIN",
                   help="a click counts if it came within MIN minutes of its answer")  # fmt: skip
    p.add_argument("--holdout", type=C.share, default=0.2,
                   help="the latest share of answers, held out for the gate")  # fmt: skip
    p.add_argument(
        "--since-ms",
        type=C.count(0),
        default=None,
        metavar="MS",
        help="only answers from this time on (epoch ms, as the log stores it)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = verbs.add("retrain", "ranknet", _retrain, "warm-start from a model, gate, register")
    p.add_argument(
        "--from",
        dest="source",
        default="models:/ranknet@champion",
        metavar="MODEL",
        help="folder or models:/NAME@ALIAS (default models:/ranknet@champion)",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="from `mlsys data from-log`")
    p.add_argument("--out", required=True, metavar="MODEL_DIR")
    p.add_argument("--name", default="ranknet", help="registered model name")
    p.add_argument("--epochs", type=C.count(1), default=2)
    p.add_argument(
        "--lr", type=C.positive, default=1e-4, help="Adam's learning rate for the fine-tune"
    )
    p.add_argument("--seed", type=C.count(0), default=0)
    p.add_argument("--ips", action="store_true",
                   help="the gate weights clicks by 1 / propensity (position bias)")  # fmt: skip
    p.add_argument(
        "--force",
        action="store_true",
        help="make it challenger even if the gate refuses (recorded as forced)",
    )
    p.add_argument("--no-register", action="store_true", help="gate only; register nothing")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _from_log(args: argparse.Namespace) -> int:
    from mlsys.recommender.online.log_data import build, describe

    report = build(args.log_dir, args.features, args.out, window_s=args.window * 60,
                   holdout=args.holdout, since_ms=args.since_ms)  # fmt: skip
    print(json.dumps(report) if args.json else describe(report) + f"\nwrote {args.out}")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    done = retrain(
        args.source, args.data, args.out, name=args.name, epochs=args.epochs, lr=args.lr,
        seed=args.seed, ips=args.ips, force=args.force, register=not args.no_register,
        progress=not args.json, log=(lambda _: None) if args.json else print,
    )  # fmt: skip
    if args.json:
        print(json.dumps(done.summary()))
    return 0 if done.verdict.passed or args.force else 3
