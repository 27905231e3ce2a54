"""The retraining gate: its rule on known numbers, and champion against candidate on a logged
world whose clicks follow the tiny dataset's true rule (drawn here the way the simulated users
draw them, ranked by a random champion), so a candidate that learned passes and a broken one
(shuffled weights) is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlsys.recommender.online.log_data import build
from mlsys.recommender.serving.impressions import schemas
from mlsys.recommender.training.gate import (
    GateDecision,
    Holdout,
    Judgement,
    evaluate_pair,
    judge,
    metrics,
    ndcg_at,
)

BASE = {"roc_auc": 0.70, "log_loss": 0.40, "ece": 0.02, "ndcg_at_10": 0.50}


def test_judge_blesses_only_past_every_tolerance() -> None:
    assert judge(BASE, {**BASE, "roc_auc": 0.71}).passed
    same = judge(BASE, {**BASE, "roc_auc": 0.701})
    assert not same.passed and "no metric better" in same.reasons[-1]
    mixed = judge(BASE, {**BASE, "roc_auc": 0.75, "ece": 0.05})
    assert not mixed.passed and mixed.decision() is GateDecision.REFUSED
    ece = next(c for c in mixed.comparisons if c.metric == "ece")
    assert ece.judgement is Judgement.WORSE and mixed.count(Judgement.BETTER) == 1
    assert any(r.startswith("ece: 0.0200 -> 0.0500 (worse beyond") for r in mixed.reasons)
    assert mixed.tags()["mlsys.gate.verdict"] == "refused"
    assert mixed.tags(forced=True)["mlsys.gate.verdict"] == "forced"


def test_ndcg_ranks_within_each_answer() -> None:
    holdout = Holdout(
        x=np.zeros((5, 40), np.float32),
        click=np.array([0, 1, 0, 0, 0], bool),
        weight=np.ones(5),
        starts=np.array([0, 3, 5]),  # two answers; the second has no click and is skipped
    )
    assert ndcg_at(10, np.array([0.0, 1.0, 0.5, 9.0, 8.0]), holdout) == 1.0
    assert ndcg_at(10, np.array([1.0, 0.0, 0.5, 0.0, 0.0]), holdout) == pytest.approx(0.5)


def _logged_world(tiny: Path, champion: Path, out: Path, answers: int = 1500) -> Path:
    """Answers of 20 restaurants ranked by `champion`, clicked by the true rule with the
    simulated users' examination curve, exported in the log's schemas."""
    import torch

    from mlsys.recommender.artifact import load_ranknet
    from mlsys.recommender.data.dataset import open_dataset
    from mlsys.recommender.data.stream import FeatureTables
    from mlsys.recommender.online.simulate import clicks, population_of

    ds = open_dataset(tiny)
    population = population_of(ds, ds.request_rows())
    tables = FeatureTables.load(ds)
    model, _ = load_ranknet(champion)
    rng = np.random.default_rng(3)
    shown, clicked = [], []
    t0 = 1_700_000_000_000
    for i in range(answers):
        user = int(rng.integers(ds.n_users))
        items = rng.choice(ds.n_restaurants, 20, replace=False)
        with torch.no_grad():
            z = model(torch.from_numpy(tables.gather(np.full(20, user), items))).numpy().ravel()
        items = items[np.argsort(-z, kind="stable")]
        ts = t0 + i * 1000
        shown.append({"request_id": f"r{i}", "ts_ms": ts, "user_id": user,
                      "ids": items.tolist(), "arm": "champion", "model": "m"})  # fmt: skip
        hits = clicks(population.logits(user, items.tolist()), rng)
        clicked += [{"request_id": f"r{i}", "ts_ms": ts + 500, "item_id": int(items[p]),
                     "position": int(p) + 1} for p in np.flatnonzero(hits)]  # fmt: skip
    clicked.append({"request_id": "late", "ts_ms": t0 + answers * 1000 + 120_000})  # export end
    for name, rows in (("impressions", shown), ("clicks", clicked)):
        (out / "log" / name).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schemas()[name]),
                       out / "log" / name / "part-0-0_0-0.parquet")  # fmt: skip
    build(out / "log", tiny, out / "data", window_s=60)
    return out / "data"


@pytest.fixture(scope="module")
def world(
    tiny_data: Path, tmp_path_factory: pytest.TempPathFactory, make_ranknet: Any
) -> dict[str, Path]:
    from mlsys.recommender.training.train import TrainConfig, train

    work = tmp_path_factory.mktemp("gate")
    champion = make_ranknet(work / "champion", seed=5)
    data = _logged_world(tiny_data, champion, work)
    learned = work / "learned"
    train(data, learned, TrainConfig(epochs=3, lr=3e-3, batch_size=256), init_from=champion,
          evaluate_test=False, progress=False, log=lambda _: None)  # fmt: skip
    return {"data": data, "champion": champion, "learned": learned,
            "broken": make_ranknet(work / "broken", 0, shuffle_from=learned)}  # fmt: skip


def test_a_candidate_that_learned_the_clicks_is_blessed(world: dict[str, Path]) -> None:
    verdict = evaluate_pair(world["champion"], world["learned"], world["data"])
    assert verdict.passed, verdict.reasons
    assert verdict.candidate["roc_auc"] > verdict.champion["roc_auc"] + 0.02


def test_a_broken_candidate_is_refused(world: dict[str, Path]) -> None:
    verdict = evaluate_pair(world["learned"], world["broken"], world["data"])
    assert not verdict.passed
    assert any("worse beyond" in r for r in verdict.reasons), verdict.reasons


def test_ips_weights_clicks_by_their_position(world: dict[str, Path]) -> None:
    plain, weighted = Holdout.load(world["data"]), Holdout.load(world["data"], ips=True)
    assert (weighted.weight[weighted.click] >= 1).all() and weighted.weight.max() > 1
    assert (plain.weight == 1).all()
    logits: Any = np.zeros(len(plain.click))
    assert metrics(logits, plain)["roc_auc"] == pytest.approx(0.5)


def test_retrain_cli_registers_every_candidate_and_aliases_only_the_blessed(
    world: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    """tfx#2376 and tfx#4390: why a model was not blessed is on its version, and a person can
    force it past the gate, which is recorded too."""
    from mlsys.cli import main
    from mlsys.platform.registry import Registry

    name = "ranknet-gate"
    assert main(["models", "register", str(world["champion"]), "--name", name,
                 "--alias", "champion"]) == 0  # fmt: skip
    common = ["retrain", "ranknet", "--from", f"models:/{name}@champion",
              "--data", str(world["data"]), "--name", name]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "idle"), "--epochs", "1", "--lr", "1e-9"]) == 3
    registry = Registry()
    refused = registry.versions(name)[0]
    assert refused.tags["mlsys.gate.verdict"] == "refused"
    assert "no metric better" in refused.tags["mlsys.gate.reasons"]
    assert registry.alias_target(name, "challenger") is None

    assert main([*common, "--out", str(tmp_path / "learned"), "--epochs", "4", "--lr", "1e-2"]) == 0
    blessed = registry.versions(name)[0]
    assert blessed.tags["mlsys.gate.verdict"] == "blessed"
    assert registry.alias_target(name, "challenger") == blessed.version
    assert "now challenger" in capsys.readouterr().out

    forced = [*common, "--out", str(tmp_path / "forced"), "--epochs", "1", "--lr", "1e-9"]
    assert main([*forced, "--force"]) == 0
    last = registry.versions(name)[0]
    assert last.tags["mlsys.gate.verdict"] == "forced"
    assert registry.alias_target(name, "challenger") == last.version
