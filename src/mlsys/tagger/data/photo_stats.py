"""What a photo and its answer look like to the drift monitor: simple statistics of the photo
as uploaded (size, aspect, brightness, contrast, background, sharpness, straightness, the
JPEG quality its quantisation tables imply) and of the answer (top-1 category and its
probability, each tag's decision).

One record per photo (`tag_record`): the API logs it with every /tag answer, training writes
the reference profile of the same records (`training/reference.py`), and the monitor
(`online/drift_monitor.py`) compares the two.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from mlsys.tagger.schema import CATEGORIES, TAGS

IMAGE_COLUMNS = ("width", "height", "aspect", "brightness", "contrast", "background",
                 "sharpness", "straightness", "jpeg_quality")  # fmt: skip


TAG_COLUMNS = tuple("tag_" + t.replace(" ", "_") for t in TAGS)


PREDICTION_COLUMNS = ("category", "confidence", *TAG_COLUMNS)


COLUMNS = IMAGE_COLUMNS + PREDICTION_COLUMNS


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
