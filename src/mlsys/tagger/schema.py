"""The garment data contract, and `open_garments`, the one gate every stage reads data through.

The layout is the homework kit's (see /work/shared/reference/garment-tagging.md), so the real
files and our generated ones go through the same code:

    images/<uuid>.<ext>           one photo per item (jpg in practice)
    data.parquet                  uuid, cc3, color1, "polka dot", floral, checker
    test.parquet                  uuid
    example_predictions.parquet   uuid, category1, category2, "polka dot", floral, checker
    test_labels.parquet           (ours only) data.parquet's columns for the test items
    generator.json                (ours only) seed, counts, ambiguity ceiling

`open_garments` checks what a later stage would otherwise trip over deep inside a training
loop: files present and readable, columns present with the right type family, values inside
the closed vocabularies, unique uuids, and an image for every uuid. A problem raises
`DatasetError` naming the file and the column.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlsys.errors import DatasetError
from mlsys.files import JsonIn

CATEGORIES: tuple[str, ...] = ("BLOUSES", "CASUAL_DRESSES", "MINI_DRESSES", "SHIRTS", "TANK_TOPS")
COLORS: tuple[str, ...] = (
    "APRICOT", "BLACK", "BLUE", "BODY", "BROWN", "BURGUNDY", "CORAL", "CREAM", "DARK-GREEN",
    "GOLD", "GREEN", "GREY", "KHAKI", "LIGHT-BLUE", "LILAC", "MINT", "MUSTARD", "NAVY", "ORANGE",
    "PINK", "PURPLE", "RED", "ROSE", "SILVER", "TURQUOISE", "VARIOUS", "WHITE", "YELLOW",
)  # fmt: skip
# Note the space in "polka dot": the kit's column name, kept verbatim.
TAGS: tuple[str, ...] = ("polka dot", "floral", "checker")

IMAGES_DIR = "images"
DATA_FILE = "data.parquet"
TEST_FILE = "test.parquet"
EXAMPLE_PREDICTIONS_FILE = "example_predictions.parquet"
TEST_LABELS_FILE = "test_labels.parquet"
PREDICTIONS_FILE = "predictions.parquet"
GENERATOR_MANIFEST = "generator.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")

LABEL_COLUMNS: tuple[str, ...] = ("uuid", "cc3", "color1", *TAGS)
PREDICTION_COLUMNS: tuple[str, ...] = ("uuid", "category1", "category2", *TAGS)


@dataclass(frozen=True)
class GarmentDataset:
    """A validated garment directory. Tables are pyarrow; images are looked up by uuid."""

    root: Path
    data: pa.Table
    test: pa.Table
    test_labels: pa.Table | None
    images: dict[str, Path]
    manifest: JsonIn | None

    def image_path(self, uuid: str) -> Path:
        return self.images[uuid]

    def image_bytes(self, uuid: str) -> bytes:
        return self.images[uuid].read_bytes()

    @property
    def checksum(self) -> str:
        """Identifies the data a model was trained on: sha256 over the label tables and the
        generator's manifest (seed, version). The images are not hashed (14,000 files); they
        are named by the uuids the tables list."""
        from mlsys.files import sha256_file

        digests = [sha256_file(self.root / DATA_FILE), sha256_file(self.root / TEST_FILE)]
        if self.manifest is not None:
            digests.append(json.dumps(self.manifest, sort_keys=True))
        return hashlib.sha256("\n".join(digests).encode()).hexdigest()

    @property
    def test_uuids(self) -> list[str]:
        return [str(u) for u in self.test.column("uuid").to_pylist()]


def _read(path: Path) -> pa.Table:
    if not path.is_file():
        raise DatasetError(path, "missing")
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(path, f"not a readable parquet file ({exc})") from None


def _require_columns(path: Path, table: pa.Table, columns: tuple[str, ...]) -> None:
    for name in columns:
        if name not in table.column_names:
            raise DatasetError(path, f"missing (has {table.column_names})", column=name)


def _check_uuid(path: Path, table: pa.Table) -> None:
    col = table.column("uuid")
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise DatasetError(path, f"must be a string, found {col.type}", column="uuid")
    if col.null_count:
        raise DatasetError(path, f"{col.null_count} null values", column="uuid")
    if pc.count_distinct(col).as_py() != len(col):
        raise DatasetError(path, "uuids are not unique", column="uuid")


def _check_vocab(path: Path, table: pa.Table, column: str, allowed: tuple[str, ...]) -> None:
    col = table.column(column)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise DatasetError(path, f"must be a string, found {col.type}", column=column)
    if col.null_count:
        raise DatasetError(path, f"{col.null_count} null values", column=column)
    unknown = set(pc.unique(col).to_pylist()) - set(allowed)
    if unknown:
        raise DatasetError(path, f"unknown values {sorted(unknown)[:5]}", column=column)


def _check_binary(path: Path, table: pa.Table, column: str) -> None:
    col = table.column(column)
    if not (pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
        raise DatasetError(path, f"must be an integer 0/1, found {col.type}", column=column)
    if col.null_count:
        raise DatasetError(path, f"{col.null_count} null values", column=column)
    values = set(pc.unique(col.cast(pa.int64())).to_pylist())
    if not values <= {0, 1}:
        raise DatasetError(path, f"values must be 0/1, found {sorted(values)[:5]}", column=column)


def check_labels(path: Path, table: pa.Table) -> None:
    """data.parquet's schema (also test_labels.parquet's)."""
    _require_columns(path, table, LABEL_COLUMNS)
    _check_uuid(path, table)
    _check_vocab(path, table, "cc3", CATEGORIES)
    _check_vocab(path, table, "color1", COLORS)
    for tag in TAGS:
        _check_binary(path, table, tag)


def check_predictions(path: Path, table: pa.Table, test_uuids: list[str] | None = None) -> None:
    """predictions.parquet / example_predictions.parquet: two distinct categories and 0/1 tags,
    one row per test uuid (when `test_uuids` is given)."""
    _require_columns(path, table, PREDICTION_COLUMNS)
    _check_uuid(path, table)
    _check_vocab(path, table, "category1", CATEGORIES)
    _check_vocab(path, table, "category2", CATEGORIES)
    same = pc.sum(pc.equal(table.column("category1"), table.column("category2"))).as_py() or 0
    if same:
        raise DatasetError(path, f"{same} rows repeat category1", column="category2")
    for tag in TAGS:
        _check_binary(path, table, tag)
    if test_uuids is not None:
        got = set(table.column("uuid").to_pylist())
        missing, extra = set(test_uuids) - got, got - set(test_uuids)
        if missing or extra:
            raise DatasetError(
                path,
                f"{len(missing)} test uuids missing, {len(extra)} not in the test set",
                column="uuid",
            )


def _scan_images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(folder, "image folder missing")
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in IMAGE_EXTENSIONS:
                found[stem] = Path(entry.path)
    return found


def _check_images(folder: Path, path: Path, table: pa.Table, images: dict[str, Path]) -> None:
    missing = [u for u in table.column("uuid").to_pylist() if u not in images]
    if missing:
        raise DatasetError(
            path,
            f"{len(missing)} uuids have no image in {folder} (first: {missing[0]})",
            column="uuid",
        )


def open_garments(root: str | Path, images_dir: str | Path | None = None) -> GarmentDataset:
    """Validate a garment directory and return its tables and image index.

    `images_dir` defaults to `root/images`; point it elsewhere for an unzipped kit folder.
    test_labels.parquet and example_predictions.parquet are checked when present.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "not a directory")
    folder = Path(images_dir) if images_dir is not None else root / IMAGES_DIR
    images = _scan_images(folder)

    data_path = root / DATA_FILE
    data = _read(data_path)
    check_labels(data_path, data)
    _check_images(folder, data_path, data, images)

    test_path = root / TEST_FILE
    test = _read(test_path)
    _require_columns(test_path, test, ("uuid",))
    _check_uuid(test_path, test)
    _check_images(folder, test_path, test, images)
    overlap = set(test.column("uuid").to_pylist()) & set(data.column("uuid").to_pylist())
    if overlap:
        raise DatasetError(test_path, f"{len(overlap)} uuids also in {DATA_FILE}", column="uuid")

    labels: pa.Table | None = None
    labels_path = root / TEST_LABELS_FILE
    if labels_path.exists():
        labels = _read(labels_path)
        check_labels(labels_path, labels)
        if set(labels.column("uuid").to_pylist()) != set(test.column("uuid").to_pylist()):
            raise DatasetError(labels_path, f"uuids differ from {TEST_FILE}", column="uuid")

    example_path = root / EXAMPLE_PREDICTIONS_FILE
    if example_path.exists():
        check_predictions(example_path, _read(example_path), test_uuids=None)

    manifest: JsonIn | None = None
    manifest_path = root / GENERATOR_MANIFEST
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(manifest_path, f"not readable JSON ({exc})") from None
    return GarmentDataset(root, data, test, labels, images, manifest)
