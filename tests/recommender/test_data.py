"""Opening a dataset: wrong or truncated files fail with the file and the column named."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlsys.cli import main
from mlsys.errors import DatasetError
from mlsys.recommender.data.dataset import open_dataset


@pytest.fixture
def data(tiny_data: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset that a test may damage."""
    out = tmp_path / "data"
    shutil.copytree(tiny_data, out)
    return out


def _rewrite(
    path: Path, change: dict[str, pa.Array] | None = None, drop: str | None = None
) -> None:
    table = pq.read_table(path)
    for name, values in (change or {}).items():
        table = table.set_column(table.schema.get_field_index(name), name, values)
    if drop is not None:
        table = table.drop_columns([drop])
    pq.write_table(table, path)


def _without_manifest(root: Path) -> Path:
    (root / "manifest.json").unlink()
    return root


def test_opens_a_good_dataset(tiny_data: Path) -> None:
    ds = open_dataset(tiny_data)
    assert ds.user_features().shape == (2000, 30)
    assert ds.user_features().dtype == np.float32
    assert ds.restaurant_features().shape == (1000, 10)
    assert ds.restaurant_locations().shape == (1000, 2)
    rows = sum(len(u) for _, u, _, _ in ds.iter_clicks("test"))
    assert rows == ds.rows("test") == 8000


def test_accepts_a_kit_dataset_without_manifest(data: Path) -> None:
    ds = open_dataset(_without_manifest(data))
    assert ds.manifest is None
    assert ds.rows("train") == 40_000
    assert len(ds.checksum) == 64


def test_truncated_file_names_the_file(data: Path) -> None:
    path = data / "train" / "train_02.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"train_02\.parquet.*not a readable parquet"):
        open_dataset(_without_manifest(data))


def test_truncated_file_is_caught_by_the_manifest_size_first(data: Path) -> None:
    path = data / "test" / "test_01.parquet"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=r"test_01\.parquet"):
        open_dataset(data)


def test_missing_column_names_file_and_column(data: Path) -> None:
    _rewrite(data / "user_features.parquet", drop="f17")
    with pytest.raises(
        DatasetError, match=r"user_features.parquet, column 'f17': column is missing"
    ):
        open_dataset(_without_manifest(data))


def test_wrong_dtype_names_file_and_column(data: Path) -> None:
    path = data / "test" / "test_00.parquet"
    n = pq.ParquetFile(path).metadata.num_rows
    _rewrite(path, {"click": pa.array(["yes"] * n)})
    with pytest.raises(DatasetError, match=r"test_00.parquet, column 'click': has type string"):
        open_dataset(_without_manifest(data))


def test_out_of_range_ids_name_file_and_column(data: Path) -> None:
    path = data / "train" / "train_01.parquet"
    ids = pq.read_table(path).column("restaurant_id").to_numpy().copy()
    ids[5] = 1000  # one past the last restaurant
    _rewrite(path, {"restaurant_id": pa.array(ids)})
    with pytest.raises(
        DatasetError, match=r"train_01.parquet, column 'restaurant_id': values span"
    ):
        open_dataset(_without_manifest(data))


def test_non_dense_feature_ids_are_rejected(data: Path) -> None:
    path = data / "restaurant_features.parquet"
    ids = np.arange(1000, dtype=np.int64)
    ids[[3, 4]] = ids[[4, 3]]
    _rewrite(path, {"restaurant_id": pa.array(ids)})
    with pytest.raises(DatasetError, match=r"restaurant_id.*0..999 in order"):
        open_dataset(_without_manifest(data))


def test_missing_split_and_missing_file(data: Path) -> None:
    shutil.rmtree(data / "test")
    with pytest.raises(DatasetError, match=r"test: no test_\*.parquet files"):
        open_dataset(_without_manifest(data))
    (data / "user_features.parquet").unlink()
    with pytest.raises(DatasetError, match=r"user_features.parquet: file is missing"):
        open_dataset(data)


