"""What the retraining loop is given (`PipelineConfig`), records (WORKDIR/pipeline.json), is
asked by a person (WORKDIR/control.json) and tells (WORKDIR/events.jsonl), as types.

Every file is written whole (temporary file, then rename), so a reader (`pipeline status`, a
resumed run) never sees half of one. `PipelineState.to_json` and `from_json` are the one place
pipeline.json is made and read.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

STATE = "pipeline.json"
CONTROL = "control.json"
EVENTS = "events.jsonl"

# A step's detail: what it found, for people and the MLflow run (JSON values only).
Detail = dict[str, object]


class Step(StrEnum):
    TRIGGER = "trigger"
    EXPORT = "export"
    DATA = "data"
    RETRAIN = "retrain"
    SHADOW = "shadow"
    CANARY = "canary"
    PROMOTE = "promote"


STEPS = tuple(Step)
FORCEABLE = (Step.TRIGGER, Step.RETRAIN, Step.SHADOW, Step.CANARY)


class StepStatus(StrEnum):
    DONE = "done"
    REFUSED = "refused"  # the gate refused the candidate: the loop ends there


class Outcome(StrEnum):
    PROMOTED = "promoted"
    REFUSED = "refused"
    ROLLED_BACK = "rolled_back"
    STOPPED = "stopped"


class Force(StrEnum):
    """A person's decision for a step that waits: end the wait with a pass, or fail it."""

    PASS = "pass"
    FAIL = "fail"


@dataclass
class StepRecord:
    status: StepStatus
    detail: Detail
    seconds: float | None = None

    def to_json(self) -> Detail:
        out: Detail = {"status": str(self.status)}
        if self.seconds is not None:
            out["seconds"] = self.seconds
        out["detail"] = self.detail
        return out

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> StepRecord:
        seconds = raw.get("seconds")
        detail = raw.get("detail")
        return cls(
            StepStatus(str(raw["status"])),
            dict(detail) if isinstance(detail, dict) else {},
            float(seconds) if isinstance(seconds, int | float) else None,
        )


@dataclass
class PipelineState:
    name: str
    config: Detail
    started: float
    steps: dict[Step, StepRecord] = field(default_factory=dict)
    outcome: Outcome | None = None
    reason: str | None = None  # why the loop ended before promotion
    rolled_back: Detail | None = None  # the first rollback's reason and the figures behind it
    ended: float | None = None

    def done(self, step: Step) -> bool:
        record = self.steps.get(step)
        return record is not None and record.status is StepStatus.DONE

    def detail(self, step: Step) -> Detail:
        record = self.steps.get(step)
        return {} if record is None else record.detail

    def to_json(self) -> Detail:
        out: Detail = {
            "name": self.name,
            "config": self.config,
            "steps": {str(k): v.to_json() for k, v in self.steps.items()},
            "outcome": None if self.outcome is None else str(self.outcome),
            "started": self.started,
        }
        for key in ("reason", "rolled_back", "ended"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> PipelineState:
        steps = raw.get("steps")
        outcome = raw.get("outcome")
        rolled_back = raw.get("rolled_back")
        ended = raw.get("ended")
        config = raw.get("config")
        return cls(
            name=str(raw["name"]),
            config=dict(config) if isinstance(config, dict) else {},
            started=float(str(raw["started"])),
            steps={Step(k): StepRecord.from_json(v) for k, v in steps.items()}
            if isinstance(steps, dict)
            else {},
            outcome=None if outcome is None else Outcome(str(outcome)),
            reason=None if raw.get("reason") is None else str(raw["reason"]),
            rolled_back=dict(rolled_back) if isinstance(rolled_back, dict) else None,
            ended=float(ended) if isinstance(ended, int | float) else None,
        )

    @classmethod
    def read(cls, folder: Path) -> PipelineState | None:
        raw = read_json(folder / STATE)
        return None if raw is None else cls.from_json(raw)

    def save(self, folder: Path) -> None:
        write_json(folder / STATE, self.to_json())


@dataclass
class Control:
    """What a person asked: stop at the next check, or end a step's wait (pass or fail)."""

    stop: bool = False
    force: dict[Step, Force] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path) -> Control:
        raw = read_json(folder / CONTROL) or {}
        force = raw.get("force")
        return cls(
            stop=bool(raw.get("stop")),
            force={Step(k): Force(str(v)) for k, v in force.items()}
            if isinstance(force, dict)
            else {},
        )

    def save(self, folder: Path) -> None:
        raw: Detail = {}
        if self.stop:
            raw["stop"] = True
        if self.force:
            raw["force"] = {str(k): str(v) for k, v in self.force.items()}
        write_json(folder / CONTROL, raw)

    def to_json(self) -> Detail:
        return {"stop": self.stop, "force": {str(k): str(v) for k, v in self.force.items()}}


def request_stop(workdir: str | Path) -> None:
    """`mlsys pipeline stop`: the loop stops at its next check (a rollout is stopped)."""
    folder = Path(workdir)
    control = Control.read(folder)
    control.stop = True
    _change(folder, control, "stop requested")


def force_step(workdir: str | Path, step: Step, decision: Force) -> None:
    """`mlsys pipeline force`: end `step`'s wait with `decision`."""
    folder = Path(workdir)
    control = Control.read(folder)
    control.force[step] = decision
    _change(folder, control, f"{step} forced to {decision}")


def _change(folder: Path, control: Control, what: str) -> None:
    control.save(folder)
    append_event(folder, {"at": time.time(), "step": "control", "event": what})


def append_event(folder: Path, record: Detail) -> None:
    with (folder / EVENTS).open("a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def read_json(path: Path) -> dict[str, object] | None:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def write_json(path: Path, value: Detail) -> None:
    """Atomically: a reader (`status`, a resumed run) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")
    os.replace(tmp, path)


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
