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

Every step is idempotent and recorded in WORKDIR/pipeline.json when it finishes
(`pipeline_state.py`), so `run` again resumes after the last finished step (a rollout in
progress is picked up, not restarted). Every event goes to WORKDIR/events.jsonl and the
terminal, and the whole run is an MLflow run in the experiment `NAME-pipeline`. A person
steers it from another terminal (`compose/cli/pipeline.py`):

    mlsys pipeline status --workdir DIR
    mlsys pipeline stop --workdir DIR             stop at the next check; a rollout is stopped
    mlsys pipeline force STEP --workdir DIR [--fail]   end a step's wait with pass (or fail);
                                                  retrain, given before the gate judges: a
                                                  refused candidate becomes challenger (forced)

After a loop has ended (refused, rolled back), `mlsys models alias` and `mlsys rollout` are
the hand tools; a new `pipeline run` in a new workdir starts the loop again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlsys.compose.pipeline_state import (
    STEPS,
    Control,
    Detail,
    Force,
    Outcome,
    PipelineConfig,
    PipelineState,
    Step,
    StepRecord,
    StepStatus,
    append_event,
)
from mlsys.errors import MlsysError
from mlsys.platform.redis_client import RedisClient
from mlsys.platform.rollout import Mode

if TYPE_CHECKING:
    from mlsys.platform.rollout import RolloutState
    from mlsys.recommender.online.experiment_results import ExperimentReport

# A shadow's sampling is best effort (a busy worker skips it); below this the challenger is
# failing to load or to score, which the canary must not meet first.
SHADOW_COVERAGE = 0.5


class Stopped(Exception):
    """A person asked the pipeline to stop."""


