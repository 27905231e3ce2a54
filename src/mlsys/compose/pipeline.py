"""`mlsys pipeline run NAME`: continuous training that closes the loop, in one process.

    trigger -> export -> data -> retrain (gate) -> shadow -> canary -> promote
                                      |              |         |
                                   refused       rolled back  rolled back

- **trigger**: a drift alarm of the served version (`mlsys monitor drift`'s verdict), or
  `--trigger now` (a schedule is cron running exactly that). The alarm's first drifted window
  marks where the new world starts: the data step keeps answers from then on.
- **export**: the log's streams to parquet (`mlsys log export`, incremental, not trimmed, so
  the monitor and the experiment reports keep reading the streams).
- **data**: exports again until `--min-answers` answers since the trigger are labelled (older
  than the waiting window), then `mlsys data from-log`.
- **retrain**: `mlsys retrain ranknet` from `models:/NAME@champion`: warm start, MLflow run,
  the gate; the candidate is registered either way, and only a blessed one becomes challenger.
- **shadow**: the challenger scores every request beside the champion, off the critical path,
  until `--shadow-answers`. It must have scored at least half of them (it loads and answers);
  its agreement with the champion and its scoring time are recorded. Latency is judged in the
  canary, where both arms' answers are timed the same way.
- **canary**: `--canary-percent` of users get the challenger until it has answered
  `--canary-answers` times. Rolled back at once when a guardrail breaks (p95 latency or error
  rate over the champion's, the sample ratio off) or the challenger's CTR is significantly
  worse; at the end, also when its CTR falls below the champion's interval.
- **promote**: the rollout stops and the challenger becomes champion (the registry re-probes
  it first); every worker swaps it in within its refresh interval, without a failed request.

Every step is idempotent and recorded in WORKDIR/pipeline.json when it finishes, so `run`
again resumes after the last finished step (a rollout in progress is picked up, not
restarted). Every event goes to WORKDIR/events.jsonl and the terminal, and the whole run is
an MLflow run in the experiment `NAME-pipeline`. A person steers it from another terminal:

    mlsys pipeline status --workdir DIR
    mlsys pipeline stop --workdir DIR             stop at the next check; a rollout is stopped
    mlsys pipeline force STEP --workdir DIR [--fail]   end a step's wait with pass (or fail);
                                                  retrain, given before the gate judges: a
                                                  refused candidate becomes challenger (forced)

After a loop has ended (refused, rolled back), `mlsys models alias` and `mlsys rollout` are
the hand tools; a new `pipeline run` in a new workdir starts the loop again.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsys.errors import MlsysError

if TYPE_CHECKING:
    from mlsys.cli import Verbs

# A shadow's sampling is best effort (a busy worker skips it); below this the challenger is
# failing to load or to score, which the canary must not meet first.
SHADOW_COVERAGE = 0.5
STEPS = ("trigger", "export", "data", "retrain", "shadow", "canary", "promote")
STATE = "pipeline.json"
CONTROL = "control.json"
EVENTS = "events.jsonl"


@dataclass
class PipelineConfig:
    name: str
    features: str  # the dataset whose feature tables are served
    workdir: str
    log_redis: str
    trigger: str = "drift"  # or "now"
    since_ms: int | None = None  # with "now": learn from answers since then (default: all)
    drift_window: int | None = None  # answers per monitoring window (default: the monitor's)
    drift_settle_s: float | None = None
    window_min: float = 1.0  # the click-joining window
    holdout: float = 0.2
    min_answers: int = 0  # labelled answers since the trigger before training
    epochs: int = 2
    lr: float = 1e-4
    ips: bool = False
    shadow_answers: int = 300
    canary_percent: float = 20.0
    canary_answers: int = 300
    max_p95_ms: float = 5.0
    max_error_rate: float = 0.01
    poll_s: float = 2.0
    step_timeout_s: float = 1800.0


class Stopped(Exception):
    """A person asked the pipeline to stop."""


class Ended(Exception):
    """The loop ended before promotion: the gate refused, or a rollout was rolled back."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@dataclass
