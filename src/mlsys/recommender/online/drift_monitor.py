"""The recommender's drift monitor: live windows from the impression log, judged against the
training reference of the model version that scored them.

A window is `size` consecutive answers whose monitored row (`impressions.scored_sample`) a
version scored. Three things are judged per window, each with `platform/drift.py`'s statistics
and thresholds calibrated for the window's size:

- **features**: the 40 input features of the scored rows against `reference.parquet` (the
  version's training pairs), and each request's candidates, reachable candidates (requests
  with a candidate list only: retrieval reads the whole neighbourhood) and the scored row's
  distance against `reference_requests.parquet`. A covariate shift shows here, and names its
  features.
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

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlsys.platform import drift_report
from mlsys.platform.drift import Baseline, ColumnDrift, baseline, window_drift
from mlsys.platform.drift_report import (
    Columns,
    DriftSummary,
    Roles,
    WindowVerdict,
    judged_window,
    read_columns,
)
from mlsys.platform.event_log import LogRecord, entry_key
from mlsys.recommender.training.reference import (
    REFERENCE_FILE,
    REQUEST_COLUMNS,
    REQUESTS_REFERENCE_FILE,
    reference_columns,
)

PREDICTION = "score"
OUTCOMES = ("ctr", "clicked_score")
WINDOW = 500
BASELINE_WINDOWS = 10
SETTLE_S = 60.0
MAX_CLICKED = 1_000_000


def load_reference(model_dir: str | Path) -> Columns:
    """The training pairs and, when the model has one, the request profile (its columns are
    calibrated as their own table)."""
    folder = Path(model_dir)
    columns = read_columns(folder / REFERENCE_FILE, (*reference_columns(), PREDICTION))
    if (folder / REQUESTS_REFERENCE_FILE).is_file():
        columns.update(read_columns(folder / REQUESTS_REFERENCE_FILE, REQUEST_COLUMNS))
    return columns


@dataclass
class Window:
    version: str
    index: int
    first: str  # stream ids
    last: str
    answers: int
    inputs: Columns  # the 40 features, the score, and the request's three
    outcomes: Columns  # ctr, clicked_score (from the answers this version gave alone)


class WindowBuilder:
    """Cuts the log into each version's windows as it arrives (the batch report feeds it
    everything at once, `mlsys monitor run` what is new each time). A window is handed out
    once complete and settled; what it used is then dropped, so memory stays bounded."""

    def __init__(self, size: int = WINDOW) -> None:
        self.size = size
        self.pending: dict[str, list[LogRecord]] = defaultdict(list)
        self.done: dict[str, int] = defaultdict(int)  # windows handed out per version
        self.clicked: dict[str, list[int]] = defaultdict(list)  # request id -> positions

    def add(self, impressions: list[LogRecord], clicks: list[LogRecord]) -> None:
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

    def _window(self, version: str, index: int, rows: list[LogRecord]) -> Window:
        matrix = np.asarray([r["sample"] for r in rows], dtype=np.float64)
        inputs = {name: matrix[:, j] for j, name in enumerate(reference_columns())}
        inputs[PREDICTION] = np.asarray([r["sample_score"] for r in rows], dtype=np.float64)
        inputs["distance"] = np.asarray([r["sample_distance"] for r in rows], dtype=np.float64)
        # How many candidates a request had and reached describes a caller's list; the
        # reference replays requests.parquet's. Answers retrieved from the geo index (no list)
        # read thousands, so they are left out of these two, and a window of mostly such
        # answers is not judged on them (platform/drift.window_drift's min_share).
        listed = [r for r in rows if not r.get("retrieved")]
        for name in ("candidates", "reachable"):
            inputs[name] = np.asarray([r[name] for r in listed], dtype=np.float64)
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
            version, index, rows[0]["stream_id"], rows[-1]["stream_id"],
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

    def fresh(self) -> Monitor:
        """The same calibrated inputs, no outcome baseline yet: another stream judged alike
        (calibration takes seconds; a new baseline grows from the stream's first windows)."""
        return Monitor(self.version, self.size, self.inputs, self.baseline_windows)

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


ROLES = Roles(prediction=(PREDICTION,), outcome=OUTCOMES)


def scan(monitor: Monitor, wins: list[Window]) -> list[WindowVerdict]:
    """Judge every window in order; one summary per window."""
    return [
        judged_window(w.index, w.first, w.last, w.answers, monitor.judge(w), ROLES) for w in wins
    ]


def write_report(
    result: DriftSummary, reference: Columns, wins: list[Window], out_dir: str | Path
) -> Path:
    return drift_report.write_report(result, reference, {w.index: w.inputs for w in wins}, out_dir)
