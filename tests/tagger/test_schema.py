"""open_garments: the kit's layout is accepted, and every way a file can be wrong is reported
as one DatasetError naming the file and the column."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mlsys.cli import main
from mlsys.errors import DatasetError
from mlsys.tagger.schema import (
    CATEGORIES,
    COLORS,
    TAGS,
    check_predictions,
    open_garments,
)


@pytest.fixture
def garments(garments_tiny: Path) -> Path:
    """The session's tiny generated set (tests/tagger/conftest.py): 72 + 24 items, seed 17."""
    return garments_tiny


@pytest.fixture
def copy(garments: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "g"
    shutil.copytree(garments, dst)
    return dst


def _rewrite(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def test_contract_constants() -> None:
    assert len(CATEGORIES) == 5 and len(COLORS) == 28 and TAGS == ("polka dot", "floral", "checker")


def test_generated_set_opens(garments: Path) -> None:
    ds = open_garments(garments)
    assert ds.data.num_rows == 72 and ds.test.num_rows == 24
    assert ds.test_labels is not None and ds.test_labels.num_rows == 24
    assert ds.manifest is not None and ds.manifest["seed"] == 17
    uid = ds.test_uuids[0]
    assert ds.image_path(uid).name == f"{uid}.jpg"
    assert ds.image_bytes(uid)[:2] == b"\xff\xd8"


def test_kit_layout_without_our_extras(copy: Path) -> None:
    """The real files: no test_labels, no generator.json, images in a separate folder."""
    for name in ("test_labels.parquet", "generator.json", "latents.parquet"):
        (copy / name).unlink()
    shutil.move(copy / "images", copy.parent / "data")
    with pytest.raises(DatasetError, match="image folder missing"):
        open_garments(copy)
    ds = open_garments(copy, images_dir=copy.parent / "data")
    assert ds.test_labels is None and ds.manifest is None


@pytest.mark.parametrize(
    ("file", "column", "change", "message"),
    [
        ("data.parquet", "polka dot", lambda t: t.drop_columns(["polka dot"]), "missing"),
        ("data.parquet", "cc3",
         lambda t: t.set_column(1, "cc3", pa.array(["JEANS"] * t.num_rows)), "unknown values"),
        ("data.parquet", "color1",
         lambda t: t.set_column(2, "color1", pa.array(["BEIGE"] * t.num_rows)), "unknown values"),
        ("data.parquet", "floral",
         lambda t: t.set_column(4, "floral", pa.array([2] * t.num_rows)), "0/1"),
        ("data.parquet", "checker",
         lambda t: t.set_column(5, "checker", pa.array(["1"] * t.num_rows)), "integer"),
        ("data.parquet", "uuid",
         lambda t: t.set_column(0, "uuid", pa.array([t["uuid"][0].as_py()] * t.num_rows)),
         "not unique"),
        ("data.parquet", "uuid", lambda t: t.set_column(0, "uuid", pc.cast(
            pa.array(range(t.num_rows)), pa.int64())), "must be a string"),
        ("test.parquet", "uuid", lambda t: t.rename_columns(["id"]), "missing"),
        ("test_labels.parquet", "cc3",
         lambda t: t.set_column(1, "cc3", pa.array([None] * t.num_rows, pa.string())), "null"),
        ("example_predictions.parquet", "category2",
         lambda t: t.set_column(2, "category2", t["category1"]), "repeat category1"),
    ],
)  # fmt: skip
def test_bad_files_name_file_and_column(
    copy: Path, file: str, column: str, change: Callable[[pa.Table], pa.Table], message: str
) -> None:
    _rewrite(copy / file, change)
    with pytest.raises(DatasetError, match=message) as err:
        open_garments(copy)
    assert err.value.column == column
    assert Path(str(err.value.path)).name == file
    assert file in str(err.value) and column in str(err.value)


def test_missing_or_unreadable_files(copy: Path) -> None:
    (copy / "data.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match=r"data\.parquet: not a readable parquet file"):
        open_garments(copy)
    (copy / "data.parquet").unlink()
    with pytest.raises(DatasetError, match=r"data\.parquet: missing"):
        open_garments(copy)


def test_missing_image_and_split_overlap(copy: Path) -> None:
    ds = open_garments(copy)
    victim = ds.test_uuids[0]
    ds.image_path(victim).unlink()
    with pytest.raises(DatasetError, match="1 uuids have no image") as err:
        open_garments(copy)
    assert err.value.column == "uuid" and "test.parquet" in str(err.value)

    shutil.copy(copy / "data.parquet", copy / "test.parquet")
    _rewrite(copy / "test.parquet", lambda t: t.select(["uuid"]))
    with pytest.raises(DatasetError, match=r"also in data\.parquet"):
        open_garments(copy)


def test_check_predictions_rows_match_test_set(copy: Path) -> None:
    ds = open_garments(copy)
    path = copy / "example_predictions.parquet"
    table = pq.read_table(path)
    check_predictions(path, table, ds.test_uuids)
    with pytest.raises(DatasetError, match="1 test uuids missing") as err:
        check_predictions(path, table.slice(1), ds.test_uuids)
    assert err.value.column == "uuid"


def test_validate_cli(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "garments", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "72 labelled, 24 test, 96 images" in out and "seed 17" in out
    (copy / "test.parquet").unlink()
    assert main(["validate", "garments", str(copy)]) == 1
    assert "test.parquet: missing" in capsys.readouterr().err
