"""`mlsys data from-log`: the join of answers with their clicks, on an export written by hand
in the export's own schemas, so every rule is checked on rows whose label we know."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlsys.cli import main
from mlsys.errors import MlsysError
from mlsys.recommender.data.dataset import open_dataset
from mlsys.recommender.online.log_data import build
from mlsys.recommender.serving.impressions import schemas

MIN = 60_000  # ms


def _answer(rid: str, ts: int, ids: list[int], user: int = 1) -> dict[str, Any]:
    return {"request_id": rid, "ts_ms": ts, "user_id": user, "ids": ids,
            "scores": [0.5] * len(ids), "arm": "champion", "model": "ranknet/1"}  # fmt: skip


def _click(rid: str, ts: int, item: int, position: int) -> dict[str, Any]:
    return {"request_id": rid, "ts_ms": ts, "item_id": item, "position": position}


def _export(folder: Path, answers: list[dict[str, Any]], clicks: list[dict[str, Any]]) -> Path:
    for name, rows in (("impressions", answers), ("clicks", clicks)):
        (folder / name).mkdir(parents=True)
        table = pa.Table.from_pylist(rows, schema=schemas()[name])
        pq.write_table(table, folder / name / "part-0-0_0-0.parquet")
    return folder


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    t0 = 1_700_000_000_000
    answers = [_answer(f"r{i}", t0 + i * MIN, [10 + i, 20 + i, 30 + i], user=i) for i in range(10)]
    clicks = [
        _click("r0", t0 + 1 * MIN, 20, 2),  # within 5 min: a positive at position 2
        _click("r1", t0 + 1 * MIN + 7 * MIN, 11, 1),  # 7 min after: late, stays a negative
        _click("r2", t0 + 2 * MIN + 1000, 32, 3),
        _click("r2", t0 + 2 * MIN + 2000, 32, 3),  # the same click twice
        _click("gone", t0, 5, 1),  # its answer was not exported
        _click("r3", t0 + 3 * MIN + 1000, 99, 1),  # names a restaurant not at that position
        _click("r9", t0 + 9 * MIN + 1000, 19, 1),  # its answer is too young to label
    ]
    return _export(tmp_path / "log", answers, clicks)


def test_join_labels_by_window_and_holds_out_the_latest_answers(
    export: Path, tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "data"
    report = build(export, tiny_data, out, window_s=5 * 60, holdout=0.25)
    # The export ends at r9's click (t0 + 9 min + 1 s): answers after t0 + 4 min + 1 s wait.
    assert report["answers"]["labelled"] == 5 and report["answers"]["pending"] == 5
    assert report["clicks"] == {"clicks": 6, "joined": 2, "late": 1, "unmatched": 2,
                                "duplicate": 1}  # fmt: skip
    train = pq.read_table(out / "train" / "train_000.parquet").to_pylist()
    test = pq.read_table(out / "test" / "test_000.parquet").to_pylist()
    assert {r["request_id"] for r in test} == {"r4"}  # the latest 25 % by time
    assert len(train) == 4 * 3 and len(test) == 3
    positives = {(r["request_id"], r["restaurant_id"], r["position"]) for r in train if r["click"]}
    assert positives == {("r0", 20, 2), ("r2", 32, 3)}
    r0 = [r for r in train if r["request_id"] == "r0"]
    assert [r["position"] for r in r0] == [1, 2, 3]
    np.testing.assert_allclose([r["propensity"] for r in r0], 1 / np.log2([2, 3, 4]))
    assert open_dataset(out).rows("train") == 12  # the kit's layout: train, evaluate read it
    assert json.loads((out / "from_log.json").read_text())["window_min"] == 5


def test_refuses_what_it_cannot_label(export: Path, tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(MlsysError, match="older than the window"):
        build(export, tiny_data, tmp_path / "a", window_s=60 * 60)
    with pytest.raises(MlsysError, match="no exported impressions"):
        build(tmp_path / "nothing", tiny_data, tmp_path / "b", window_s=60)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("")
    with pytest.raises(MlsysError, match="not empty"):
        build(export, tiny_data, tmp_path / "c", window_s=60)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_prints_what_it_joined(
    export: Path, tiny_data: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "data"
    argv = ["data", "from-log", str(export), str(out), "--features", str(tiny_data),
            "--window", "5", "--holdout", "0.25"]  # fmt: skip
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "5 answers labelled" in said and "1 late" in said
