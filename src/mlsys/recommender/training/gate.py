"""The gate between a retrained candidate and the registry: champion and candidate scored on
the same fresh holdout, and the candidate blessed only past every tolerance.

Like TFX's Evaluator, the verdict is a rule a person can read, recorded on the version: for
every metric, the champion's value, the candidate's, the difference and whether it is worse
beyond its tolerance, better beyond it, or within it. The candidate passes when no metric is
worse beyond its tolerance and at least one is better beyond it. "Why was my model not
blessed" (tfx#2376) is then answered by the version's own tags, and `--force` (tfx#4390)
registers it anyway, marked as forced, with the verdict it overrode.

Metrics, on the holdout's shown restaurants (`log_data`): ROC AUC, log loss, expected
calibration error (10 bins), and NDCG@10 per answer with at least one click, the model
re-ranking what was shown. Clicks in logged data favour the ranking that was served (a user
sees the top more often), so the champion has a head start on NDCG; with `ips` each click
counts 1 / propensity, which removes most of it under the position-based model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import numpy.typing as npt

# metric -> (+1 higher is better / -1 lower is better, tolerance)
TOLERANCES: dict[str, tuple[int, float]] = {
    "roc_auc": (+1, 0.002),
    "log_loss": (-1, 0.002),
    "ece": (-1, 0.01),
    "ndcg_at_10": (+1, 0.005),
}
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Holdout:
    """The rows a gate judges on: model inputs, labels, weights, and answer boundaries."""

    x: npt.NDArray[np.float32]
    click: npt.NDArray[np.bool_]
    weight: npt.NDArray[np.float64]
    starts: npt.NDArray[np.intp]  # first row of each answer, then len(rows)

    @classmethod
    def load(cls, data_dir: str | Path, *, ips: bool = False) -> Holdout:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from mlsys.errors import MlsysError
        from mlsys.recommender.data.dataset import open_dataset
        from mlsys.recommender.data.stream import FeatureTables

        dataset = open_dataset(data_dir)
        parts = [pq.read_table(f.path) for f in dataset.splits["test"]]
        columns = set(parts[0].column_names)
        if not {"request_id", "propensity"} <= columns:
            raise MlsysError(
                f"{data_dir}/test: no request_id or propensity column; the gate judges data "
                "built by `mlsys data from-log`"
            )
        table = pa.concat_tables(parts)
        users = table["user_id"].to_numpy().astype(np.int64)
        rests = table["restaurant_id"].to_numpy().astype(np.int64)
        x = FeatureTables.load(dataset).gather(users, rests)
        click = table["click"].to_numpy().astype(bool)
        weight = np.where(click, 1.0 / table["propensity"].to_numpy(), 1.0) if ips else (
            np.ones(len(click)))  # fmt: skip
        request = np.asarray(table["request_id"].to_pylist(), dtype=object)
        change = np.flatnonzero(request[1:] != request[:-1]) + 1
        starts = np.concatenate([[0], change, [len(request)]]).astype(np.intp)
        return cls(x, click, weight.astype(np.float64), starts)


def scores(model_dir: str | Path, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Click logits of the model's own network, in batches."""
    import torch

    from mlsys.recommender.artifact import load_ranknet

    model, _ = load_ranknet(model_dir)
    model.eval()
    out = np.empty(len(x), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, len(x), 65_536):
            chunk = torch.from_numpy(x[start : start + 65_536])
            out[start : start + len(chunk)] = model(chunk).double().numpy().ravel()
    return out


