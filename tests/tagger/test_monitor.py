"""The tagger's drift monitor: photo statistics that see each corruption, the reference profile
written at training time, windows judged against it, and /tag logging its answers to a real
Redis."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image, ImageFilter

from mlsys.platform.event_log import stream_key
from mlsys.tagger.data.photo_stats import COLUMNS, image_stats, jpeg_quality, tag_record
from mlsys.tagger.inference import TaggerModel
from mlsys.tagger.online.drift_monitor import TagMonitor, load_reference
from mlsys.tagger.preprocess import decode_image
from mlsys.tagger.schema import open_garments
from mlsys.tagger.training.augment import CORRUPTIONS
from mlsys.tagger.training.reference import REFERENCE_FILE


def _photo(seed: int = 0) -> Image.Image:
    """A light studio background with a darker, striped garment-like block, square to the
    frame."""
    rng = np.random.default_rng(seed)
    px = np.full((256, 256, 3), 235, dtype=np.uint8)
    px[40:220, 70:190] = rng.integers(40, 120, 3)
    px[40:220:12, 70:190] = 200
    return Image.fromarray(px)


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize("quality", [30, 50, 75, 90])
def test_jpeg_quality_is_read_back_from_the_quantisation_tables(quality: int) -> None:
    raw = _jpeg(_photo(), quality)
    assert abs(jpeg_quality(Image.open(io.BytesIO(raw))) - quality) <= 1.5
    png = io.BytesIO()
    _photo().save(png, format="PNG")
    assert jpeg_quality(Image.open(io.BytesIO(png.getvalue()))) == 100.0


def test_each_corruption_moves_the_statistic_meant_to_see_it() -> None:
    img = _photo()
    clean = image_stats(_jpeg(img, 90), img)
    blurred = img.filter(ImageFilter.GaussianBlur(1.0))
    rotated = img.rotate(10, fillcolor=(235, 235, 235))
    darker = Image.fromarray((np.asarray(img) * 0.8).astype(np.uint8))
    assert image_stats(_jpeg(blurred, 90), blurred)["sharpness"] < clean["sharpness"] - 0.5
    assert image_stats(_jpeg(rotated, 90), rotated)["straightness"] < clean["straightness"] - 0.2
    assert image_stats(_jpeg(darker, 90), darker)["background"] < clean["background"] - 30
    assert image_stats(_jpeg(img, 30), img)["jpeg_quality"] < 35
    assert clean["width"] == clean["height"] == 256 and clean["aspect"] == 1.0


def _served(model: TaggerModel, raw: bytes) -> dict[str, Any]:
    img = decode_image(raw)
    return tag_record(raw, img, model.describe(model.predict_images([img])), "tagger/1")


def test_training_writes_the_reference_and_corrupted_traffic_is_flagged(
    tagger_model: Path, garments_tiny: Path
) -> None:
    assert (tagger_model / REFERENCE_FILE).is_file()  # written by train_tagger
    reference = load_reference(tagger_model)
    assert set(reference) == set(COLUMNS)
    # The tiny set has few validation images: profile the labelled ones, as many as needed.
    model = TaggerModel(tagger_model)
    data = open_garments(garments_tiny)
    uuids = [str(u) for u in data.data.column("uuid").to_pylist()]
    rows = [_served(model, data.image_bytes(u)) for u in uuids]
    reference = {c: np.asarray([r[c] for r in rows], dtype=np.float64) for c in COLUMNS}
    size = 20
    clean = TagMonitor.for_reference("tagger/1", reference, size)
    test = data.test_uuids[:size]
    judged = clean.add([_served(model, data.image_bytes(u)) for u in test])
    assert [w.drifted for w, _ in judged] == [False]

    corrupted = clean.fresh()
    records = []
    for i, u in enumerate(test):
        src = Image.open(io.BytesIO(data.image_bytes(u))).convert("RGB")
        records.append(_served(model, _jpeg(CORRUPTIONS["blur_sigma1"](src, random.Random(i)), 90)))
    ((window, _),) = corrupted.add(records)
    assert window.drifted and "sharpness" in window.features


def test_tag_answers_are_logged_for_the_monitor(
    tagger_model: Path, redis_server: Any, json_bodies: Any
) -> None:
    from starlette.testclient import TestClient

    from mlsys.compose.app import build_app
    from mlsys.platform.settings import Settings

    client = redis.Redis.from_url(redis_server.url)
    client.delete(stream_key("tags"))
    settings = Settings(tagger_model_dir=str(tagger_model), log_requests=False,
                        log_redis_url=redis_server.url)  # fmt: skip
    with TestClient(build_app(settings)) as http:
        for seed in range(3):
            r = http.post("/tag", content=_jpeg(_photo(seed), 80),
                          headers={"content-type": "image/jpeg"})  # fmt: skip
            assert r.status_code == 200
        assert http.post("/tag", content=b"not an image").status_code == 415
    entries = client.xrange(stream_key("tags"))
    assert len(entries) == 3  # answers only
    record = json.loads(entries[0][1][b"json"])
    assert set(COLUMNS) <= set(record) and record["model"].startswith("garment-tagger/")
    assert 75 <= record["jpeg_quality"] <= 85
    client.delete(stream_key("tags"))
