"""Drift verdicts and reports, for any model: which columns drifted in a window, the
`--json` object of `mlsys monitor drift`, and its markdown and PNG.

A domain says which of its columns are the model's inputs, which its predictions and which the
outcome (what users did); the verdict names them in those three groups.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mlsys.platform.drift import ColumnDrift, dataset_drift, severity

Columns = dict[str, npt.NDArray[np.float64]]


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


@dataclass(frozen=True)
class Roles:
    prediction: tuple[str, ...]
    outcome: tuple[str, ...] = ()

    def group(self, column: str) -> str:
        if column in self.prediction:
            return "prediction"
        return "outcome" if column in self.outcome else "inputs"


def judged_window(
    index: int, first: str, last: str, answers: int, columns: dict[str, ColumnDrift], roles: Roles
) -> dict[str, Any]:
    """One window's verdict: flagged columns by group (most drifted first), the worst
    severity per group, and every column's statistic."""
    flagged = sorted(
        (k for k, c in columns.items() if c.drifted), key=lambda k: -severity(columns[k])
    )
    worst = dict.fromkeys(("inputs", "prediction", "outcome"), 0.0)
    for k, c in columns.items():
        group = roles.group(k)
        worst[group] = round(max(worst[group], severity(c)), 4)
    return {
        "index": index,
        "first": first,
        "last": last,
        "answers": answers,
        "drifted": bool(flagged),
        "features": [k for k in flagged if roles.group(k) == "inputs"],
        "prediction_drift": [k for k in flagged if roles.group(k) == "prediction"],
        "outcome_drift": [k for k in flagged if roles.group(k) == "outcome"],
        "outcome_judged": any(roles.group(k) == "outcome" for k in columns),
        # Evidently's verdict beside ours, for comparison: half the inputs drifted.
        "dataset_drift": dataset_drift(
            {k: c for k, c in columns.items() if roles.group(k) == "inputs"}
        ),
        "severity": worst,
        "columns": {k: _column(c) for k, c in columns.items()},
    }


def _column(c: ColumnDrift) -> dict[str, Any]:
    return {
        "method": c.method,
        "statistic": round(c.statistic, 6),
        "threshold": round(c.threshold, 6),
        "severity": round(severity(c), 4),
        "drifted": c.drifted,
    }


def summary(model: str, version: str, size: int, judged: list[dict[str, Any]]) -> dict[str, Any]:
    """The `--json` object: the latest window's verdict, its statistics, and every window's."""
    latest = judged[-1] if judged else None
    first_alarm = next((w["index"] for w in judged if w["drifted"]), None)
    return {
        "model": model,
        "version": version,
        "window": size,
        "drifted": bool(latest and latest["drifted"]),
        "features": latest["features"] if latest else [],
        "prediction_drift": latest["prediction_drift"] if latest else [],
        "dataset_drift": bool(latest and latest["dataset_drift"]),
        "outcome_drift": latest["outcome_drift"] if latest else [],
        "first_alarm": first_alarm,
        "windows_flagged": sum(w["drifted"] for w in judged),
        "statistics": latest["columns"] if latest else {},
        "windows": [{k: v for k, v in w.items() if k != "columns"} for w in judged],
    }


def write_report(
    result: dict[str, Any], reference: Columns, live: dict[int, Columns], out_dir: str | Path
) -> Path:
    """report.json, report.md and drift.png (per window: the worst severity of inputs,
    prediction and outcome; the most drifted columns' histograms, reference vs the window)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "report.md").write_text(markdown(result))
    _plot(result, reference, live, out / "drift.png")
    return out


def markdown(r: dict[str, Any]) -> str:
    state = "**drift**" if r["drifted"] else "no drift"
    alarm = "none" if r["first_alarm"] is None else f"window {r['first_alarm']}"
    if not r["windows"]:
        return (
            f"# Drift of {r['version']}\n\nNo complete window yet: a window is {r['window']} "
            "answers, judged once its last answer has settled (`--settle`).\n"
        )
    lines = [
        f"# Drift of {r['version']}",
        "",
        f"{len(r['windows'])} windows of {r['window']} answers; latest window: {state}. "
        f"Windows flagged: {r['windows_flagged']}; first alarm: {alarm}.",
        "",
        f"- features flagged: {', '.join(r['features']) or 'none'}",
        f"- prediction drift: {', '.join(r['prediction_drift']) or 'none'}",
        f"- outcome drift: {', '.join(r['outcome_drift']) or 'none'}",
        f"- dataset drift, Evidently's rule (half the inputs drifted): "
        f"{'yes' if r['dataset_drift'] else 'no'}",
        "",
        "Latest window (severity: statistic over threshold, a p-value's inverse; above 1 is "
        "drift):",
        "",
        "| column | method | statistic | threshold | severity | drifted |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in sorted(r["statistics"].items(), key=lambda kv: -kv[1]["severity"]):
        lines.append(
            f"| {name} | {c['method']} | {c['statistic']:.4g} | {c['threshold']:.4g} | "
            f"{c['severity']:.2f} | {'**yes**' if c['drifted'] else 'no'} |"
        )
    lines += ["", "![drift](drift.png)", ""]
    return "\n".join(lines)


def _plot(r: dict[str, Any], reference: Columns, live: dict[int, Columns], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = r["windows"]
    worst = [w for w in judged if w["drifted"]]
    shown = (worst[-1] if worst else judged[-1]) if judged else None
    cols: list[str] = []
    if shown is not None:  # the drifted inputs and predictions, else the inputs most moved
        cols = [c for c in shown["features"] + shown["prediction_drift"] if c in reference]
        if not cols:
            ranked = sorted(r["statistics"].items(), key=lambda kv: -kv[1]["severity"])
            cols = [k for k, _ in ranked if k in reference]
        cols = cols[:4]
    fig, axes = plt.subplots(1, 1 + len(cols), figsize=(4 + 3.2 * len(cols), 3.4))
    axes = np.atleast_1d(axes)
    timeline = axes[0]
    xs = [w["index"] for w in judged]
    for key in ("inputs", "prediction", "outcome"):
        timeline.plot(xs, [w["severity"][key] for w in judged], marker=".", lw=1, label=key)
    timeline.axhline(1.0, color="red", lw=0.8, ls="--")
    timeline.set_xlabel(f"window ({r['window']} answers)")
    timeline.set_ylabel("worst severity (>1: drift)")
    timeline.legend(fontsize=7)
    for ax, col in zip(axes[1:], cols, strict=True):
        assert shown is not None
        values = live[shown["index"]][col]
        bins = np.histogram_bin_edges(np.concatenate([reference[col], values]), bins=40)
        ax.hist(reference[col], bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(values, bins=bins, density=True, alpha=0.5, label=f"window {shown['index']}")
        ax.set_title(col, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
