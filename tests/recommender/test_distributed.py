"""Data-parallel training on torch.distributed: 2 real gloo ranks (`mlsys train ranknet
--nproc 2`) end with the parameters of one process on the same rows, and a resumed 2-rank run
with those of an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlsys.cli import main
from mlsys.recommender.artifact import load_ranknet
from mlsys.recommender.training.distributed import Ranks, shard

ARGS = ["--lr", "1e-3", "--limit-rows", "8000", "--no-shuffle", "--no-track", "--no-progress",
        "--no-eval", "--threads", "1"]  # fmt: skip


def _train(data: Path, out: Path, *extra: str) -> None:
    assert main(["train", "ranknet", str(data), "--out", str(out), *extra]) == 0


def _params(folder: Path) -> dict[str, torch.Tensor]:
    model, _ = load_ranknet(folder)
    return dict(model.state_dict())


def _assert_same(a: Path, b: Path) -> None:
    pa, pb = _params(a), _params(b)
    for name in pa:  # 16 Adam steps; only the order of float sums differs
        torch.testing.assert_close(pa[name], pb[name], rtol=1e-4, atol=1e-5, msg=name)


def test_shards_cover_every_row_once() -> None:
    for rows, world in ((1024, 2), (1000, 3), (1, 2), (7, 4)):
        parts = [shard(10, 10 + rows, Ranks(r, world)) for r in range(world)]
        covered = [i for a, b in parts for i in range(a, b)]
        assert covered == list(range(10, 10 + rows))
        assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


def test_two_ranks_end_with_the_parameters_of_one_process(tiny_data: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _train(tiny_data, one, "--epochs", "2", *ARGS)
    _train(tiny_data, two, "--epochs", "2", "--nproc", "2", *ARGS)
    _assert_same(one, two)
    # 8,000 rows at batch 1024: the last batch has 832 rows, split 416 + 416.
    assert (two / "checkpoint.pt").is_file() and (two / "reference.parquet").is_file()


def test_a_resumed_two_rank_run_matches_an_uninterrupted_one(
    tiny_data: Path, tmp_path: Path
) -> None:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _train(tiny_data, whole, "--epochs", "2", "--nproc", "2", *ARGS)
    _train(tiny_data, resumed, "--epochs", "1", "--nproc", "2", *ARGS)
    _train(tiny_data, resumed, "--epochs", "2", "--nproc", "2", "--resume", *ARGS)
    _assert_same(whole, resumed)


@pytest.mark.parametrize("world", [3])
def test_more_ranks_than_rows_in_the_last_batch_still_steps_together(
    tiny_data: Path, tmp_path: Path, world: int
) -> None:
    """1,025 rows: the last batch has 1 row, so two of three ranks have nothing to add."""
    one, many = tmp_path / "one", tmp_path / "many"
    args = [a if a != "8000" else "1025" for a in ARGS]
    _train(tiny_data, one, "--epochs", "1", *args)
    _train(tiny_data, many, "--epochs", "1", "--nproc", str(world), *args)
    _assert_same(one, many)
