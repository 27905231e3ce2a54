"""`mlsys retrain ranknet`: the batch retraining step of the loop (its CLI in
`compose/cli/retrain.py`).

Retraining, the way TFX's Trainer, Evaluator and Pusher split it: resolve the blessed model
(the champion alias), warm-start from its weights with the task's architecture and Adam (the
seeds' "fine-tuning most of the time"), log the run to MLflow, score champion and candidate on
the same fresh holdout (`recommender/training/gate.py`), and register the candidate as a new version
either way, with the verdict and its reasons as tags. Only a blessed (or `--force`d) candidate
becomes `challenger`, which is what shadow and canary then take.

The learning rate is the retraining's own: the task's 1e-8 moves each weight by about 1e-8
per step, so a fine-tune on a few hundred thousand logged rows would not move at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlsys.errors import MlsysError

if TYPE_CHECKING:
    from mlsys.recommender.training.gate import Verdict


@dataclass(frozen=True)
class Retrained:
    candidate_dir: Path
    champion: str  # what --from named, resolved: "ranknet/3" or a folder
    verdict: Verdict
    version: str | None  # registered version, None with --no-register
    challenger: bool  # aliased challenger
    forced: bool
    run_id: str | None

    def summary(self) -> dict[str, object]:
        return {
            "candidate_dir": str(self.candidate_dir),
            "from": self.champion,
            "passed": self.verdict.passed,
            "forced": self.forced,
            "reasons": self.verdict.reasons,
            "champion_metrics": self.verdict.champion,
            "candidate_metrics": self.verdict.candidate,
            "version": self.version,
            "challenger": self.challenger,
            "run_id": self.run_id,
        }


def resolve(source: str) -> tuple[Path, str]:
    """A model folder for `source` (a folder, or a registry URI fetched to the cache)."""
    from mlsys.platform.registry import Registry, parse_model_uri

    ref = parse_model_uri(source)
    if ref is None:
        folder = Path(source)
        if not (folder / "model.pt").is_file():
            raise MlsysError(f"{folder}: no model.pt there")
        return folder, str(folder)
    registry = Registry()
    info = registry.resolve(ref)
    return registry.download(info), f"{info.name}/{info.version}"


def retrain(
    source: str,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str = "ranknet",
    epochs: int = 2,
    lr: float = 1e-4,
    seed: int = 0,
    ips: bool = False,
    force: bool = False,
    register: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Retrained:
    from mlsys.compose.models import model_card, probe
    from mlsys.platform.registry import CHALLENGER, Registry
    from mlsys.platform.tracking import tracked_run
    from mlsys.recommender.training.gate import evaluate_pair
    from mlsys.recommender.training.train import TrainConfig, train

    champion_dir, champion = resolve(source)
    config = TrainConfig(epochs=epochs, lr=lr, seed=seed)
    with tracked_run(name, run_name=f"retrain from {champion}", enabled=register) as run:
        run.set_tags({"mlsys.retrained_from": champion, "mlsys.data": str(data_dir)})
        train(data_dir, out_dir, config, init_from=champion_dir, evaluate_test=False,
              progress=progress, log=log, run=run)  # fmt: skip
        verdict = evaluate_pair(champion_dir, out_dir, data_dir, ips=ips)
        run.log_metrics({f"gate.champion.{k}": v for k, v in verdict.champion.items()})
        run.log_metrics({f"gate.candidate.{k}": v for k, v in verdict.candidate.items()})
    for line in verdict.reasons:
        log(f"gate: {line}")
    version = None
    aliased = False
    if register:
        registry = Registry(create=True)
        version = registry.register(out_dir, name, model_card(out_dir), run_id=run.run_id)
        registry.tag_version(name, version, verdict.tags(forced=force and not verdict.passed))
        if verdict.passed or force:
            why = "gate: blessed" if verdict.passed else "forced past the gate's refusal"
            registry.set_alias(name, CHALLENGER, version, f"retrained from {champion}; {why}",
                               probe)  # fmt: skip
            aliased = True
        log(f"registered {name} version {version}"
            + (f", now {CHALLENGER}" if aliased else f", not {CHALLENGER} (refused)"))  # fmt: skip
    return Retrained(Path(out_dir), champion, verdict, version, aliased,
                     force and not verdict.passed, run.run_id)  # fmt: skip
