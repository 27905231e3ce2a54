"""Always-valid intervals keep their error rate under peeking; the ratio check catches skew."""

from __future__ import annotations

import numpy as np

from mlsys.platform.online_stats import (
    first_decision,
    mean_sequence,
    running_interval,
    sample_ratio_p,
)


def test_peeking_after_every_observation_keeps_the_false_positive_rate() -> None:
    """A/A tests with Poisson clicks: stopping at the first interval that excludes zero.
    A fixed-n 95% interval checked at every n is wrong far more often than 5%."""
    rng = np.random.default_rng(0)
    runs, n = 300, 3000
    false = 0
    naive = 0
    for _ in range(runs):
        values = rng.poisson(6.3, n).astype(float)
        arm = rng.random(n) < 0.5
        if first_decision(values, arm) is not None:
            false += 1
        diffs = []
        for lo in range(100, n + 1, 100):
            t, c = values[:lo][arm[:lo]], values[:lo][~arm[:lo]]
            se = (t.var(ddof=1) / len(t) + c.var(ddof=1) / len(c)) ** 0.5
            diffs.append(abs(t.mean() - c.mean()) > 1.96 * se)
        naive += any(diffs)
    assert false / runs <= 0.05
    assert naive / runs > 2 * false / runs


def test_a_real_difference_is_found_and_the_decision_matches_the_interval() -> None:
    rng = np.random.default_rng(1)
    n = 20_000
    arm = rng.random(n) < 0.5
    values = rng.poisson(np.where(arm, 6.7, 6.3)).astype(float)
    at = first_decision(values, arm)
    assert at is not None and at < n
    before = running_interval(values[: at - 1], arm[: at - 1])
    after = running_interval(values[:at], arm[:at])
    assert before.decided == 0 and after.decided == 1
    assert running_interval(values, arm).decided == 1  # and it never flips back


def test_one_arm_sequence_matches_the_prefix_interval() -> None:
    rng = np.random.default_rng(2)
    outcome = rng.choice([-1.0, 0.0, 1.0], p=[0.25, 0.3, 0.45], size=2000)
    at = first_decision(outcome)
    assert at is not None
    assert mean_sequence(outcome[:at]).decided == 1
    assert mean_sequence(outcome[: at - 1]).decided == 0


def test_sample_ratio_mismatch() -> None:
    assert sample_ratio_p([5000, 5000], [50, 50]) > 0.5
    assert sample_ratio_p([5500, 4500], [50, 50]) < 1e-6
    assert sample_ratio_p([9500, 500], [95, 5]) > 0.5
