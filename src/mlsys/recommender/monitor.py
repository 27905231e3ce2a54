"""The recommender's drift monitor: live windows from the impression log, judged against the
training reference of the model version that scored them.

A window is `size` consecutive answers whose monitored row (`impressions.scored_sample`) a
version scored. Three things are judged per window, each with `platform/drift.py`'s statistics
and thresholds calibrated for the window's size:

- **features**: the 40 input features of the scored rows against `reference.parquet` (the
  version's training pairs). A covariate shift shows here, and names its features.
- **prediction**: the scored rows' click probabilities against the reference's.
- **outcome**: what users did with the answers the version gave alone (not interleaved):
  clicks per answer (`ctr`) and, per answer with clicks, the mean model score of the
  restaurants clicked (`clicked_score`; one value per answer, because the clicks of one user
  are not independent draws, and calibration assumes independent values). Training data
  says nothing about live clicks (they depend on position and the page), so the outcome's
  reference is the version's own first `baseline_windows` live windows. A concept shift
  (same inputs, a new click rule) moves no input and no prediction; users then click what
  the model scored lower, which `clicked_score` shows. A prior shift (fewer clicks) shows in
  `ctr`. Clicks come late, so a window's outcome is judged only once its last answer is
  `settle_s` old.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mlsys.platform.drift import Baseline, ColumnDrift, baseline, severity, window_drift
from mlsys.platform.event_log import entry_key
from mlsys.recommender.reference import REFERENCE_FILE, reference_columns

PREDICTION = "score"
OUTCOMES = ("ctr", "clicked_score")
WINDOW = 500
BASELINE_WINDOWS = 10
SETTLE_S = 60.0
MAX_CLICKED = 1_000_000

Columns = dict[str, npt.NDArray[np.float64]]


def load_reference(model_dir: str | Path) -> Columns:
    import pyarrow.parquet as pq

    path = Path(model_dir) / REFERENCE_FILE
    if not path.is_file():
        from mlsys.errors import MlsysError

        raise MlsysError(f"{path}: no reference profile (train the model with this version)")
    table = pq.read_table(path)
    return {c: table.column(c).to_numpy().astype(np.float64) for c in table.column_names}


@dataclass
class Window:
    version: str
    index: int
    first: str  # stream ids
    last: str
    last_ms: int
    answers: int
    inputs: Columns  # the 40 features and the score
    outcomes: Columns  # ctr, clicked_score (from the answers this version gave alone)


class WindowBuilder:
    """Cuts the log into each version's windows as it arrives (the batch report feeds it
    everything at once, `mlsys monitor run` what is new each time). A window is handed out
    once complete and settled; what it used is then dropped, so memory stays bounded."""

    def __init__(self, size: int = WINDOW) -> None:
        self.size = size
        self.pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.done: dict[str, int] = defaultdict(int)  # windows handed out per version
        self.clicked: dict[str, list[int]] = defaultdict(list)  # request id -> positions

    def add(self, impressions: list[dict[str, Any]], clicks: list[dict[str, Any]]) -> None:
        for r in impressions:
            if r.get("sample") and r.get("sample_model"):
                self.pending[r["sample_model"]].append(r)
        for c in clicks:
            self.clicked[c["request_id"]].append(int(c["position"]))
        while len(self.clicked) > MAX_CLICKED:  # clicks on answers never windowed: oldest go
            del self.clicked[next(iter(self.clicked))]

    def complete(self, now_ms: float, settle_s: float = SETTLE_S) -> list[Window]:
        """Every version's complete windows whose last answer is `settle_s` old, in order."""
        out = []
        for version, rows in self.pending.items():
            rows.sort(key=lambda r: entry_key(r["stream_id"]))
            while len(rows) >= self.size and rows[self.size - 1]["ts_ms"] <= (
                now_ms - settle_s * 1000
            ):
                chunk, rows[:] = rows[: self.size], rows[self.size :]
                out.append(self._window(version, self.done[version], chunk))
                self.done[version] += 1
        return out

    def _window(self, version: str, index: int, rows: list[dict[str, Any]]) -> Window:
        matrix = np.asarray([r["sample"] for r in rows], dtype=np.float64)
        inputs = {name: matrix[:, j] for j, name in enumerate(reference_columns())}
        inputs[PREDICTION] = np.asarray([r["sample_score"] for r in rows], dtype=np.float64)
        alone = [r for r in rows if r["model"] == version]
        got = [self.clicked.pop(r["request_id"], []) for r in alone]
        scores = [
            float(np.mean([r["scores"][p - 1] for p in positions if 0 < p <= len(r["scores"])]))
            for r, positions in zip(alone, got, strict=True)
            if positions
        ]
        for r in rows:
            self.clicked.pop(r["request_id"], None)
        return Window(
            version, index, rows[0]["stream_id"], rows[-1]["stream_id"], int(rows[-1]["ts_ms"]),
            len(rows), inputs,
            {"ctr": np.asarray([len(g) for g in got], np.float64),
             "clicked_score": np.asarray(scores, np.float64)},
        )  # fmt: skip


