"""Tracking and the registry against a real MLflow sqlite store (issue 15, items 1 and 2).

One store for the module, in a temp folder; two RankNets trained on the tiny data through the
CLI (so the tracked run is what a user gets) and the tiny garment tagger.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlsys.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        env.setenv("MLSYS_MODEL_CACHE", str(folder / "cache"))
        env.delenv("MLSYS_ALIAS_HISTORY", raising=False)
        yield folder


@pytest.fixture(scope="module")
def ranknets(store: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("ranknets")
    dirs = []
    for seed, epochs in ((0, 1), (1, 2)):
        model = out / f"seed{seed}"
        args = ["train", "ranknet", str(tiny_data), "--out", str(model), "--epochs", str(epochs),
                "--seed", str(seed), "--no-progress"]  # fmt: skip
        assert main(args) == 0
        dirs.append(model)
    return dirs


def registry() -> Any:
    from mlsys.platform.registry import Registry

    return Registry()


def test_training_is_tracked_with_config_epochs_metrics_artifacts_and_versions(
    ranknets: list[Path], tiny_data: Path
) -> None:
    from mlsys.platform.tracking import client
    from mlsys.recommender.data.dataset import open_dataset

    mlflow = client()
    experiment = mlflow.get_experiment_by_name("ranknet")
    runs = mlflow.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    run = runs[1]  # seed 1, 2 epochs
    assert run.data.params["seed"] == "1" and run.data.params["lr"] == "1e-08"
    assert run.data.params["batch_size"] == "1024"
    steps = [m.step for m in mlflow.get_metric_history(run.info.run_id, "train_loss")]
    assert steps == [1, 2]
    assert 0.0 < run.data.metrics["test_accuracy"] < 1.0
    tags = run.data.tags
    assert tags["mlsys.data_checksum"] == open_dataset(tiny_data).checksum
    assert tags["mlsys.code_version"] and tags["mlsys.lib.torch"].startswith("2.13.0")
    files = {f.path for f in mlflow.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.pt", "model/model.json", "model/metrics.json",
            "model/evaluation.json", "model/reliability.png"} <= files  # fmt: skip


def test_no_track_logs_nothing(store: Path, tiny_data: Path, tmp_path: Path) -> None:
    from mlsys.platform.tracking import client

    def runs() -> int:  # the experiment exists only if an earlier test tracked a run
        experiment = client().get_experiment_by_name("ranknet")
        return 0 if experiment is None else len(client().search_runs([experiment.experiment_id]))

    before = runs()
    args = ["train", "ranknet", str(tiny_data), "--out", str(tmp_path / "m"), "--epochs", "1",
            "--no-progress", "--no-eval", "--no-track"]  # fmt: skip
    assert main(args) == 0
    assert runs() == before


def test_register_alias_promote_rollback_and_the_history(
    ranknets: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = ranknets
    assert main(["models", "register", str(first), "--name", "ranknet", "--alias", "champion",
                 "--reason", "first model"]) == 0  # fmt: skip
    assert "registered ranknet version 1" in capsys.readouterr().out
    assert main(["models", "register", str(second), "--name", "ranknet",
                 "--alias", "challenger"]) == 0  # fmt: skip
    reg = registry()
    assert reg.alias_target("ranknet", "champion") == "1"
    assert reg.alias_target("ranknet", "challenger") == "2"

    assert main(["models", "promote", "ranknet", "--reason", "higher accuracy"]) == 0
    assert (reg.alias_target("ranknet", "champion"), reg.alias_target("ranknet", "previous")) == (
        "2",
        "1",
    )
    assert reg.alias_target("ranknet", "challenger") is None
    assert main(["models", "rollback", "ranknet", "--reason", "latency"]) == 0
    assert reg.alias_target("ranknet", "champion") == "1"

    capsys.readouterr()
    assert main(["models", "list", "ranknet", "--json"]) == 0
    listed = {v["version"]: v for v in json.loads(capsys.readouterr().out)}
    assert listed["1"]["aliases"] == ["champion"] and listed["2"]["aliases"] == ["previous"]
    assert set(listed["1"]["metrics"]) == {"accuracy", "roc_auc", "log_loss"}
    assert listed["1"]["data_checksum"] == listed["2"]["data_checksum"] != ""

    assert main(["models", "history", "ranknet", "--json"]) == 0
    changes = [(r["alias"], r["from"], r["to"], r["reason"])
               for r in json.loads(capsys.readouterr().out)]  # fmt: skip
    assert changes == [
        ("champion", None, "1", "first model"),
        ("challenger", None, "2", "registered"),
        ("champion", "1", "2", "higher accuracy"),
        ("previous", None, "1", "higher accuracy"),
        ("challenger", "2", None, "higher accuracy"),
        ("champion", "2", "1", "latency"),
        ("previous", "1", "2", "latency"),
    ]
    # append-only, next to the registry's database
    history = Path(str(reg.uri).removeprefix("sqlite:///")).with_suffix(".alias-history.jsonl")
    assert len(history.read_text().splitlines()) == len(changes)


def _stored_files(version: str) -> Path:
    info = registry().version("ranknet", version)
    return Path(info.source.removeprefix("file://"))


def test_a_version_whose_files_changed_or_do_not_load_cannot_be_champion(
    ranknets: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlsys.compose.models import probe
    from mlsys.platform.registry import RegistryError

    first, second = ranknets
    for _ in range(2):
        assert main(["models", "register", str(second), "--name", "ranknet"]) == 0
    capsys.readouterr()
    tampered, broken = (v.version for v in registry().versions("ranknet")[:2][::-1])
    # same format, other weights: loads, but scores the probe differently
    for name in ("model.pt", "model.json"):
        shutil.copy(first / name, _stored_files(tampered) / name)
    with pytest.raises(RegistryError, match="probe scores"):
        registry().set_alias("ranknet", "champion", tampered, "test", probe)
    # truncated: does not load at all; the CLI says so in one line
    pt = _stored_files(broken) / "model.pt"
    pt.write_bytes(pt.read_bytes()[:100])
    assert main(["models", "alias", "ranknet", "champion", broken]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not load" in err[0], err
    assert registry().alias_target("ranknet", "champion") == "1"  # unchanged
    # other aliases are not gated: a broken version may still be challenger (for a test)
    registry().set_alias("ranknet", "challenger", broken, "test", probe)


def test_the_tagger_registers_under_its_own_name_and_kinds_do_not_mix(
    store: Path, tagger_model: Path, ranknets: list[Path]
) -> None:
    from mlsys.compose.models import model_card, probe
    from mlsys.platform.registry import RegistryError

    card = model_card(tagger_model)
    assert card.kind == "garment-tagger" and len(card.probe) == 5 + 3
    version = registry().register(tagger_model, "garment-tagger", card)
    registry().set_alias("garment-tagger", "champion", version, "first", probe)
    assert registry().resolve(parse("models:/garment-tagger@champion")).version == version
    with pytest.raises(RegistryError, match="holds garment-tagger models"):
        registry().register(ranknets[0], "garment-tagger", model_card(ranknets[0]))


def parse(uri: str) -> Any:
    from mlsys.platform.registry import parse_model_uri

    return parse_model_uri(uri)


def test_model_uris() -> None:
    from mlsys.platform.registry import ModelRef, RegistryError

    assert parse("models:/ranknet@champion") == ModelRef("ranknet", alias="champion")
    assert parse("models:/garment-tagger/3") == ModelRef("garment-tagger", version="3")
    assert parse("artifacts/ranknet") is None
    with pytest.raises(RegistryError):
        parse("models:/ranknet")


def test_help_and_the_serving_modules_do_not_import_mlflow() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from mlsys.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "import mlsys.compose.app, mlsys.recommender.serving.api, mlsys.tagger.serving.api\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_imports_no_numerical_library() -> None:
    """`mlsys --help` answers in milliseconds: every command module imports its work lazily."""
    code = (
        "import sys, contextlib, io\n"
        "from mlsys.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'torch', 'scipy', "
        "'pyarrow', 'PIL', 'redis'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_1_of_two_registries_are_two_models_in_one_cache(
    ranknets: list[Path], store: Path, tmp_path: Path
) -> None:
    """The download cache is shared by every registry a user touches (tests, a colleague's
    store): version 1 of `ranknet` in one must never be served from another's files."""
    from mlsys.compose.models import model_card
    from mlsys.platform.registry import Registry

    fetched = []
    for i, model in enumerate(ranknets):
        other = Registry(f"sqlite:///{tmp_path / f'other-{i}.db'}", create=True)
        version = other.register(model, "same-name", model_card(model))
        assert version == "1"
        fetched.append(other.download(other.version("same-name", "1")))
    assert fetched[0] != fetched[1]
    assert (fetched[0] / "model.pt").read_bytes() == (ranknets[0] / "model.pt").read_bytes()
    assert (fetched[1] / "model.pt").read_bytes() == (ranknets[1] / "model.pt").read_bytes()