class Ended(Exception):
    """The loop ended before promotion: the gate refused, or a rollout was rolled back."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@dataclass
class Pipeline:
    config: PipelineConfig
    client: RedisClient  # the log's Redis
    say: Callable[[str], None] = print
    state: PipelineState = field(init=False)

    @property
    def dir(self) -> Path:
        return Path(self.config.workdir)

    # ------------------------------------------------------------------ the loop

    def run(self) -> Outcome:
        """Runs the steps not finished yet; returns the outcome."""
        from mlsys.platform.tracking import tracked_run

        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = PipelineState.read(self.dir) or PipelineState(
            self.config.name, asdict(self.config), time.time()
        )
        control = Control.read(self.dir)
        if control.stop:  # a stop is for the run it stopped; this one goes on
            control.stop = False
            control.save(self.dir)
        if self.state.outcome is Outcome.STOPPED:
            self.event("pipeline", "resuming a stopped run")
            self.state.outcome = None
        elif self.state.outcome is not None:
            self.event("pipeline", "already ended", outcome=self.state.outcome)
            return self.state.outcome
        with tracked_run(f"{self.config.name}-pipeline", run_name="pipeline") as run:
            run.log_params({k: v for k, v in asdict(self.config).items() if k != "log_redis"})
            outcome = self._steps()
            run.set_tags({"mlsys.pipeline.outcome": str(outcome),
                          **{f"mlsys.pipeline.{k}": json.dumps(v.detail)[:5000]
                             for k, v in self.state.steps.items()}})  # fmt: skip
        return outcome

    def _steps(self) -> Outcome:
        try:
            for step in STEPS:
                if self.state.done(step):
                    continue
                self.check_control(step)
                self.event(step, "start")
                started = time.time()
                detail = getattr(self, f"step_{step}")()
                self.state.steps[step] = StepRecord(StepStatus.DONE, detail, time.time() - started)
                self.save()
                self.event(step, "done", **detail)
            outcome = Outcome.PROMOTED
        except Ended as end:
            self.state.reason = end.reason
            outcome = end.outcome
            self.event("pipeline", outcome, reason=end.reason)
        except Stopped:
            self.stop_rollout("stopped by a person")
            outcome = Outcome.STOPPED
            self.event("pipeline", "stopped")
        self.state.outcome = outcome
        self.state.ended = time.time()
        self.save()
        return outcome

    # ------------------------------------------------------------------ steps

    def step_trigger(self) -> Detail:
        if self.config.trigger == "now":
            return {"reason": "now", "since_ms": self.config.since_ms}
        if self.config.trigger != "drift":
            raise MlsysError(f"--trigger {self.config.trigger!r}: expected drift or now")
        from mlsys.compose.drift_watch import recommender_windows
        from mlsys.platform.event_log import entry_key

        def alarm() -> Detail | None:
            judged = recommender_windows(
                self.client, self.config.name, window=self.config.drift_window,
                settle=self.config.drift_settle_s,
            )  # fmt: skip
            if judged is None or not judged.windows or not judged.windows[-1].drifted:
                return None
            latest = judged.windows[-1]
            run = latest
            for window in reversed(judged.windows):  # the start of the trailing run of alarms
                if not window.drifted:
                    break
                run = window
            return {
                "reason": "drift", "version": judged.version, "window": latest.index,
                "features": latest.features, "outcome_drift": latest.outcome_drift,
                "prediction_drift": latest.prediction_drift,
                "since_ms": entry_key(run.first)[0],
            }  # fmt: skip

        return self.wait(Step.TRIGGER, alarm, poll_s=max(self.config.poll_s, 5.0))

    def step_export(self) -> Detail:
        from mlsys.compose.experiments import export_log

        written = export_log(self.client, self.dir / "log", trim=False)
        return {"rows": written}

    def step_data(self) -> Detail:
        import shutil

        from mlsys.compose.experiments import export_log
        from mlsys.platform.log_export import read_parts
        from mlsys.recommender.online.log_data import build

        since = self.since_ms()
        window_ms = self.config.window_min * 60_000

        def enough() -> Detail | None:
            """Exports again until `min_answers` answers since the trigger are labelled."""
            export_log(self.client, self.dir / "log", trim=False)
            answers = read_parts(self.dir / "log" / "impressions")
            if answers is None:
                return None
            ts = answers["ts_ms"].to_numpy()
            settled = (ts >= (since or 0)) & (ts <= time.time() * 1000 - window_ms)
            count = int(settled.sum())
            return {"answers": count} if count >= max(self.config.min_answers, 1) else None

        self.wait(Step.DATA, enough)
        out = self.dir / "data"
        if out.exists():  # a half-written folder from an interrupted run
            shutil.rmtree(out)
        report = build(self.dir / "log", self.config.features, out,
                       window_s=self.config.window_min * 60, holdout=self.config.holdout,
                       since_ms=since)  # fmt: skip
        return {"answers": report["answers"], "rows": report["rows"], "clicks": report["clicks"]}

    def step_retrain(self) -> Detail:
        import shutil

        from mlsys.compose.retrain import retrain

        out = self.dir / "candidate"
        if out.exists():
            shutil.rmtree(out)
        done = retrain(
            f"models:/{self.config.name}@champion", self.dir / "data", out,
            name=self.config.name, epochs=self.config.epochs, lr=self.config.lr,
            ips=self.config.ips, force=self.forced(Step.RETRAIN) is Force.PASS, progress=False,
            log=lambda line: self.event(Step.RETRAIN, line),
        )  # fmt: skip
        detail: Detail = {
            "version": done.version, "passed": done.verdict.passed, "forced": done.forced,
            "reasons": done.verdict.reasons, "champion": done.verdict.champion,
            "candidate": done.verdict.candidate,
        }  # fmt: skip
        if not done.challenger:
            self.state.steps[Step.RETRAIN] = StepRecord(StepStatus.REFUSED, detail)
            raise Ended(Outcome.REFUSED, f"the gate refused version {done.version}")
        return detail

    def step_shadow(self) -> Detail:
        state = self.start_rollout(Mode.SHADOW, 100.0)

        def enough() -> Detail | None:
            result = self.analyse(state, Step.SHADOW).shadow
            assert result is not None, "a shadow rollout's report has a shadow section"
            shadow = result.shadow
            if shadow.scored < self.config.shadow_answers:
                return None
            detail: Detail = {
                "scored": shadow.scored, "coverage": shadow.coverage,
                "p95_shadow_ms": shadow.p95_shadow_ms, "same_first": shadow.same_first,
                "overlap_at_10": shadow.overlap_at_10,
            }  # fmt: skip
            if (shadow.coverage or 0.0) < SHADOW_COVERAGE:
                raise self.roll_back(
                    f"shadow: the challenger scored only {shadow.coverage or 0.0:.0%} of answers",
                    detail,
                )
            return detail

        return self.wait(Step.SHADOW, enough)

    def step_canary(self) -> Detail:
        state = self.start_rollout(Mode.CANARY, self.config.canary_percent)

        def verdict() -> Detail | None:
            r = self.analyse(state, Step.CANARY)
            assert r.split is not None, "a canary's report splits users"
            champion, challenger = r.split.champion, r.split.challenger
            json_report = r.to_json()
            detail: Detail = {
                "decision": str(r.decision), "challenger": asdict(challenger),
                "champion": asdict(champion), "guardrails": json_report["guardrails"],
                "srm_p": r.srm_p,
            }  # fmt: skip
            if r.decision.stops and challenger.impressions >= 50:  # a few answers to judge by
                raise self.roll_back(f"canary: {r.decision}", detail)
            if challenger.impressions < self.config.canary_answers:
                return None
            low, high = champion.ctr_interval
            if challenger.ctr < low:
                raise self.roll_back(
                    f"canary: CTR {challenger.ctr:.3f} below the champion's interval "
                    f"[{low:.3f}, {high:.3f}]",
                    detail,
                )
            return detail

        return self.wait(Step.CANARY, verdict)

    def step_promote(self) -> Detail:
        from mlsys.compose.models import probe
        from mlsys.platform.registry import CHALLENGER, CHAMPION, Registry

        registry = Registry()
        self.stop_rollout("canary passed")
        challenger = registry.alias_target(self.config.name, CHALLENGER)
        champion = registry.alias_target(self.config.name, CHAMPION)
        if challenger is None and champion == self.state.detail(Step.RETRAIN).get("version"):
            return {"from": None, "to": champion, "note": "promoted before a restart"}
        old, new = registry.promote(self.config.name, "pipeline: canary passed", probe)
        return {"from": old, "to": new}

    # ------------------------------------------------------------------ helpers

    def since_ms(self) -> int | None:
        """Where the new world starts: the trigger's first drifted answer (or --since-ms)."""
        since = self.state.detail(Step.TRIGGER).get("since_ms")
        return since if isinstance(since, int) else None

    def wait(
        self, step: Step, check: Callable[[], Detail | None], poll_s: float | None = None
    ) -> Detail:
        deadline = time.monotonic() + self.config.step_timeout_s
        while True:
            self.check_control(step)
            forced = self.forced(step)
            if forced is Force.FAIL:
                raise self.roll_back(f"{step}: forced to fail by a person", {})
            result = check()
            if result is not None:
                return result
            if forced is Force.PASS:
                return {"forced": "pass"}
            if time.monotonic() > deadline:
                raise self.roll_back(f"{step}: no decision in {self.config.step_timeout_s:g} s",
                                     {})  # fmt: skip
            time.sleep(poll_s or self.config.poll_s)

    def start_rollout(self, mode: Mode, percent: float) -> RolloutState:
        from mlsys.platform.rollout import Guardrails, RolloutStore

        store = RolloutStore(self.client)
        current = store.get(self.config.name)
        if current is not None and current.mode is mode and current.challenger == "challenger":
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

    def roll_back(self, reason: str, detail: Detail) -> Ended:
        from mlsys.platform.registry import CHALLENGER, Registry

        self.stop_rollout(reason)
        registry = Registry()
        version = registry.alias_target(self.config.name, CHALLENGER)
        if version is not None:
            registry.tag_version(self.config.name, version, {"mlsys.pipeline.rolled_back": reason})
            registry.delete_alias(self.config.name, CHALLENGER, f"pipeline: {reason}")
        if self.state.rolled_back is None:
            self.state.rolled_back = {"reason": reason, "detail": detail}
        return Ended(Outcome.ROLLED_BACK, reason)

    def analyse(self, state: RolloutState, step: Step) -> ExperimentReport:
        from mlsys.recommender.online.experiment_report import report

        return report(self.client, state, self.dir / "experiments" / step)

    def check_control(self, step: Step) -> None:
        if Control.read(self.dir).stop:
            raise Stopped(step)

    def forced(self, step: Step) -> Force | None:
        return Control.read(self.dir).force.get(step)

    def event(self, step: str, event: str, **detail: object) -> None:
        record: Detail = {"at": time.time(), "step": str(step), "event": str(event), **detail}
        append_event(self.dir, record)
        extra = ", ".join(f"{k}={v}" for k, v in detail.items() if k not in ("reasons",))
        self.say(f"[{time.strftime('%H:%M:%S')}] {step}: {event}" + (f" ({extra})" if extra
                                                                     else ""))  # fmt: skip

    def save(self) -> None:
        self.state.save(self.dir)
