"""The experiment analysis on logs whose truth is known: it finds a real lift, stays undecided
without one, catches a broken split, and judges a canary's guardrails."""

from __future__ import annotations

from typing import Any

import numpy as np

from mlsys.platform.rollout import Guardrails, RolloutState, assign
from mlsys.recommender.online.experiment import analyse
from mlsys.recommender.online.experiment_report import markdown
from mlsys.recommender.online.experiment_results import Decision


def _log(
    state: RolloutState, n: int, rates: dict[str, float], seed: int = 0, skew: float = 0.0,
    slow_ms: float = 0.0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """n impressions of distinct users with Poisson clicks at each arm's rate; `skew` drops
    that share of the challenger's impressions (a logging bug)."""
    rng = np.random.default_rng(seed)
    impressions, clicks = [], []
    for i in range(n):
        arm = assign(state, i)
        if arm == "challenger" and rng.random() < skew:
            continue
        rid = f"r{i}"
        impressions.append({
            "stream_id": f"{1000 + i}-0", "request_id": rid, "experiment": state.experiment,
            "arm": arm, "model": f"m/{1 if arm == 'champion' else 2}", "user_id": i,
            "ids": list(range(10)), "teams": "",
            "server_ms": 3.0 + (slow_ms if arm == "challenger" else 0.0),
        })  # fmt: skip
        for _ in range(rng.poisson(rates[arm])):
            clicks.append({"request_id": rid, "experiment": state.experiment, "credited": arm})
    return impressions, clicks


def test_a_real_lift_is_found_and_the_split_is_clean() -> None:
    state = RolloutState("m", "ab", "challenger", 50.0, "exp-ab", 0.0)
    impressions, clicks = _log(state, 8000, {"champion": 6.3, "challenger": 6.66})
    r = analyse(state, impressions, clicks, [], {})
    assert r.decision is Decision.CHALLENGER_BETTER and r.split is not None
    assert r.split.lift.low > 0 and abs(r.split.lift.estimate - 0.36) < 0.15
    assert r.srm_p is not None and r.srm_p > 0.001 and r.split.users_in_both_arms == 0
    assert r.requests_to_decide is not None and r.requests_to_decide <= 8000
    assert "challenger better" in markdown(r)
    assert r.to_json()["decision"] == "challenger better"


def test_no_lift_stays_undecided() -> None:
    state = RolloutState("m", "ab", "challenger", 50.0, "exp-aa", 0.0)
    impressions, clicks = _log(state, 8000, {"champion": 6.3, "challenger": 6.3}, seed=3)
    r = analyse(state, impressions, clicks, [], {})
    assert r.decision is Decision.UNDECIDED and r.split is not None
    assert r.split.lift.low < 0 < r.split.lift.high


def test_a_lossy_arm_is_a_sample_ratio_mismatch_whatever_its_ctr() -> None:
    state = RolloutState("m", "ab", "challenger", 50.0, "exp-srm", 0.0)
    impressions, clicks = _log(state, 8000, {"champion": 6.3, "challenger": 6.66}, skew=0.1)
    r = analyse(state, impressions, clicks, [], {})
    assert r.srm_p is not None and r.srm_p < 0.001
    assert r.decision is Decision.SAMPLE_RATIO_MISMATCH and r.decision.stops


def test_a_slow_canary_fails_its_latency_guardrail() -> None:
    state = RolloutState("m", "canary", "challenger", 10.0, "exp-canary", 0.0,
                         guardrails=Guardrails(p95_ms=5.0, error_rate=0.01))  # fmt: skip
    impressions, clicks = _log(state, 4000, {"champion": 6.3, "challenger": 6.3}, slow_ms=20)
    r = analyse(state, impressions, clicks, [], {"challenger": 0})
    assert r.split is not None and r.split.guardrails["p95_ms"].ok is False
    assert r.decision is Decision.GUARDRAIL and r.decision.stops
    failing = analyse(state, impressions, clicks, [], {"challenger": 200})
    assert failing.split is not None and failing.split.guardrails["error_rate"].ok is False


def test_interleaving_preference_counts_credited_clicks() -> None:
    state = RolloutState("m", "interleave", "challenger", 100.0, "exp-il", 0.0)
    rng = np.random.default_rng(5)
    impressions, clicks = [], []
    for i in range(300):
        rid = f"q{i}"
        impressions.append({"stream_id": f"{i + 1}-0", "request_id": rid, "experiment": "exp-il",
                            "arm": "interleaved", "model": "m/1,m/2", "user_id": i, "teams": "",
                            "ids": list(range(10)), "server_ms": 3.0})  # fmt: skip
        for arm, rate in (("champion", 3.0), ("challenger", 3.6)):
            clicks += [{"request_id": rid, "experiment": "exp-il", "credited": arm}] * int(
                rng.poisson(rate)
            )
    r = analyse(state, impressions, clicks, [], {})
    assert r.interleaving is not None
    p = r.interleaving.preference
    assert p.challenger_wins + p.champion_wins + p.ties == 300
    assert p.challenger_wins > p.champion_wins and r.interleaving.challenger.clicks > 0
    assert r.decision in (Decision.CHALLENGER_BETTER, Decision.UNDECIDED)
    text = markdown(r)
    assert f"Preference {p.interval.estimate:+.3f}" in text and "{" not in text
    assert r.to_json()["preference"]["challenger_wins"] == p.challenger_wins  # type: ignore[index]