def metrics(logits: npt.NDArray[np.float64], holdout: Holdout) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    y, w = holdout.click, holdout.weight
    p = 1.0 / (1.0 + np.exp(-logits))
    margin = np.where(y, logits, -logits)
    log_loss = float(np.average(np.logaddexp(0.0, -margin), weights=w))
    idx = np.minimum((p * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    count = np.bincount(idx, weights=w, minlength=CALIBRATION_BINS)
    mean_p = np.bincount(idx, weights=w * p, minlength=CALIBRATION_BINS)
    clicked = np.bincount(idx, weights=w * y, minlength=CALIBRATION_BINS)
    ece = float(np.abs(mean_p - clicked).sum() / count.sum())
    return {
        "roc_auc": float(roc_auc_score(y, logits, sample_weight=w)),
        "log_loss": log_loss,
        "ece": ece,
        "ndcg_at_10": ndcg_at(10, logits, holdout),
    }


def ndcg_at(k: int, logits: npt.NDArray[np.float64], holdout: Holdout) -> float:
    """Mean NDCG@k over answers with a click: the model re-ranks the answer's restaurants,
    each click gains its weight."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    gain = np.where(holdout.click, holdout.weight, 0.0)
    total, answers = 0.0, 0
    for a, b in zip(holdout.starts[:-1], holdout.starts[1:], strict=True):
        g = gain[a:b]
        if not g.any():
            continue
        order = np.argsort(-logits[a:b], kind="stable")[:k]
        ideal = np.sort(g)[::-1][:k]
        total += float(g[order] @ discount[: len(order)]) / float(ideal @ discount[: len(ideal)])
        answers += 1
    return total / answers if answers else float("nan")


class Judgement(StrEnum):
    """One metric, candidate against champion, by its tolerance."""

    BETTER = "better beyond"
    WITHIN = "within"
    WORSE = "worse beyond"
    NOT_COMPUTED = "not computed"


class GateDecision(StrEnum):
    """What the registry records on the candidate's version (`mlsys.gate.verdict`)."""

    BLESSED = "blessed"
    REFUSED = "refused"
    FORCED = "forced"  # refused, and registered as challenger anyway by a person


@dataclass(frozen=True)
class Comparison:
    metric: str
    champion: float
    candidate: float
    tolerance: float
    judgement: Judgement

    def reason(self) -> str:
        if self.judgement is Judgement.NOT_COMPUTED:
            return f"{self.metric}: not computed (no answer with a click?)"
        return (f"{self.metric}: {self.champion:.4f} -> {self.candidate:.4f} "
                f"({self.judgement} the tolerance {self.tolerance:g})")  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    comparisons: list[Comparison]
    champion: dict[str, float]
    candidate: dict[str, float]

    def count(self, judgement: Judgement) -> int:
        return sum(c.judgement is judgement for c in self.comparisons)

    @property
    def passed(self) -> bool:
        """No metric worse beyond its tolerance, and at least one better beyond it."""
        return self.count(Judgement.WORSE) == 0 and self.count(Judgement.BETTER) > 0

    def decision(self, forced: bool = False) -> GateDecision:
        if self.passed:
            return GateDecision.BLESSED
        return GateDecision.FORCED if forced else GateDecision.REFUSED

    @property
    def reasons(self) -> list[str]:
        """For people: every metric's comparison, then the rule's conclusion."""
        worse, better = self.count(Judgement.WORSE), self.count(Judgement.BETTER)
        if worse:
            last = f"refused: {worse} metric(s) worse beyond tolerance"
        elif not better:
            last = "refused: no metric better beyond its tolerance"
        else:
            last = f"blessed: {better} metric(s) better, none worse"
        return [c.reason() for c in self.comparisons] + [last]

    def tags(self, forced: bool = False) -> dict[str, str]:
        """What the registry records on the candidate's version."""
        return {
            "mlsys.gate.verdict": str(self.decision(forced)),
            "mlsys.gate.reasons": json.dumps(self.reasons),
            "mlsys.gate.champion": json.dumps(self.champion),
            "mlsys.gate.candidate": json.dumps(self.candidate),
        }


def judge(
    champion: dict[str, float],
    candidate: dict[str, float],
    tolerances: dict[str, tuple[int, float]] = TOLERANCES,
) -> Verdict:
    comparisons = []
    for name, (sign, tol) in tolerances.items():
        old, new = champion[name], candidate[name]
        gain = sign * (new - old)
        if np.isnan(gain):
            judgement = Judgement.NOT_COMPUTED
        elif gain < -tol:
            judgement = Judgement.WORSE
        elif gain > tol:
            judgement = Judgement.BETTER
        else:
            judgement = Judgement.WITHIN
        comparisons.append(Comparison(name, old, new, tol, judgement))
    return Verdict(comparisons, champion, candidate)


def evaluate_pair(
    champion_dir: str | Path, candidate_dir: str | Path, data_dir: str | Path, *, ips: bool = False
) -> Verdict:
    holdout = Holdout.load(data_dir, ips=ips)
    return judge(
        metrics(scores(champion_dir, holdout.x), holdout),
        metrics(scores(candidate_dir, holdout.x), holdout),
    )
