"""`mlsys experiment report NAME`: what an online experiment of the recommender found.

Impressions and clicks of one experiment (the model name's current or latest rollout, or
`--experiment ID`) are joined by request id; the log is read from an export folder (`--log`,
the parts `mlsys log export` wrote) plus whatever the stream still holds after them, or from
the streams alone. Per mode:

- canary / ab: per arm impressions, users, clicks, CTR (clicks per impression) with its
  always-valid interval, item CTR, p95 server time and error rate; the challenger's lift over
  the champion with an always-valid interval (`platform/online_stats.py`); the number of
  impressions, in arrival order, at which that interval first excluded zero; the sample-ratio
  check on users (the unit of assignment) against the configured split; and the guardrails;
- interleave: per answer, the arm credited with more clicks wins; the preference is the mean of
  +1 (challenger won), -1 (champion won), 0 (tie) over the answers where the two arms' rankings
  differ (where they agree, e.g. a distance sort, the teams are a coin flip and the answer can
  show no preference), with its always-valid interval, the
  fixed-horizon binomial p-value beside it, and the answers needed to decide; the sample-ratio
  check is on which team picked first (a fair coin);
- shadow: how often the challenger was scored, how its ranking agrees with the champion's
  (same first restaurant, overlap of the first ten), and its time off the critical path.

The `Decision` (`experiment_results.py`): challenger better or worse when the interval
excludes zero, undecided otherwise; a failed canary guardrail stops it, and a sample ratio
mismatch (p < 0.001) overrides everything else. `experiment_report.py` writes report.json,
report.md and ctr.png.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mlsys.platform.event_log import LogRecord, entry_key, read_stream
from mlsys.platform.log_export import read_parts, watermark
from mlsys.platform.online_stats import (
    N_OPT,
    binomial_p,
    first_decision,
    mean_sequence,
    running_interval,
    sample_ratio_p,
)
from mlsys.platform.redis_client import RedisClient
from mlsys.platform.rollout import Arm, Mode, RolloutState
from mlsys.recommender.online.experiment_results import (
    CreditedArm,
    Decision,
    ExperimentReport,
    Guardrail,
    InterleavingResult,
    Preference,
    Series,
    ServedArm,
    ShadowResult,
    ShadowStats,
    SplitArm,
    SplitResult,
)

SRM_ALPHA = 0.001
# Where each method's always-valid interval is tightest: about the sample each needs to find a
# 5% lift in clicks (docs/experiments-report.md; the reference kit's figures: ~1,500 requests
# for A/B at fixed n, ~45 for interleaving). Any value keeps the intervals valid.
N_OPT_BY_MODE = {Mode.CANARY: 2000, Mode.AB: 2000, Mode.INTERLEAVE: 200, Mode.SHADOW: 2000}
FloatArray = npt.NDArray[np.float64]


def load_log(client: RedisClient | None, name: str, log_dir: str | Path | None) -> list[LogRecord]:
    """A stream's records: the exported parts (if any) and then the stream's newer entries."""
    records: list[LogRecord] = []
    after = (0, 0)
    if log_dir is not None:
        folder = Path(log_dir) / name
        table = read_parts(folder)
        if table is not None:
            records.extend(table.to_pylist())
        after = watermark(folder)
    if client is not None:
        records.extend(r for r in read_stream(client, name) if entry_key(r["stream_id"]) > after)
    return records


def analyse(
    state: RolloutState,
    impressions: list[LogRecord],
    clicks: list[LogRecord],
    shadow: list[LogRecord],
    errors: dict[str, int],
    n_opt: float | None = None,
) -> ExperimentReport:
    n_opt = n_opt or N_OPT_BY_MODE.get(state.mode, N_OPT)
    mine = [r for r in impressions if r["experiment"] == state.experiment]
    mine.sort(key=lambda r: entry_key(r["stream_id"]))
    by_request: dict[str, Counter[str]] = {}
    for c in clicks:
        if c["experiment"] == state.experiment:
            by_request.setdefault(c["request_id"], Counter())[c["credited"]] += 1
    header = {
        "model": state.model,
        "experiment": state.experiment,
        "mode": state.mode,
        "percent": state.percent,
        "challenger_alias": state.challenger,
        "started": state.started,
        "impressions": len(mine),
        "clicks": sum(sum(c.values()) for c in by_request.values()),
        "models": sorted({r["model"] for r in mine}),
        "n_opt": n_opt,
    }
    if state.mode.splits_users:
        return _split(state, mine, by_request, errors, n_opt, header)
    if state.mode is Mode.INTERLEAVE:  # answers outside the sampled share are the champion's
        interleaved = [r for r in mine if r["arm"] == Arm.INTERLEAVED]
        return _interleaving(interleaved, by_request, n_opt, header)
    return _shadow(mine, shadow, by_request, header)


def _p95(values: list[float]) -> float | None:
    return float(np.percentile(values, 95)) if values else None


def _clicks(rows: list[LogRecord], by_request: dict[str, Counter[str]]) -> FloatArray:
    """Clicks per answer, in the order of `rows`."""
    return np.asarray(
        [sum(by_request.get(r["request_id"], Counter()).values()) for r in rows], dtype=np.float64
    )


def _split(
    state: RolloutState,
    rows: list[LogRecord],
    by_request: dict[str, Counter[str]],
    errors: dict[str, int],
    n_opt: float,
    header: dict[str, Any],
) -> ExperimentReport:
    values = _clicks(rows, by_request)
    is_challenger = np.asarray([r["arm"] == Arm.CHALLENGER for r in rows], dtype=bool)
    arms: dict[Arm, SplitArm] = {}
    users: dict[Arm, set[int]] = {}
    for arm, mask in ((Arm.CHAMPION, ~is_challenger), (Arm.CHALLENGER, is_challenger)):
        picked = [r for r, m in zip(rows, mask, strict=True) if m]
        users[arm] = {r["user_id"] for r in picked}
        items = sum(len(r["ids"]) for r in picked)
        failed = errors.get(arm, 0)
        ci = mean_sequence(values[mask], n_opt=n_opt)  # descriptive: the latest interval
        arms[arm] = SplitArm(
            impressions=len(picked),
            users=len(users[arm]),
            clicks=int(values[mask].sum()),
            ctr=ci.estimate,
            ctr_interval=(ci.low, ci.high),
            item_ctr=float(values[mask].sum() / items) if items else None,
            p95_server_ms=_p95([r["server_ms"] for r in picked]),
            errors=failed,
            error_rate=failed / (len(picked) + failed) if picked or failed else 0.0,
        )
    champion, challenger = arms[Arm.CHAMPION], arms[Arm.CHALLENGER]
    lift = running_interval(values, is_challenger, n_opt=n_opt)
    srm = sample_ratio_p(
        [len(users[Arm.CHAMPION]), len(users[Arm.CHALLENGER])],
        [100 - state.percent, state.percent],
    )
    c95, h95 = champion.p95_server_ms, challenger.p95_server_ms
    guardrails = {
        "p95_ms": Guardrail(
            state.guardrails.p95_ms, None if c95 is None or h95 is None else h95 - c95
        ),
        "error_rate": Guardrail(
            state.guardrails.error_rate, challenger.error_rate - champion.error_rate
        ),
    }
    decision = Decision.of(lift)
    if not all(g.ok for g in guardrails.values()):
        decision = Decision.GUARDRAIL
    if srm < SRM_ALPHA:
        decision = Decision.SAMPLE_RATIO_MISMATCH
    decided = first_decision(values, is_challenger, n_opt=n_opt)
    split = SplitResult(
        champion=champion,
        challenger=challenger,
        lift=lift,
        relative_lift=lift.estimate / champion.ctr if champion.ctr else None,
        requests_to_decide=decided,
        users_in_both_arms=len(users[Arm.CHAMPION] & users[Arm.CHALLENGER]),
        guardrails=guardrails,
    )
    return ExperimentReport(
        **header, decision=decision, srm_p=srm, split=split,
        series=Series(values, is_challenger, decided),
    )  # fmt: skip


def _interleaving(
    rows: list[LogRecord], by_request: dict[str, Counter[str]], n_opt: float,
    header: dict[str, Any],
) -> ExperimentReport:  # fmt: skip
    # An answer where both arms ranked alike (a distance sort, or the same order) cannot show
    # a preference: its teams are a coin flip, so it only adds noise.
    informative = [r for r in rows if not r.get("arms_agree")]
    outcome = np.asarray(
        [
            np.sign(
                by_request.get(r["request_id"], Counter())[Arm.CHALLENGER]
                - by_request.get(r["request_id"], Counter())[Arm.CHAMPION]
            )
            for r in informative
        ],
        dtype=np.float64,
    )
    wins, losses = int((outcome > 0).sum()), int((outcome < 0).sum())
    preference = running_interval(outcome, n_opt=n_opt)
    # Counted in answers served, the uninformative ones too: they cost traffic as well.
    positions = [i for i, r in enumerate(rows) if not r.get("arms_agree")]
    decided = first_decision(outcome, n_opt=n_opt)
    credited: Counter[str] = Counter()
    for r in rows:
        credited.update(by_request.get(r["request_id"], Counter()))
    first = Counter(r["teams"][:1] for r in rows if r["teams"])

    def arm(name: Arm) -> CreditedArm:
        return CreditedArm(len(rows), credited[name], credited[name] / len(rows) if rows else None)

    result = InterleavingResult(
        champion=arm(Arm.CHAMPION),
        challenger=arm(Arm.CHALLENGER),
        preference=Preference(
            interval=preference,
            challenger_wins=wins,
            champion_wins=losses,
            ties=len(informative) - wins - losses,
            answers_where_arms_agree=len(rows) - len(informative),
            binomial_p=binomial_p(wins, losses),
        ),
        p95_server_ms=_p95([r["server_ms"] for r in rows]),
        requests_to_decide=None if decided is None else positions[decided - 1] + 1,
    )
    return ExperimentReport(
        **header, decision=Decision.of(preference),
        srm_p=sample_ratio_p([first.get("a", 0), first.get("b", 0)], [50, 50]),
        interleaving=result, series=Series(outcome, None, decided),
    )  # fmt: skip


def _shadow(
    rows: list[LogRecord], shadow: list[LogRecord], by_request: dict[str, Counter[str]],
    header: dict[str, Any],
) -> ExperimentReport:  # fmt: skip
    served = {r["request_id"]: r for r in rows}
    pairs = [(served[s["request_id"]], s) for s in shadow if s["request_id"] in served]
    same_top = [bool(a["ids"][:1] == b["ids"][:1]) for a, b in pairs if a["ids"]]
    overlap = [
        len(set(a["ids"][:10]) & set(b["ids"][:10])) / max(1, min(10, len(a["ids"])))
        for a, b in pairs
        if a["ids"]
    ]
    clicks = _clicks(rows, by_request)
    ci = mean_sequence(clicks)
    result = ShadowResult(
        champion=ServedArm(
            impressions=len(rows),
            clicks=int(clicks.sum()),
            ctr=ci.estimate,
            ctr_interval=(ci.low, ci.high),
            p95_server_ms=_p95([r["server_ms"] for r in rows]),
        ),
        shadow=ShadowStats(
            scored=len(pairs),
            coverage=len(pairs) / len(rows) if rows else None,
            same_first=float(np.mean(same_top)) if same_top else None,
            overlap_at_10=float(np.mean(overlap)) if overlap else None,
            p95_shadow_ms=_p95([s["shadow_ms"] for s in shadow]),
        ),
    )
    return ExperimentReport(**header, decision=Decision.UNDECIDED, srm_p=None, shadow=result)
