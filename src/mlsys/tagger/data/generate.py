"""Generate a garment photo set in the kit's layout, with the accuracy ceiling it implies.

Item i is drawn from its own stream `default_rng([seed, i])` (uuid first, then the shape
latents, then everything the renderer varies), so its bytes and labels do not depend on how
many worker processes share the work. Items 0..count-1 are labelled (data.parquet), the next
test_count are the held-out test set (test.parquet; their labels go to test_labels.parquet).

Besides the kit's files the generator writes:
    latents.parquet   per item: split, shape latents, nuisance draws and p(category | shape);
                      for analysis (e.g. accuracy on ambiguous items), never a model input
    generator.json    seed, counts, version, tag/colour/category shares and the ceiling

Everything is written to a hidden sibling directory and renamed into place at the end, so an
interrupted run never leaves a half dataset under the requested name.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
import uuid as uuidlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mlsys.errors import MlsysError
from mlsys.files import atomic_directory, ignore_sigint
from mlsys.tagger.data import latents, render
from mlsys.tagger.schema import (
    CATEGORIES,
    DATA_FILE,
    EXAMPLE_PREDICTIONS_FILE,
    GENERATOR_MANIFEST,
    IMAGES_DIR,
    TAGS,
    TEST_FILE,
    TEST_LABELS_FILE,
)

GENERATOR_VERSION = "1"
LATENTS_FILE = "latents.parquet"
CHUNK = 50

Record = dict[str, Any]


def draw_item(seed: int, index: int) -> tuple[Record, bytes]:
    """One item's labels, latents and JPEG bytes: a pure function of (seed, index)."""
    rng = np.random.default_rng([seed, index])
    uid = str(uuidlib.UUID(bytes=rng.bytes(16), version=4))
    shape = latents.sample_shape(rng)
    item = render.sample_item(rng, shape)
    image = render.render(rng, item)
    data = render.encode_jpeg(image, item.jpeg_quality)
    post = latents.posterior(shape)
    record: Record = {
        "index": index,
        "uuid": uid,
        "cc3": shape.category,
        "color1": item.color,
        **{t: int(v) for t, v in item.tags.items()},
        "length": round(shape.length, 4),
        "sleeve": shape.sleeve,
        "neck": shape.neck,
        "placket": shape.placket,
        "hem": shape.hem,
        "stripes": int(item.stripes),
        "hanger": int(item.hanger),
        "background": item.background,
        "jpeg_quality": item.jpeg_quality,
        "blur": round(item.blur, 3),
        **{f"p_{c}": float(p) for c, p in zip(CATEGORIES, post, strict=True)},
    }
    return record, data


def _render_chunk(task: tuple[Path, int, int, int]) -> list[Record]:
    images, seed, start, stop = task
    out = []
    for index in range(start, stop):
        record, data = draw_item(seed, index)
        (images / f"{record['uuid']}.jpg").write_bytes(data)
        out.append(record)
    return out


