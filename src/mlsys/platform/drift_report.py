"""Drift verdicts and reports, for any model: which columns drifted in a window, the
`--json` object of `mlsys monitor drift`, and its markdown and PNG.

A domain says which of its columns are the model's inputs, which its predictions and which the
outcome (what users did); the verdict names them in those three groups.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mlsys.platform.drift import ColumnDrift, dataset_drift, severity

Columns = dict[str, npt.NDArray[np.float64]]
JsonObject = dict[str, object]  # what report.json and `--json` print


def read_columns(path: Path, columns: tuple[str, ...] | None = None) -> Columns:
    """A reference profile (parquet) as float columns, or one line naming what is missing."""
    import pyarrow.parquet as pq

    from mlsys.errors import MlsysError

    if not path.is_file():
        raise MlsysError(f"{path}: no reference profile (write one with `mlsys monitor reference`)")
    table = pq.read_table(path)
    missing = [c for c in columns or () if c not in table.column_names]
    if missing:
        raise MlsysError(f"{path}: reference profile lacks column {missing[0]!r}")
    return {c: table.column(c).to_numpy().astype(np.float64) for c in columns or table.column_names}


class Group(StrEnum):
    """What a column is to the model: an input, its prediction, or what users did after."""

    INPUTS = "inputs"
    PREDICTION = "prediction"
    OUTCOME = "outcome"


@dataclass(frozen=True)
class Roles:
    prediction: tuple[str, ...]
    outcome: tuple[str, ...] = ()

    def group(self, column: str) -> Group:
        if column in self.prediction:
            return Group.PREDICTION
        return Group.OUTCOME if column in self.outcome else Group.INPUTS


@dataclass(frozen=True)
class WindowVerdict:
    """One window's verdict: every column's drift, and what follows from it (flagged columns
    by group, most drifted first; the worst severity per group)."""

    index: int
    first: str  # stream ids of the window's first and last answers
    last: str
    answers: int
    columns: dict[str, ColumnDrift]
    roles: Roles

    def flagged(self, group: Group) -> list[str]:
        drifted = [k for k, c in self.columns.items() if c.drifted and self.roles.group(k) is group]
        return sorted(drifted, key=lambda k: -severity(self.columns[k]))

    @property
    def drifted(self) -> bool:
        return any(c.drifted for c in self.columns.values())

    @property
    def features(self) -> list[str]:
        return self.flagged(Group.INPUTS)

    @property
    def prediction_drift(self) -> list[str]:
        return self.flagged(Group.PREDICTION)

    @property
    def outcome_drift(self) -> list[str]:
        return self.flagged(Group.OUTCOME)

    @property
    def outcome_judged(self) -> bool:
        return any(self.roles.group(k) is Group.OUTCOME for k in self.columns)

    @property
    def dataset_drift(self) -> bool:
        """Evidently's verdict beside ours, for comparison: half the inputs drifted."""
        inputs = {k: c for k, c in self.columns.items() if self.roles.group(k) is Group.INPUTS}
        return dataset_drift(inputs)

    @property
    def severity(self) -> dict[Group, float]:
        worst = dict.fromkeys(Group, 0.0)
        for k, c in self.columns.items():
            group = self.roles.group(k)
            worst[group] = round(max(worst[group], severity(c)), 4)
        return worst

    def to_json(self, columns: bool = True) -> JsonObject:
        out: JsonObject = {
            "index": self.index,
            "first": self.first,
            "last": self.last,
            "answers": self.answers,
            "drifted": self.drifted,
            "features": self.features,
            "prediction_drift": self.prediction_drift,
            "outcome_drift": self.outcome_drift,
            "outcome_judged": self.outcome_judged,
            "dataset_drift": self.dataset_drift,
            "severity": {str(g): v for g, v in self.severity.items()},
        }
        if columns:
            out["columns"] = {k: _column(c) for k, c in self.columns.items()}
        return out


def judged_window(
    index: int, first: str, last: str, answers: int, columns: dict[str, ColumnDrift], roles: Roles
) -> WindowVerdict:
    return WindowVerdict(index, first, last, answers, columns, roles)


def _column(c: ColumnDrift) -> JsonObject:
    return {
        "method": c.method,
        "statistic": round(c.statistic, 6),
        "threshold": round(c.threshold, 6),
        "severity": round(severity(c), 4),
        "drifted": c.drifted,
    }


