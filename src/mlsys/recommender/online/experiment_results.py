"""What the analysis of an online experiment finds, as types: the decision, each arm's
figures, the guardrails, and per mode its own section. `ExperimentReport.to_json` is the one
place the report's JSON (report.json, `--json`) is made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from mlsys.platform.online_stats import Interval
from mlsys.platform.rollout import Mode

# The report's JSON: what `json.dumps` takes, built only from the dataclasses below.
JsonObject = dict[str, object]


class Decision(StrEnum):
    """What the experiment says so far; the last two override the effect."""

    CHALLENGER_BETTER = "challenger better"
    CHALLENGER_WORSE = "challenger worse"
    UNDECIDED = "undecided"
    GUARDRAIL = "stop: guardrail"
    SAMPLE_RATIO_MISMATCH = "check logging: sample ratio mismatch"

    @classmethod
    def of(cls, interval: Interval) -> Decision:
        return {1: cls.CHALLENGER_BETTER, -1: cls.CHALLENGER_WORSE, 0: cls.UNDECIDED}[
            interval.decided
        ]

    @property
    def stops(self) -> bool:
        """A rollout under this decision should end: the challenger is worse, a guardrail
        broke, or the split itself cannot be trusted."""
        return self in (
            Decision.CHALLENGER_WORSE,
            Decision.GUARDRAIL,
            Decision.SAMPLE_RATIO_MISMATCH,
        )


@dataclass(frozen=True)
class SplitArm:
    """One arm of a canary or A/B test."""

    impressions: int
    users: int
    clicks: int
    ctr: float  # clicks per impression (NaN without impressions)
    ctr_interval: tuple[float, float]  # always-valid, descriptive: the latest interval
    item_ctr: float | None  # clicks per shown restaurant
    p95_server_ms: float | None
    errors: int
    error_rate: float


@dataclass(frozen=True)
class CreditedArm:
    """An arm of an interleaving test: the clicks credited to the items it placed."""

    impressions: int
    clicks: int
    ctr: float | None


@dataclass(frozen=True)
class ServedArm:
    """The champion under shadow mode: it answered everything."""

    impressions: int
    clicks: int
    ctr: float
    ctr_interval: tuple[float, float]
    p95_server_ms: float | None


@dataclass(frozen=True)
class Guardrail:
    limit: float
    excess: float | None  # challenger minus champion; None when an arm has no answers

    @property
    def ok(self) -> bool:
        return self.excess is None or self.excess <= self.limit


@dataclass(frozen=True)
class SplitResult:
    champion: SplitArm
    challenger: SplitArm
    lift: Interval  # challenger - champion, clicks per impression
    relative_lift: float | None
    requests_to_decide: int | None
    users_in_both_arms: int
    guardrails: dict[str, Guardrail]


@dataclass(frozen=True)
class Preference:
    interval: Interval  # +1 challenger won, -1 champion won, 0 tie; mean over informative answers
    challenger_wins: int
    champion_wins: int
    ties: int
    answers_where_arms_agree: int
    binomial_p: float


@dataclass(frozen=True)
class InterleavingResult:
    champion: CreditedArm
    challenger: CreditedArm
    preference: Preference
    p95_server_ms: float | None
    requests_to_decide: int | None


@dataclass(frozen=True)
class ShadowStats:
    scored: int
    coverage: float | None
    same_first: float | None
    overlap_at_10: float | None
    p95_shadow_ms: float | None


@dataclass(frozen=True)
class ShadowResult:
    champion: ServedArm
    shadow: ShadowStats


@dataclass(frozen=True)
class Series:
    """What the plot draws: per impression (or informative answer) its value, in order."""

    values: npt.NDArray[np.float64]
    is_challenger: npt.NDArray[np.bool_] | None  # None: interleaving's preferences
    decided_at: int | None  # position in `values` where the interval first excluded zero


@dataclass(frozen=True)
class ExperimentReport:
    model: str
    experiment: str
    mode: Mode
    percent: float
    challenger_alias: str
    started: float
    impressions: int
    clicks: int
    models: list[str]
    n_opt: float
    decision: Decision
    srm_p: float | None
    split: SplitResult | None = None
    interleaving: InterleavingResult | None = None
    shadow: ShadowResult | None = None
    series: Series | None = field(default=None, compare=False)

    def to_json(self) -> JsonObject:
        """report.json: the header, then the mode's section flattened into it."""
        out: JsonObject = {
            "model": self.model,
            "experiment": self.experiment,
            "mode": str(self.mode),
            "percent": self.percent,
            "challenger_alias": self.challenger_alias,
            "started": self.started,
            "impressions": self.impressions,
            "clicks": self.clicks,
            "models": self.models,
            "n_opt": self.n_opt,
        }
        if self.split is not None:
            s = self.split
            out.update(
                arms={"champion": _arm(s.champion), "challenger": _arm(s.challenger)},
                lift=s.lift.to_dict(),
                relative_lift=s.relative_lift,
                requests_to_decide=s.requests_to_decide,
                srm_p=self.srm_p,
                users_in_both_arms=s.users_in_both_arms,
                guardrails={
                    name: {"limit": g.limit, "excess": g.excess, "ok": g.ok}
                    for name, g in s.guardrails.items()
                },
            )
        elif self.interleaving is not None:
            i = self.interleaving
            p = i.preference
            out.update(
                arms={"champion": _arm(i.champion), "challenger": _arm(i.challenger)},
                preference={
                    **p.interval.to_dict(),
                    "challenger_wins": p.challenger_wins,
                    "champion_wins": p.champion_wins,
                    "ties": p.ties,
                    "answers_where_arms_agree": p.answers_where_arms_agree,
                    "binomial_p": p.binomial_p,
                },
                p95_server_ms=i.p95_server_ms,
                requests_to_decide=i.requests_to_decide,
                srm_p=self.srm_p,
            )
        elif self.shadow is not None:
            out.update(
                arms={"champion": _arm(self.shadow.champion)},
                shadow=asdict(self.shadow.shadow),
                srm_p=self.srm_p,
            )
        out["decision"] = str(self.decision)
        return out

    @property
    def requests_to_decide(self) -> int | None:
        if self.split is not None:
            return self.split.requests_to_decide
        return None if self.interleaving is None else self.interleaving.requests_to_decide


def _arm(arm: SplitArm | CreditedArm | ServedArm) -> JsonObject:
    out: JsonObject = asdict(arm)
    interval = out.get("ctr_interval")
    if isinstance(interval, tuple):
        out["ctr_interval"] = list(interval)
    return out
