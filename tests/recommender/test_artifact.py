"""The artifact contract other stages (serving, evaluation) rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mlsys.files import file_version
from mlsys.recommender.artifact import (
    STATE_KEYS,
    ArtifactError,
    load_ranknet,
    save_ranknet,
)
from mlsys.recommender.model import INPUT_FEATURES, RankNet


def _model() -> RankNet:
    torch.manual_seed(3)
    return RankNet()


def test_save_then_load_round_trips_weights_and_metadata(tmp_path: Path) -> None:
    model = _model()
    meta = save_ranknet(
        model, tmp_path, data_checksum="abc", config={"lr": 1e-8}, metrics={"accuracy": 0.7}
    )
    assert meta["name"] == "ranknet"
    assert meta["version"] == file_version(tmp_path / "model.pt")
    assert meta["feature_order"] == list(INPUT_FEATURES)
    loaded, meta2 = load_ranknet(tmp_path)
    assert meta2 == json.loads((tmp_path / "model.json").read_text())
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    assert not loaded.training


def test_model_pt_is_what_the_kit_consumers_load(tmp_path: Path) -> None:
    model = _model()
    save_ranknet(model, tmp_path, data_checksum="x", config={}, metrics={})
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    assert sorted(scripted.state_dict()) == sorted(STATE_KEYS)
    x = torch.randn(7, 40)
    torch.testing.assert_close(scripted(x), model(x))


def test_bare_kit_model_pt_loads_with_minimal_metadata(tmp_path: Path) -> None:
    torch.jit.script(_model()).save(str(tmp_path / "kit.pt"))
    model, meta = load_ranknet(tmp_path / "kit.pt")
    assert meta["version"] == file_version(tmp_path / "kit.pt")
    assert meta["feature_order"] == list(INPUT_FEATURES)
    assert isinstance(model, RankNet)


def test_mismatched_metadata_is_rejected(tmp_path: Path) -> None:
    save_ranknet(_model(), tmp_path, data_checksum="x", config={}, metrics={})
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["version"] = "000000000000"
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="different runs"):
        load_ranknet(tmp_path)


def test_missing_or_foreign_files_fail_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="missing"):
        load_ranknet(tmp_path)
    torch.jit.script(torch.nn.Linear(40, 1)).save(str(tmp_path / "model.pt"))
    with pytest.raises(ArtifactError, match="state dict keys"):
        load_ranknet(tmp_path)