@dataclass(frozen=True)
class DriftSummary:
    """`mlsys monitor drift`: a version's judged windows, the latest one's verdict first."""

    model: str
    version: str
    window: int  # answers per window
    windows: list[WindowVerdict]

    @property
    def latest(self) -> WindowVerdict | None:
        return self.windows[-1] if self.windows else None

    @property
    def drifted(self) -> bool:
        return self.latest is not None and self.latest.drifted

    @property
    def first_alarm(self) -> int | None:
        return next((w.index for w in self.windows if w.drifted), None)

    def to_json(self) -> JsonObject:
        """The `--json` object: the latest window's verdict, its statistics, and every
        window's."""
        latest = self.latest
        return {
            "model": self.model,
            "version": self.version,
            "window": self.window,
            "drifted": self.drifted,
            "features": latest.features if latest else [],
            "prediction_drift": latest.prediction_drift if latest else [],
            "dataset_drift": bool(latest and latest.dataset_drift),
            "outcome_drift": latest.outcome_drift if latest else [],
            "first_alarm": self.first_alarm,
            "windows_flagged": sum(w.drifted for w in self.windows),
            "statistics": {k: _column(c) for k, c in latest.columns.items()} if latest else {},
            "windows": [w.to_json(columns=False) for w in self.windows],
        }


def summary(model: str, version: str, size: int, judged: list[WindowVerdict]) -> DriftSummary:
    return DriftSummary(model, version, size, judged)


def write_report(
    result: DriftSummary, reference: Columns, live: dict[int, Columns], out_dir: str | Path
) -> Path:
    """report.json, report.md and drift.png (per window: the worst severity of inputs,
    prediction and outcome; the most drifted columns' histograms, reference vs the window)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    (out / "report.md").write_text(markdown(result))
    _plot(result, reference, live, out / "drift.png")
    return out


def markdown(r: DriftSummary) -> str:
    latest = r.latest
    if latest is None:
        return (
            f"# Drift of {r.version}\n\nNo complete window yet: a window is {r.window} "
            "answers, judged once its last answer has settled (`--settle`).\n"
        )
    state = "**drift**" if r.drifted else "no drift"
    alarm = "none" if r.first_alarm is None else f"window {r.first_alarm}"
    lines = [
        f"# Drift of {r.version}",
        "",
        f"{len(r.windows)} windows of {r.window} answers; latest window: {state}. "
        f"Windows flagged: {sum(w.drifted for w in r.windows)}; first alarm: {alarm}.",
        "",
        f"- features flagged: {', '.join(latest.features) or 'none'}",
        f"- prediction drift: {', '.join(latest.prediction_drift) or 'none'}",
        f"- outcome drift: {', '.join(latest.outcome_drift) or 'none'}",
        f"- dataset drift, Evidently's rule (half the inputs drifted): "
        f"{'yes' if latest.dataset_drift else 'no'}",
        "",
        "Latest window (severity: statistic over threshold, a p-value's inverse; above 1 is "
        "drift):",
        "",
        "| column | method | statistic | threshold | severity | drifted |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in sorted(latest.columns.items(), key=lambda kv: -severity(kv[1])):
        lines.append(
            f"| {name} | {c.method} | {c.statistic:.4g} | {c.threshold:.4g} | "
            f"{severity(c):.2f} | {'**yes**' if c.drifted else 'no'} |"
        )
    lines += ["", "![drift](drift.png)", ""]
    return "\n".join(lines)


def _plot(r: DriftSummary, reference: Columns, live: dict[int, Columns], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = r.windows
    worst = [w for w in judged if w.drifted]
    shown = (worst[-1] if worst else judged[-1]) if judged else None
    cols: list[str] = []
    if shown is not None:  # the drifted inputs and predictions, else the inputs most moved
        cols = [c for c in shown.features + shown.prediction_drift if c in reference]
        if not cols:
            ranked = sorted(shown.columns.items(), key=lambda kv: -severity(kv[1]))
            cols = [k for k, _ in ranked if k in reference]
        cols = cols[:4]
    fig, axes = plt.subplots(1, 1 + len(cols), figsize=(4 + 3.2 * len(cols), 3.4))
    axes = np.atleast_1d(axes)
    timeline = axes[0]
    xs = [w.index for w in judged]
    for group in Group:
        timeline.plot(xs, [w.severity[group] for w in judged], marker=".", lw=1, label=str(group))
    timeline.axhline(1.0, color="red", lw=0.8, ls="--")
    timeline.set_xlabel(f"window ({r.window} answers)")
    timeline.set_ylabel("worst severity (>1: drift)")
    timeline.legend(fontsize=7)
    for ax, col in zip(axes[1:], cols, strict=True):
        assert shown is not None
        values = live[shown.index][col]
        bins = np.histogram_bin_edges(np.concatenate([reference[col], values]), bins=40)
        ax.hist(reference[col], bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(values, bins=bins, density=True, alpha=0.5, label=f"window {shown.index}")
        ax.set_title(col, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
