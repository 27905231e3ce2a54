"""The garment tagger's drift monitor: what a photo and its answer look like, at training time
and live.

Each answered /tag is logged (`tag_record`) with simple statistics of the photo as uploaded
(size, aspect, brightness, contrast, background, sharpness, straightness, the JPEG quality
its quantisation tables imply) and of the answer (top-1 category and its probability, each
tag's decision). The reference profile is the same record for photos no training decision
saw: the first `REFERENCE_ROWS` test images (their pixels only; test labels are never read),
written next to the model at training time (`reference.parquet`). Not the validation images:
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

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mlsys.platform.drift import Baseline, baseline, window_drift
from mlsys.platform.drift_report import Columns, Roles, judged_window
from mlsys.tagger.schema import CATEGORIES, TAGS

REFERENCE_FILE = "reference.parquet"
WINDOW = 200
REFERENCE_ROWS = 1000
IMAGE_COLUMNS = ("width", "height", "aspect", "brightness", "contrast", "background",
                 "sharpness", "straightness", "jpeg_quality")  # fmt: skip
TAG_COLUMNS = tuple("tag_" + t.replace(" ", "_") for t in TAGS)
PREDICTION_COLUMNS = ("category", "confidence", *TAG_COLUMNS)
COLUMNS = IMAGE_COLUMNS + PREDICTION_COLUMNS
ROLES = Roles(prediction=PREDICTION_COLUMNS)
STATS_SIDE = 256  # statistics on a fixed-size grey copy: comparable across upload sizes

# libjpeg's luminance table at quality 50 (ITU T.81 Annex K), in zig-zag order as PIL reads it.
_LUMA_50 = np.array([
    16, 11, 12, 14, 12, 10, 16, 14, 13, 14, 18, 17, 16, 19, 24, 40, 26, 24, 22, 22, 24, 49,
    35, 37, 29, 40, 58, 51, 61, 60, 57, 51, 56, 55, 64, 72, 92, 78, 64, 68, 87, 69, 55, 56,
    80, 109, 81, 87, 95, 98, 103, 104, 103, 62, 77, 113, 121, 112, 100, 120, 92, 101, 103, 99,
], dtype=np.float64)  # fmt: skip


def jpeg_quality(img: Image.Image) -> float:
    """The libjpeg quality (1-100) whose scaling gives this JPEG's luminance table; 100 for a
    lossless format. Inverts libjpeg's rule: scale = 5000/q below 50, 200 - 2q above."""
    tables = getattr(img, "quantization", None)
    if not tables:
        return 100.0
    luma = np.asarray(tables[min(tables)], dtype=np.float64)
    scale = 100.0 * luma.sum() / _LUMA_50.sum()
    quality = 5000.0 / scale if scale > 100 else (200.0 - scale) / 2
    return float(np.clip(quality, 1, 100))


def image_stats(data: bytes, img: Image.Image) -> dict[str, float]:
    """The photo as uploaded (`data`: its header gives size and quantisation) and as decoded."""
    header = Image.open(io.BytesIO(data))
    width, height = header.size
    grey = np.asarray(img.convert("L").resize((STATS_SIDE, STATS_SIDE)), dtype=np.float64)
    laplacian = (4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1]
                 - grey[1:-1, :-2] - grey[1:-1, 2:])  # fmt: skip
    corners = np.concatenate([grey[:8, :8], grey[:8, -8:], grey[-8:, :8], grey[-8:, -8:]])
    return {
        "width": float(width),
        "height": float(height),
        "aspect": round(width / height, 4),
        "brightness": round(float(grey.mean()), 3),
        "contrast": round(float(grey.std()), 3),
        "background": round(float(np.median(corners)), 3),
        "sharpness": round(float(np.log1p(laplacian.var())), 4),
        "straightness": round(_straightness(grey), 4),
        "jpeg_quality": round(jpeg_quality(header), 2),
    }


def _straightness(grey: np.ndarray) -> float:
    """The share of edge strength within 10 degrees of horizontal or vertical. A product
    photo is shot square to the garment; a tilted one moves its edges off the axes."""
    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    angle = np.degrees(np.arctan2(gy, gx)) % 90.0
    near_axis = (angle < 10.0) | (angle > 80.0)
    total = float(magnitude.sum())
    return float(magnitude[near_axis].sum()) / total if total else 1.0


def answer_stats(answer: dict[str, Any]) -> dict[str, float]:
    """The answer `TaggerModel.describe` gives: top-1 category (as its index), its
    probability, each tag's decision."""
    top = answer["categories"][0]
    out = {
        "category": float(CATEGORIES.index(top["category"])),
        "confidence": float(top["probability"]),
    }
    for name, column in zip(TAGS, TAG_COLUMNS, strict=True):
        out[column] = float(answer["tags"][name]["present"])
    return out


def tag_record(data: bytes, img: Image.Image, answer: dict[str, Any], model: str) -> dict[str, Any]:
    return {"model": model, **image_stats(data, img), **answer_stats(answer)}


def write_reference(
    model_dir: str | Path, data_dir: str | Path, rows: int = REFERENCE_ROWS
) -> Path:
    """The profile of the first `rows` test images, served the way /tag serves them, as
    MODEL_DIR/reference.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlsys.files import atomic_write_bytes
    from mlsys.tagger.inference import TaggerModel
    from mlsys.tagger.preprocess import decode_image
    from mlsys.tagger.schema import open_garments

    model = TaggerModel(model_dir)
    data = open_garments(data_dir)
    records = []
    for uuid in data.test_uuids[:rows]:
        raw = data.image_bytes(uuid)
        img = decode_image(raw)
        records.append(tag_record(raw, img, model.describe(model.predict_images([img])), ""))
    table = pa.table({c: [r[c] for r in records] for c in COLUMNS})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    path = Path(model_dir) / REFERENCE_FILE
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


def load_reference(model_dir: str | Path) -> Columns:
    from mlsys.platform.drift_report import read_columns

    return read_columns(Path(model_dir) / REFERENCE_FILE, COLUMNS)


class TagMonitor:
    """A tagger version's reference, calibrated once, and the windows cut from its records."""

    def __init__(self, version: str, calibrated: Baseline, size: int = WINDOW) -> None:
        self.version, self.size, self.baseline = version, size, calibrated
        self.pending: list[dict[str, Any]] = []
        self.done = 0

    @classmethod
    def for_reference(cls, version: str, reference: Columns, size: int = WINDOW) -> TagMonitor:
        return cls(version, baseline(reference, dict.fromkeys(reference, size)), size)

    def fresh(self) -> TagMonitor:
        """The same calibrated reference, no windows yet: another stream judged alike."""
        return TagMonitor(self.version, self.baseline, self.size)

    def add(self, records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Columns]]:
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