class Pipeline:
    config: PipelineConfig
    client: Any  # the log's Redis
    say: Callable[[str], None] = print
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return Path(self.config.workdir)

    # ------------------------------------------------------------------ the loop

    def run(self) -> str:
        """Runs the steps not finished yet; returns the outcome (promoted, refused,
        rolled_back, stopped)."""
        from mlsys.platform.tracking import tracked_run

        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = read_json(self.dir / STATE) or {
            "name": self.config.name, "config": asdict(self.config), "steps": {},
            "outcome": None, "started": time.time(),
        }  # fmt: skip
        control = read_json(self.dir / CONTROL) or {}
        if control.pop("stop", None):  # a stop is for the run it stopped; this one goes on
            write_json(self.dir / CONTROL, control)
        if self.state.get("outcome") == "stopped":
            self.event("pipeline", "resuming a stopped run")
            self.state["outcome"] = None
        elif self.state.get("outcome"):
            self.event("pipeline", "already ended", outcome=self.state["outcome"])
            return str(self.state["outcome"])
        with tracked_run(f"{self.config.name}-pipeline", run_name="pipeline") as run:
            run.log_params({k: v for k, v in asdict(self.config).items() if k != "log_redis"})
            outcome = self._steps()
            run.set_tags({"mlsys.pipeline.outcome": outcome,
                          **{f"mlsys.pipeline.{k}": json.dumps(v.get("detail", {}))[:5000]
                             for k, v in self.state["steps"].items()}})  # fmt: skip
        return outcome

    def _steps(self) -> str:
        try:
            for step in STEPS:
                if self.state["steps"].get(step, {}).get("status") == "done":
                    continue
                self.check_control(step)
                self.event(step, "start")
                started = time.time()
                detail = getattr(self, f"step_{step}")()
                self.state["steps"][step] = {"status": "done", "seconds": time.time() - started,
                                             "detail": detail}  # fmt: skip
                self.save()
                self.event(step, "done", **detail)
            outcome = "promoted"
        except Ended as end:
            self.state["reason"] = end.reason
            outcome = end.outcome
            self.event("pipeline", outcome, reason=end.reason)
        except Stopped:
            self.stop_rollout("stopped by a person")
            outcome = "stopped"
            self.event("pipeline", "stopped")
        self.state["outcome"] = outcome
        self.state["ended"] = time.time()
        self.save()
        return outcome

    # ------------------------------------------------------------------ steps

    def step_trigger(self) -> dict[str, Any]:
        if self.config.trigger == "now":
            return {"reason": "now", "since_ms": self.config.since_ms}
        if self.config.trigger != "drift":
            raise MlsysError(f"--trigger {self.config.trigger!r}: expected drift or now")
        from mlsys.compose.monitoring import recommender_windows
        from mlsys.platform.event_log import entry_key

        def alarm() -> dict[str, Any] | None:
            version, _, _, judged, _ = recommender_windows(
                self.client, self.config.name, window=self.config.drift_window,
                settle=self.config.drift_settle_s,
            )  # fmt: skip
            if not judged or not judged[-1]["drifted"]:
                return None
            run = judged[-1]
            for window in reversed(judged):  # the start of the trailing run of alarms
                if not window["drifted"]:
                    break
                run = window
            latest = judged[-1]
            return {
                "reason": "drift", "version": version, "window": latest["index"],
                "features": latest["features"], "outcome_drift": latest["outcome_drift"],
                "prediction_drift": latest["prediction_drift"],
                "since_ms": entry_key(run["first"])[0],
            }  # fmt: skip

        return self.wait("trigger", alarm, poll_s=max(self.config.poll_s, 5.0))

    def step_export(self) -> dict[str, Any]:
        from mlsys.platform.event_log import export
        from mlsys.recommender.impressions import schemas

        written = export(self.client, self.dir / "log", schemas(), trim=False)
        return {"rows": written}

    def step_data(self) -> dict[str, Any]:
        import shutil

        from mlsys.platform.event_log import export, read_parts
        from mlsys.recommender.impressions import schemas
        from mlsys.recommender.log_data import build

        since = self.state["steps"]["trigger"]["detail"].get("since_ms")
        window_ms = self.config.window_min * 60_000

        def enough() -> dict[str, Any] | None:
            """Exports again until `min_answers` answers since the trigger are labelled."""
            export(self.client, self.dir / "log", schemas(), trim=False)
            answers = read_parts(self.dir / "log" / "impressions")
            if answers is None:
                return None
            ts = answers["ts_ms"].to_numpy()
            settled = (ts >= (since or 0)) & (ts <= time.time() * 1000 - window_ms)
            count = int(settled.sum())
            return {"answers": count} if count >= max(self.config.min_answers, 1) else None

        self.wait("data", enough)
        out = self.dir / "data"
        if out.exists():  # a half-written folder from an interrupted run
            shutil.rmtree(out)
        report = build(self.dir / "log", self.config.features, out,
                       window_s=self.config.window_min * 60, holdout=self.config.holdout,
                       since_ms=since)  # fmt: skip
        return {"answers": report["answers"], "rows": report["rows"], "clicks": report["clicks"]}

    def step_retrain(self) -> dict[str, Any]:
        import shutil

        from mlsys.compose.retrain import retrain

        out = self.dir / "candidate"
        if out.exists():
            shutil.rmtree(out)
        done = retrain(
            f"models:/{self.config.name}@champion", self.dir / "data", out,
            name=self.config.name, epochs=self.config.epochs, lr=self.config.lr,
            ips=self.config.ips, force=self.forced("retrain") == "pass", progress=False,
            log=lambda line: self.event("retrain", line),
        )  # fmt: skip
        detail = {"version": done.version, "passed": done.verdict.passed, "forced": done.forced,
                  "reasons": done.verdict.reasons, "champion": done.verdict.champion,
                  "candidate": done.verdict.candidate}  # fmt: skip
        if not done.challenger:
            self.state["steps"]["retrain"] = {"status": "refused", "detail": detail}
            raise Ended("refused", f"the gate refused version {done.version}")
        return detail

    def step_shadow(self) -> dict[str, Any]:
        state = self.start_rollout("shadow", 100.0)

        def enough() -> dict[str, Any] | None:
            result = self.analyse(state, "shadow")
            shadow = result["shadow"]
            if shadow["scored"] < self.config.shadow_answers:
                return None
            detail = {"scored": shadow["scored"], "coverage": shadow["coverage"],
                      "p95_shadow_ms": shadow["p95_shadow_ms"],
                      "same_first": shadow["same_first"],
                      "overlap_at_10": shadow["overlap_at_10"]}  # fmt: skip
            if (shadow["coverage"] or 0.0) < SHADOW_COVERAGE:
                raise self.roll_back(
                    f"shadow: the challenger scored only {shadow['coverage']:.0%} of answers",
                    detail,
                )
            return detail

        return self.wait("shadow", enough)

    def step_canary(self) -> dict[str, Any]:
        state = self.start_rollout("canary", self.config.canary_percent)

        def verdict() -> dict[str, Any] | None:
            r = self.analyse(state, "canary")
            arms = r["arms"]
            champion, challenger = arms["champion"], arms["challenger"]
            detail = {"decision": r["decision"], "challenger": challenger, "champion": champion,
                      "guardrails": r["guardrails"], "srm_p": r["srm_p"]}  # fmt: skip
            broken = r["decision"] in ("stop: guardrail", "challenger worse") or str(
                r["decision"]
            ).startswith("check logging")
            if broken and challenger["impressions"] >= 50:  # a few answers to judge by
                raise self.roll_back(f"canary: {r['decision']}", detail)
            if challenger["impressions"] < self.config.canary_answers:
                return None
            if challenger["ctr"] < champion["ctr_interval"][0]:
                raise self.roll_back(
                    f"canary: CTR {challenger['ctr']:.3f} below the champion's interval "
                    f"[{champion['ctr_interval'][0]:.3f}, {champion['ctr_interval'][1]:.3f}]",
                    detail,
                )
            return detail

        return self.wait("canary", verdict)

    def step_promote(self) -> dict[str, Any]:
        from mlsys.compose.models import probe
        from mlsys.platform.registry import CHALLENGER, CHAMPION, Registry

        registry = Registry()
        self.stop_rollout("canary passed")
        challenger = registry.alias_target(self.config.name, CHALLENGER)
        champion = registry.alias_target(self.config.name, CHAMPION)
        if challenger is None and champion == self.state["steps"]["retrain"]["detail"]["version"]:
            return {"from": None, "to": champion, "note": "promoted before a restart"}
        old, new = registry.promote(self.config.name, "pipeline: canary passed", probe)
        return {"from": old, "to": new}

    # ------------------------------------------------------------------ helpers

    def wait(
        self, step: str, check: Callable[[], dict[str, Any] | None], poll_s: float | None = None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + self.config.step_timeout_s
        while True:
            self.check_control(step)
            forced = self.forced(step)
            if forced == "fail":
                raise self.roll_back(f"{step}: forced to fail by a person", {})
            result = check()
            if result is not None:
                return result
            if forced == "pass":
                return {"forced": "pass"}
            if time.monotonic() > deadline:
                raise self.roll_back(f"{step}: no decision in {self.config.step_timeout_s:g} s",
                                     {})  # fmt: skip
            time.sleep(poll_s or self.config.poll_s)

    def start_rollout(self, mode: str, percent: float) -> Any:
        from mlsys.platform.rollout import Guardrails, RolloutStore

        store = RolloutStore(self.client)
        current = store.get(self.config.name)
        if current is not None and current.mode == mode and current.challenger == "challenger":
            return current  # resumed: keep the experiment and every user's arm
        guard = Guardrails(self.config.max_p95_ms, self.config.max_error_rate)
        state = store.start(self.config.name, mode, "challenger", percent, guard)
        self.event(mode, "rollout started", experiment=state.experiment, percent=percent)
        return state

    def stop_rollout(self, why: str) -> None:
        from mlsys.platform.rollout import RolloutStore

        old = RolloutStore(self.client).stop(self.config.name)
        if old is not None:
            self.event(old.mode, "rollout stopped", experiment=old.experiment, why=why)

    def roll_back(self, reason: str, detail: dict[str, Any]) -> Ended:
        from mlsys.platform.registry import CHALLENGER, Registry

        self.stop_rollout(reason)
        registry = Registry()
        version = registry.alias_target(self.config.name, CHALLENGER)
        if version is not None:
            registry.tag_version(self.config.name, version, {"mlsys.pipeline.rolled_back": reason})
            registry.delete_alias(self.config.name, CHALLENGER, f"pipeline: {reason}")
        self.state.setdefault("rolled_back", {"reason": reason, "detail": detail})
        return Ended("rolled_back", reason)

    def analyse(self, state: Any, step: str) -> dict[str, Any]:
        from mlsys.recommender.experiment import report

        return report(self.client, state, self.dir / "experiments" / step)

    def check_control(self, step: str) -> None:
        control = read_json(self.dir / CONTROL) or {}
        if control.get("stop"):
            raise Stopped(step)

    def forced(self, step: str) -> str | None:
        control = read_json(self.dir / CONTROL) or {}
        value = control.get("force", {}).get(step)
        return None if value is None else str(value)

    def event(self, step: str, event: str, **detail: Any) -> None:
        record = {"at": time.time(), "step": step, "event": event, **detail}
        with (self.dir / EVENTS).open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")
        extra = ", ".join(f"{k}={v}" for k, v in detail.items() if k not in ("reasons",))
        self.say(f"[{time.strftime('%H:%M:%S')}] {step}: {event}" + (f" ({extra})" if extra
                                                                     else ""))  # fmt: skip

    def save(self) -> None:
        write_json(self.dir / STATE, self.state)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Atomically: a reader (`status`, a resumed run) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------- the CLI


def add_commands(verbs: Verbs) -> None:
    from mlsys.compose.experiments import LOG_REDIS_HELP
    from mlsys.platform.settings import log_redis_url_from_env

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
        type=int,
        default=None,
        metavar="MS",
        help="with --trigger now: learn from answers since then (epoch ms)",
    )
    p.add_argument("--drift-window", type=int, default=None, metavar="ANSWERS")
    p.add_argument("--drift-settle", type=float, default=None, metavar="S")
    p.add_argument("--window", type=float, default=defaults.window_min, metavar="MIN",
                   help="a click counts if it came within MIN minutes of its answer")  # fmt: skip
    p.add_argument("--holdout", type=float, default=defaults.holdout)
    p.add_argument(
        "--min-answers",
        type=int,
        default=defaults.min_answers,
        metavar="N",
        help="wait for N labelled answers since the trigger before training",
    )
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--ips", action="store_true", help="the gate weights clicks by position")
    p.add_argument("--shadow-answers", type=int, default=defaults.shadow_answers)
    p.add_argument("--canary-percent", type=float, default=defaults.canary_percent)
    p.add_argument("--canary-answers", type=int, default=defaults.canary_answers)
    p.add_argument("--max-p95-ms", type=float, default=defaults.max_p95_ms,
                   help="guardrail: challenger p95 over the champion's (ms)")  # fmt: skip
    p.add_argument("--max-error-rate", type=float, default=defaults.max_error_rate)
    p.add_argument("--poll", type=float, default=defaults.poll_s, metavar="S")
    p.add_argument("--step-timeout", type=float, default=defaults.step_timeout_s, metavar="S")

    p = verbs.add("pipeline", "status", _status, "show the loop's steps and events")
    p.add_argument("--workdir", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = verbs.add("pipeline", "stop", _stop, "stop the loop at its next check")
    p.add_argument("--workdir", required=True, metavar="DIR")

    p = verbs.add("pipeline", "force", _force, "end a step's wait now with pass (or --fail)")
    p.add_argument("step", choices=("trigger", "retrain", "shadow", "canary"))
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

    config = config_from(args)
    outcome = Pipeline(config, log_client(config.log_redis)).run()
    print(f"pipeline {config.name}: {outcome}")
    return 0 if outcome == "promoted" else 3


def _status(args: argparse.Namespace) -> int:
    folder = Path(args.workdir)
    state = read_json(folder / STATE)
    if state is None:
        raise MlsysError(f"{folder}: no pipeline has run here")
    if args.json:
        print(json.dumps(state, default=str))
        return 0
    why = f" ({state['reason']})" if state.get("reason") else ""
    print(f"pipeline {state['name']}: {state.get('outcome') or 'running'}{why}")
    for step in STEPS:
        entry = state["steps"].get(step)
        status = "-" if entry is None else entry.get("status", "?")
        seconds = f" {entry['seconds']:.0f} s" if entry and "seconds" in entry else ""
        print(f"  {step:8s} {status}{seconds}")
    control = read_json(folder / CONTROL)
    if control:
        print(f"  control: {json.dumps(control)}")
    return 0


def _control(folder: Path, change: Callable[[dict[str, Any]], None], what: str) -> None:
    control = read_json(folder / CONTROL) or {}
    change(control)
    write_json(folder / CONTROL, control)
    record = {"at": time.time(), "step": "control", "event": what}
    with (folder / EVENTS).open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(what)


def _stop(args: argparse.Namespace) -> int:
    _control(Path(args.workdir), lambda c: c.update(stop=True), "stop requested")
    return 0


def _force(args: argparse.Namespace) -> int:
    decision = "fail" if args.fail else "pass"
    _control(Path(args.workdir), lambda c: c.setdefault("force", {}).update({args.step: decision}),
             f"{args.step} forced to {decision}")  # fmt: skip
    return 0