def test_manifest_checksum_catches_replaced_content(data: Path) -> None:
    path = data / "train" / "train_00.parquet"
    raw = bytearray(path.read_bytes())
    raw[200] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(raw))
    open_dataset(data)  # sizes and row counts still match: the cheap check passes
    with pytest.raises(DatasetError, match=r"train_00\.parquet: content does not match the sha256"):
        open_dataset(data, verify_checksums=True)


def test_bad_rows_found_while_streaming_without_statistics(data: Path) -> None:
    """Files written without statistics are checked batch by batch as they are read."""
    path = data / "test" / "test_00.parquet"
    table = pq.read_table(path)
    clicks = table.column("click").to_numpy().copy()
    clicks[0] = 7
    table = table.set_column(2, "click", pa.array(clicks))
    pq.write_table(table, path, write_statistics=False)
    ds = open_dataset(_without_manifest(data))
    with pytest.raises(
        DatasetError, match=r"test_00.parquet, column 'click': values span \[0, 7\]"
    ):
        list(ds.iter_clicks("test"))


def test_cli_prints_one_line_not_a_traceback(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _rewrite(data / "user_features.parquet", drop="f03")
    assert main(["validate", "data", str(_without_manifest(data))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mlsys: error: {data / 'user_features.parquet'}, column 'f03': column is missing"
    ]


def test_cli_validate_reports_a_good_dataset(
    tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "data", str(tiny_data), "--checksums"]) == 0
    out = capsys.readouterr().out
    assert "40,000 rows in 4 files" in out and "checksums: verified" in out


def test_report_writes_markdown_and_plots(tiny_data: Path, tmp_path: Path) -> None:
    from mlsys.recommender.data.report import write_data_report

    path = write_data_report(open_dataset(tiny_data), tmp_path / "report", sample_rows=20_000)
    text = path.read_text()
    for section in ("## Clicks", "## Features", "## Cluster structure", "## Requests"):
        assert section in text
    assert "Bayes-optimal accuracy" in text
    for png in ("click_rule.png", "user_features.png", "clusters.png", "requests.png"):
        assert (tmp_path / "report" / png).stat().st_size > 5_000
        assert f"]({png})" in text


def _set_value(path: Path, column: str, row: int, value: float) -> None:
    values = pq.read_table(path).column(column).to_numpy().copy()
    values[row] = value
    _rewrite(path, {column: pa.array(values)})


@pytest.mark.parametrize(
    ("file", "column", "value", "problem"),
    [
        # 1e39 is a finite double but inf as the float32 the tables and the store keep
        ("user_features.parquet", "f07", 1e39, "finite float32"),
        ("restaurant_features.parquet", "f02", -3.5e38, "finite float32"),
        ("restaurant_features.parquet", "f02", np.nan, "finite float32"),
        ("restaurant_features.parquet", "latitude", 999.0, r"within \[-90, 90\]"),
        ("restaurant_features.parquet", "longitude", np.nan, r"within \[-180, 180\]"),
    ],
)
def test_values_the_stored_type_cannot_hold_stop_load_and_training_with_one_line(
    data: Path,
    tmp_path: Path,
    redis_server: Any,
    capsys: pytest.CaptureFixture[str],
    file: str,
    column: str,
    value: float,
    problem: str,
) -> None:
    """Before this check, 1e39 loaded as inf, trained to `loss nan` and served NaN scores."""
    _set_value(data / file, column, 17, value)
    data = _without_manifest(data)
    model_dir = tmp_path / "model"
    rc = main(["train", "ranknet", str(data), "--out", str(model_dir), "--epochs", "1",
               "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith(f"mlsys: error: {data / file}, column '{column}': ")
    assert re.search(problem, err[0]) and "position 17" in err[0]
    assert not model_dir.exists()  # nothing written

    # the feature load reads through the same check, before it writes to Redis
    from mlsys.platform.redis_client import connect
    from mlsys.recommender.serving.online_store import SEQ_KEY

    client = connect(redis_server.url, timeout_s=5)
    seq = client.get(SEQ_KEY)
    assert main(["features", "load", str(data), "--redis", redis_server.url]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{file}, column '{column}'" in err[0], err
    assert client.get(SEQ_KEY) == seq  # no namespace was started
