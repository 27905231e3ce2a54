"""The garment tagger's drift monitor: what a photo and its answer look like, at training time
and live.

Each answered /tag is logged with simple statistics of the photo as uploaded and of the
answer (`data/photo_stats.py`). The reference profile (`training/reference.py`) is the same
record for photos no training decision saw: the first `REFERENCE_ROWS` test images (their
pixels only; test labels are never read), written next to the model at training time
(`reference.parquet`). Not the validation images:
early stopping and the tag thresholds were chosen on them, and the model is more confident
there (mean top-1 probability 0.914 against 0.897 on test images, KS p = 0.013), which made
clean test traffic alarm on `confidence` in 2 of 10 windows.

Windows of `WINDOW` records per version are judged like the recommender's inputs
(`platform/drift.py`: Evidently's test by column, thresholds calibrated on chunks of the
reference as a family). The robustness benchmark's corruptions show in the photo
statistics: JPEG quality 30 in `jpeg_quality`, blur in `sharpness`, brightness in
`background` (the corners' median: a studio background is near white, so 20 % darker is far
outside what training saw, where the whole picture's mean is not), a rotation in
`straightness` (the share of edge strength near the axes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlsys.platform.drift import Baseline, baseline, window_drift
from mlsys.platform.drift_report import Columns, Roles, WindowVerdict, judged_window
from mlsys.platform.event_log import LogRecord
from mlsys.tagger.data.photo_stats import COLUMNS, PREDICTION_COLUMNS
from mlsys.tagger.training.reference import REFERENCE_FILE

WINDOW = 200
ROLES = Roles(prediction=PREDICTION_COLUMNS)


def load_reference(model_dir: str | Path) -> Columns:
    from mlsys.platform.drift_report import read_columns

    return read_columns(Path(model_dir) / REFERENCE_FILE, COLUMNS)


class TagMonitor:
    """A tagger version's reference, calibrated once, and the windows cut from its records."""

    def __init__(self, version: str, calibrated: Baseline, size: int = WINDOW) -> None:
        self.version, self.size, self.baseline = version, size, calibrated
        self.pending: list[LogRecord] = []
        self.done = 0

    @classmethod
    def for_reference(cls, version: str, reference: Columns, size: int = WINDOW) -> TagMonitor:
        return cls(version, baseline(reference, dict.fromkeys(reference, size)), size)

    def fresh(self) -> TagMonitor:
        """The same calibrated reference, no windows yet: another stream judged alike."""
        return TagMonitor(self.version, self.baseline, self.size)

    def add(self, records: list[LogRecord]) -> list[tuple[WindowVerdict, Columns]]:
        """Judge the windows `records` complete: (verdict, the window's columns) each."""
        self.pending.extend(r for r in records if r.get("model") == self.version)
        out = []
        while len(self.pending) >= self.size:
            rows, self.pending = self.pending[: self.size], self.pending[self.size :]
            live = {c: np.asarray([r[c] for r in rows], dtype=np.float64) for c in COLUMNS}
            columns = window_drift(self.baseline, live)
            first, last = rows[0].get("stream_id", ""), rows[-1].get("stream_id", "")
            out.append((judged_window(self.done, first, last, len(rows), columns, ROLES), live))
            self.done += 1
        return out