def generate_garments(
    out_dir: str | Path,
    count: int = 12_000,
    test_count: int = 2_000,
    seed: int = 5,
    force: bool = False,
    workers: int | None = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a complete garment set to `out_dir` atomically; returns its manifest."""
    if count < 1 or test_count < 1:
        raise MlsysError(f"--count and --test-count must be positive (got {count}, {test_count})")
    started = time.perf_counter()
    with atomic_directory(Path(out_dir), force) as staging:
        (staging / IMAGES_DIR).mkdir()
        records = _render_all(staging / IMAGES_DIR, count + test_count, seed, workers, progress)
        seconds = time.perf_counter() - started
        manifest = _write_tables(staging, records, count, seed)
        manifest["seconds"] = round(seconds, 2)
        manifest["images_per_second"] = round((count + test_count) / seconds, 1)
        (staging / GENERATOR_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _render_all(
    images: Path, total: int, seed: int, workers: int | None, progress: bool
) -> list[Record]:
    tasks = [(images, seed, s, min(s + CHUNK, total)) for s in range(0, total, CHUNK)]
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    records: list[Record] = []
    bar = tqdm(total=total, unit="img", desc="generate garments", disable=not progress)
    if n_workers == 1:
        for task in tasks:
            records.extend(_render_chunk(task))
            bar.update(task[3] - task[2])
    else:
        with mp.get_context("fork").Pool(n_workers, initializer=ignore_sigint) as pool:
            for chunk in pool.imap_unordered(_render_chunk, tasks):
                records.extend(chunk)
                bar.update(len(chunk))
    bar.close()
    records.sort(key=lambda r: r["index"])
    return records


def _labels_table(records: list[Record]) -> pa.Table:
    return pa.table({
        "uuid": pa.array([r["uuid"] for r in records], pa.string()),
        "cc3": pa.array([r["cc3"] for r in records], pa.string()),
        "color1": pa.array([r["color1"] for r in records], pa.string()),
        **{t: pa.array([r[t] for r in records], pa.int64()) for t in TAGS},
    })  # fmt: skip


def _example_predictions(test: list[Record], seed: int) -> pa.Table:
    """Like the kit's example file: random but well-formed predictions."""
    rng = np.random.default_rng([seed, 1 << 30])
    first, second = [], []
    for _ in test:
        a, b = rng.choice(len(CATEGORIES), size=2, replace=False)
        first.append(CATEGORIES[int(a)])
        second.append(CATEGORIES[int(b)])
    return pa.table({
        "uuid": pa.array([r["uuid"] for r in test], pa.string()),
        "category1": pa.array(first, pa.string()),
        "category2": pa.array(second, pa.string()),
        **{t: pa.array(rng.integers(0, 2, len(test)), pa.int64()) for t in TAGS},
    })  # fmt: skip


def _ceiling(records: list[Record]) -> dict[str, float]:
    post = np.asarray([[r[f"p_{c}"] for c in CATEGORIES] for r in records])
    labels = np.asarray([CATEGORIES.index(r["cc3"]) for r in records])
    return latents.ceiling_report(post, labels)


def _write_tables(root: Path, records: list[Record], count: int, seed: int) -> dict[str, Any]:
    train, test = records[:count], records[count:]
    pq.write_table(_labels_table(train), root / DATA_FILE)
    pq.write_table(pa.table({"uuid": pa.array([r["uuid"] for r in test], pa.string())}),
                   root / TEST_FILE)  # fmt: skip
    pq.write_table(_labels_table(test), root / TEST_LABELS_FILE)
    pq.write_table(_example_predictions(test, seed), root / EXAMPLE_PREDICTIONS_FILE)
    table = pa.Table.from_pylist(
        [{"split": "train" if r["index"] < count else "test", **r} for r in records]
    )
    pq.write_table(table, root / LATENTS_FILE)

    n = len(records)
    tag_matrix = np.asarray([[r[t] for t in TAGS] for r in records])
    per_item = Counter(int(k) for k in tag_matrix.sum(1))
    return {
        "format": "mlsys-garments",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "counts": {"labelled": count, "test": len(test), "images": n},
        "image_size": render.OUTPUT_SIZE,
        "ceiling_definition": (
            "expected_top1 = mean over items of max_c p(c | shape latents), the expected top-1 "
            "accuracy of a Bayes-optimal classifier that sees the shape latents (length, sleeve, "
            "neck, placket, hem) exactly; everything else drawn is independent of the category "
            "given them. A pixel classifier can only do worse. See mlsys/tagger/data/latents.py."
        ),
        "ceiling": {"test": _ceiling(test), "labelled": _ceiling(train), "all": _ceiling(records)},
        "category_share": {
            c: round(sum(r["cc3"] == c for r in records) / n, 4) for c in CATEGORIES
        },
        "tag_share": {t: round(float(tag_matrix[:, j].mean()), 4) for j, t in enumerate(TAGS)},
        "tags_per_item": {str(k): round(v / n, 4) for k, v in sorted(per_item.items())},
        "distractor_stripes_share": round(sum(r["stripes"] for r in records) / n, 4),
        "color_share": {
            c: round(v / n, 4) for c, v in Counter(r["color1"] for r in records).most_common()
        },
        "files": sorted(
            [DATA_FILE, TEST_FILE, TEST_LABELS_FILE, EXAMPLE_PREDICTIONS_FILE, LATENTS_FILE]
        ),
    }