@dataclass
class Monitor:
    """A version's baselines, calibrated once (a few seconds) and reused for every window."""

    version: str
    size: int
    inputs: Baseline
    baseline_windows: int = BASELINE_WINDOWS
    outcomes: Baseline | None = None
    _first: list[Columns] = field(default_factory=list)

    @classmethod
    def for_reference(
        cls,
        version: str,
        reference: Columns,
        size: int = WINDOW,
        baseline_windows: int = BASELINE_WINDOWS,
    ) -> Monitor:
        sizes = dict.fromkeys(reference, size)
        return cls(version, size, baseline(reference, sizes), baseline_windows)

    def judge(self, window: Window) -> dict[str, ColumnDrift]:
        """Every column's drift in `window`; the outcome once its baseline exists (the first
        `baseline_windows` windows become it)."""
        result = window_drift(self.inputs, window.inputs)
        if window.index < self.baseline_windows:
            self._first.append(window.outcomes)
            if len(self._first) == self.baseline_windows:
                merged = {k: np.concatenate([w[k] for w in self._first]) for k in OUTCOMES}
                sizes = {k: max(1, len(merged[k]) // self.baseline_windows) for k in OUTCOMES}
                if all(len(merged[k]) > 2 * sizes[k] for k in OUTCOMES):
                    self.outcomes = baseline(merged, sizes)
        elif self.outcomes is not None:
            result.update(window_drift(self.outcomes, window.outcomes))
        return result


def verdict(columns: dict[str, ColumnDrift]) -> dict[str, Any]:
    flagged = sorted(
        (k for k, c in columns.items() if c.drifted), key=lambda k: -severity(columns[k])
    )
    return {
        "drifted": bool(flagged),
        "features": [k for k in flagged if k not in (PREDICTION, *OUTCOMES)],
        "prediction_drift": PREDICTION in flagged,
        "outcome_drift": [k for k in flagged if k in OUTCOMES],
    }


def scan(monitor: Monitor, wins: list[Window]) -> list[dict[str, Any]]:
    """Judge every window in order; one summary per window."""
    out = []
    for w in wins:
        columns = monitor.judge(w)
        out.append(
            {
                "index": w.index,
                "first": w.first,
                "last": w.last,
                "answers": w.answers,
                **verdict(columns),
                "outcome_judged": any(k in columns for k in OUTCOMES),
                "severity": _worst(columns),
                "columns": {k: _column(c) for k, c in columns.items()},
            }
        )
    return out


def _worst(columns: dict[str, ColumnDrift]) -> dict[str, float]:
    """The worst severity per kind of column (0 when none was judged)."""
    groups = {
        "inputs": [c for k, c in columns.items() if k not in (PREDICTION, *OUTCOMES)],
        "prediction": [c for k, c in columns.items() if k == PREDICTION],
        "outcome": [c for k, c in columns.items() if k in OUTCOMES],
    }
    return {g: round(max((severity(c) for c in cs), default=0.0), 4) for g, cs in groups.items()}


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
        "prediction_drift": bool(latest and latest["prediction_drift"]),
        "outcome_drift": latest["outcome_drift"] if latest else [],
        "first_alarm": first_alarm,
        "windows_flagged": sum(w["drifted"] for w in judged),
        "statistics": latest["columns"] if latest else {},
        "windows": [{k: v for k, v in w.items() if k != "columns"} for w in judged],
    }


def write_report(
    result: dict[str, Any], reference: Columns, wins: list[Window], out_dir: str | Path
) -> Path:
    """report.json, report.md and drift.png (per window: the worst severity of inputs,
    prediction and outcome; the most drifted columns' histograms, reference vs the window)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "report.md").write_text(markdown(result))
    _plot(result, reference, wins, out / "drift.png")
    return out


def markdown(r: dict[str, Any]) -> str:
    state = "**drift**" if r["drifted"] else "no drift"
    lines = [
        f"# Drift of {r['version']}",
        "",
        f"{len(r['windows'])} windows of {r['window']} answers; latest window: {state}. "
        f"Windows flagged: {r['windows_flagged']}; first alarm: window {r['first_alarm']}.",
        "",
        f"- features flagged: {', '.join(r['features']) or 'none'}",
        f"- prediction drift: {'yes' if r['prediction_drift'] else 'no'}",
        f"- outcome drift: {', '.join(r['outcome_drift']) or 'none'}",
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


def _plot(r: dict[str, Any], reference: Columns, wins: list[Window], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = r["windows"]
    worst = [w for w in judged if w["drifted"]]
    shown = (worst[-1] if worst else judged[-1]) if judged else None
    cols = []
    if shown is not None:
        cols = shown["features"] + ([PREDICTION] if shown["prediction_drift"] else [])
        cols = (cols or [PREDICTION])[:4]
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
    by_index = {w.index: w for w in wins}
    for ax, col in zip(axes[1:], cols, strict=True):
        assert shown is not None
        live = by_index[shown["index"]].inputs[col]
        bins = np.histogram_bin_edges(np.concatenate([reference[col], live]), bins=40)
        ax.hist(reference[col], bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(live, bins=bins, density=True, alpha=0.5, label=f"window {shown['index']}")
        ax.set_title(col, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
