"""The RankNet a serving process holds: the folded scorer of a model file, its version, the
probe the registry checks it with, and the card the registry records about it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlsys.platform.registry import ModelCard
from mlsys.recommender.artifact import ArtifactError, load_ranknet
from mlsys.recommender.ranking import Scorer, probe_input


@dataclass(frozen=True)
class Model:
    scorer: Scorer
    version: str


def load_model(path: str | Path) -> Model:
    """Load a model dir (model.pt + model.json) or a bare kit-style model.pt for serving.

    `artifact.load_ranknet` checks the file and its metadata; the version it reports (sha256
    prefix of model.pt) is what logs and /metrics show.
    """
    model, meta = load_ranknet(path)
    try:
        scorer = Scorer(dict(model.state_dict()))
    except ValueError as exc:  # non-finite parameters (load_ranknet already checked the keys)
        raise ArtifactError(f"{path}: {exc}") from exc
    return Model(scorer=scorer, version=str(meta["version"]))


def probe(model_dir: str | Path) -> list[float]:
    """The fixed input's click probabilities as `/recommend` computes them (the folded
    scorer): recorded at registration, recomputed before a version becomes champion."""
    scorer = load_model(model_dir).scorer
    user, restaurants = probe_input()
    return [float(x) for x in scorer.scores(scorer.user_part(user), restaurants)]


def model_card(model_dir: str | Path) -> ModelCard:
    """What the registry records about a RankNet model directory."""
    _, meta = load_ranknet(model_dir)
    test = meta.get("metrics", {}).get("test", {})
    return ModelCard(
        kind="ranknet",
        file_version=str(meta["version"]),
        data_checksum=str(meta.get("data_checksum", "")),
        metrics={k: float(test[k]) for k in ("accuracy", "roc_auc", "log_loss") if k in test},
        probe=probe(model_dir),
    )
