"""`mlsys pipeline run|status|stop|force` (work in `compose/pipeline.py` and
`compose/pipeline_state.py`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from mlsys.compose.cli import checks as C
from mlsys.compose.pipeline_state import (
    FORCEABLE,
    STEPS,
    Control,
    Force,
    Outcome,
    PipelineConfig,
    Step,
)
from mlsys.errors import MlsysError
from mlsys.platform.settings import LOG_REDIS_HELP, log_redis_url_from_env

if TYPE_CHECKING:
    from mlsys.cli import Verbs


def add_commands(verbs: Verbs) -> None:
    p = verbs.add("pipeline", "run", _run, "run the retraining loop (resumes where it stopped)")
    p.add_argument("name", metavar="NAME", help="registered model name, e.g. ranknet")
    p.add_argument("--features", required=True, metavar="DATA_DIR",
                   help="the dataset whose feature tables are served")  # fmt: skip
    p.add_argument("--workdir", required=True, metavar="DIR")
    p.add_argument("--redis", default=log_redis_url_from_env(), metavar="URL", help=LOG_REDIS_HELP)
    defaults = PipelineConfig("", "", "", "")
    p.add_argument("--trigger", choices=("drift", "now"), default=defaults.trigger)
    p.add_argument(
        "--since-ms",
        type=C.count(0),
        default=None,
        metavar="MS",
        help="with --trigger now: learn from answers since then (epoch ms)",
    )
    p.add_argument("--drift-window", type=C.count(1), default=None, metavar="ANSWERS")
    p.add_argument("--drift-settle", type=C.non_negative, default=None, metavar="S")
    p.add_argument("--window", type=C.positive, default=defaults.window_min, metavar="MIN",
                   help="a click counts if it came within MIN minutes of its answer")  # fmt: skip
    p.add_argument("--holdout", type=C.share, default=defaults.holdout)
    p.add_argument(
        "--min-answers",
        type=C.count(0),
        default=defaults.min_answers,
        metavar="N",
        help="wait for N labelled answers since the trigger before training",
    )
    p.add_argument("--epochs", type=C.count(1), default=defaults.epochs)
    p.add_argument("--lr", type=C.positive, default=defaults.lr)
    p.add_argument("--ips", action="store_true", help="the gate weights clicks by position")
    p.add_argument("--shadow-answers", type=C.count(1), default=defaults.shadow_answers)
    p.add_argument("--canary-percent", type=C.percent, default=defaults.canary_percent)
    p.add_argument("--canary-answers", type=C.count(1), default=defaults.canary_answers)
    p.add_argument("--max-p95-ms", type=C.finite, default=defaults.max_p95_ms,
                   help="guardrail: challenger p95 over the champion's (ms)")  # fmt: skip
    p.add_argument("--max-error-rate", type=C.share, default=defaults.max_error_rate)
    p.add_argument("--poll", type=C.positive, default=defaults.poll_s, metavar="S")
    p.add_argument("--step-timeout", type=C.positive, default=defaults.step_timeout_s, metavar="S")

    p = verbs.add("pipeline", "status", _status, "show the loop's steps and events")
    p.add_argument("--workdir", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = verbs.add("pipeline", "stop", _stop, "stop the loop at its next check")
    p.add_argument("--workdir", required=True, metavar="DIR")

    p = verbs.add("pipeline", "force", _force, "end a step's wait now with pass (or --fail)")
    p.add_argument("step", choices=[str(s) for s in FORCEABLE])
    p.add_argument("--workdir", required=True, metavar="DIR")
    p.add_argument("--fail", action="store_true", help="fail the step instead (rolls back)")


def config_from(args: argparse.Namespace) -> PipelineConfig:
    return PipelineConfig(
        name=args.name, features=args.features, workdir=args.workdir, log_redis=args.redis,
        trigger=args.trigger, since_ms=args.since_ms, drift_window=args.drift_window,
        drift_settle_s=args.drift_settle,
        window_min=args.window, holdout=args.holdout, min_answers=args.min_answers,
        epochs=args.epochs, lr=args.lr,
        ips=args.ips, shadow_answers=args.shadow_answers, canary_percent=args.canary_percent,
        canary_answers=args.canary_answers, max_p95_ms=args.max_p95_ms,
        max_error_rate=args.max_error_rate, poll_s=args.poll, step_timeout_s=args.step_timeout,
    )  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    from mlsys.compose.experiments import log_client
    from mlsys.compose.pipeline import Pipeline

    config = config_from(args)
    outcome = Pipeline(config, log_client(config.log_redis)).run()
    print(f"pipeline {config.name}: {outcome}")
    return 0 if outcome is Outcome.PROMOTED else 3


def _status(args: argparse.Namespace) -> int:
    from mlsys.compose.pipeline_state import PipelineState

    folder = Path(args.workdir)
    state = PipelineState.read(folder)
    if state is None:
        raise MlsysError(f"{folder}: no pipeline has run here")
    if args.json:
        print(json.dumps(state.to_json(), default=str))
        return 0
    why = f" ({state.reason})" if state.reason else ""
    print(f"pipeline {state.name}: {state.outcome or 'running'}{why}")
    for step in STEPS:
        entry = state.steps.get(step)
        status = "-" if entry is None else str(entry.status)
        seconds = f" {entry.seconds:.0f} s" if entry and entry.seconds is not None else ""
        print(f"  {step:8s} {status}{seconds}")
    control = Control.read(folder)
    if control.stop or control.force:
        print(f"  control: {json.dumps(control.to_json())}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from mlsys.compose.pipeline_state import request_stop

    request_stop(args.workdir)
    print("stop requested")
    return 0


def _force(args: argparse.Namespace) -> int:
    from mlsys.compose.pipeline_state import force_step

    decision = Force.FAIL if args.fail else Force.PASS
    force_step(args.workdir, Step(args.step), decision)
    print(f"{args.step} forced to {decision}")
    return 0
