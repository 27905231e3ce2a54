"""predictions.parquet: the contract's exact columns, one row per test uuid, any kit layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlsys.cli import main
from mlsys.tagger.schema import CATEGORIES, PREDICTION_COLUMNS, TAGS, open_garments
from mlsys.tagger.serving.predict import predict_tagger


def test_predictions_file_has_the_contract_columns(
    tagger_model: Path, garments_tiny: Path, tmp_path: Path
) -> None:
    out = predict_tagger(
        garments_tiny, tagger_model, tmp_path / "predictions.parquet", progress=False
    )
    table = pq.read_table(out)
    assert tuple(table.column_names) == PREDICTION_COLUMNS
    assert table.schema.field("uuid").type == pa.string()
    test_uuids = open_garments(garments_tiny).test_uuids
    assert table.column("uuid").to_pylist() == test_uuids
    rows = table.to_pylist()
    for row in rows:
        assert row["category1"] in CATEGORIES and row["category2"] in CATEGORIES
        assert row["category1"] != row["category2"]
        assert all(row[t] in (0, 1) for t in TAGS)
    # Same columns and types as the kit's example file.
    example = pq.read_table(garments_tiny / "example_predictions.parquet")
    assert table.schema.names == example.schema.names


def test_cli_on_a_real_kit_layout(tagger_model: Path, garments_tiny: Path, tmp_path: Path) -> None:
    """The real homework: images unzipped into their own folder, no labels for the test set."""
    kit = tmp_path / "kit"
    images = kit / "data"
    images.mkdir(parents=True)
    for f in ("data.parquet", "test.parquet"):
        shutil.copy(garments_tiny / f, kit / f)
    for p in (garments_tiny / "images").iterdir():
        shutil.copy(p, images / p.name)
    out = tmp_path / "predictions.parquet"
    argv = ["predict", "tagger", str(kit), "--model", str(tagger_model)]
    assert main([*argv, "--images", str(images), "--out", str(out)]) == 0
    assert pq.read_table(out).num_rows == pq.read_table(kit / "test.parquet").num_rows


def test_cli_without_a_model_is_one_line_error(
    garments_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "tagger", str(garments_tiny), "--model", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlsys: error:") and "tagger.json" in err and "\n" not in err
