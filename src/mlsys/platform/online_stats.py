"""Statistics for online experiments: always-valid intervals, sample-ratio checks.

An experiment's dashboard is looked at while it runs, and a fixed-horizon t-test looked at
every hour has a false-positive rate far above its alpha. GrowthBook and Optimizely therefore
report confidence *sequences*: intervals valid at every sample size at once, so stopping at
the first one that excludes zero keeps the error rate at alpha. We use the asymptotic
confidence sequence of Waudby-Smith, Arnold, Wu, Howard and Ramdas ("Time-uniform central
limit theory and asymptotic confidence sequences", 2024), GrowthBook's choice: for the mean
of n observations with standard deviation s,

    mean +- s * sqrt( 2 (n r^2 + 1) / (n^2 r^2) * log( sqrt(n r^2 + 1) / alpha ) ),

where r^2 = (-2 log alpha + log(-2 log alpha + 1)) / n_opt makes the sequence tightest at
n_opt (a guess of the experiment's size; any value keeps validity). A difference of two arms'
means (sizes n_a, n_b) uses the same boundary at n = n_a + n_b with s^2 = n (s_a^2/n_a +
s_b^2/n_b). It is about 2-2.5x as wide as the fixed-n interval near n_opt: the price of
looking whenever one likes.

scipy.stats provides the rest: the chi-square test of a sample ratio mismatch and a binomial
test that reports the fixed-horizon p-value of an interleaving preference alongside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

ALPHA = 0.05
N_OPT = 2_000


def rho2(alpha: float = ALPHA, n_opt: float = N_OPT) -> float:
    lg = -2 * math.log(alpha)
    return (lg + math.log(lg + 1)) / n_opt


def boundary(
    n: npt.ArrayLike, alpha: float = ALPHA, n_opt: float = N_OPT
) -> npt.NDArray[np.float64]:
    """The half-width multiplier of a unit-variance mean after n observations."""
    r2 = rho2(alpha, n_opt)
    nn = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.sqrt(2 * (nn * r2 + 1) / (nn * nn * r2) * np.log(np.sqrt(nn * r2 + 1) / alpha))
    return np.where(nn > 0, out, np.inf)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int

    @property
    def decided(self) -> int:
        """+1 when the interval is above zero, -1 below, 0 when it holds zero."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def to_dict(self) -> dict[str, float | int]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n}


def mean_sequence(x: npt.ArrayLike, alpha: float = ALPHA, n_opt: float = N_OPT) -> Interval:
    """The always-valid interval of the mean of x."""
    v = np.asarray(x, dtype=np.float64)
    if len(v) < 2:
        return Interval(float(v.mean()) if len(v) else math.nan, -math.inf, math.inf, len(v))
    half = float(v.std(ddof=1) * boundary(len(v), alpha, n_opt))
    m = float(v.mean())
    return Interval(m, m - half, m + half, len(v))


def prefix_sequences(
    values: npt.ArrayLike,
    is_treatment: npt.ArrayLike | None = None,
    alpha: float = ALPHA,
    n_opt: float = N_OPT,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(estimate, half-width, n) after each observation in arrival order. One arm
    (is_treatment None): the mean of `values`; two arms: treatment's minus control's mean.
    Vectorised over every prefix; the half-width is infinite until each arm has 2."""
    v = np.asarray(values, dtype=np.float64)
    if is_treatment is None:
        n, mean, var = _prefix_moments(v, np.ones(len(v), dtype=bool))
        with np.errstate(invalid="ignore"):
            half = np.sqrt(var) * boundary(n, alpha, n_opt)
        return mean, np.where(n >= 2, half, np.inf), n
    arm = np.asarray(is_treatment, dtype=bool)
    (kt, mt, vt), (kc, mc, vc) = _prefix_moments(v, arm), _prefix_moments(v, ~arm)
    total = kt + kc
    with np.errstate(divide="ignore", invalid="ignore"):
        half = np.sqrt((vt / kt + vc / kc) * total) * boundary(total, alpha, n_opt)
    ok = (kt >= 2) & (kc >= 2)
    return np.where(ok, mt - mc, np.nan), np.where(ok, half, np.inf), total


def _prefix_moments(
    v: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Count, mean and sample variance of the masked values in every prefix."""
    x = np.where(mask, v, 0.0)
    k = np.cumsum(mask).astype(np.float64)
    s1, s2 = np.cumsum(x), np.cumsum(x * x)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / k
        var = np.maximum(s2 - k * mean * mean, 0) / (k - 1)
    return k, mean, var


def running_interval(
    values: npt.ArrayLike,
    is_treatment: npt.ArrayLike | None = None,
    alpha: float = ALPHA,
    n_opt: float = N_OPT,
    min_n: int = 20,
) -> Interval:
    """The intersection of the sequence's intervals over every prefix of at least `min_n`
    (itself always valid): once an interval has excluded zero, later ones cannot bring it
    back, so the decision never flips."""
    estimate, half, n = prefix_sequences(values, is_treatment, alpha, n_opt)
    if len(n) == 0:
        return Interval(math.nan, -math.inf, math.inf, 0)
    use = np.isfinite(half) & (half > 0) & (n >= min_n)  # zero width: no variance seen yet
    if not use.any():
        return Interval(float(estimate[-1]), -math.inf, math.inf, int(n[-1]))
    low = float(np.max((estimate - half)[use]))
    high = float(np.min((estimate + half)[use]))
    return Interval(float(estimate[-1]), low, high, int(n[-1]))


def first_decision(
    values: npt.ArrayLike,
    is_treatment: npt.ArrayLike | None = None,
    alpha: float = ALPHA,
    n_opt: float = N_OPT,
    min_n: int = 20,
) -> int | None:
    """The number of observations, in arrival order, at which the sequence first excluded
    zero (None: not yet)."""
    estimate, half, n = prefix_sequences(values, is_treatment, alpha, n_opt)
    with np.errstate(invalid="ignore"):
        decided = (np.abs(estimate) > half) & (half > 0) & (n >= min_n) & np.isfinite(half)
    hits = np.flatnonzero(decided)
    return int(n[hits[0]]) if len(hits) else None


def sample_ratio_p(observed: list[int], expected_shares: list[float]) -> float:
    """The chi-square test's p-value of the arms' counts against the configured split: below
    0.001 means the assignment or the logging is broken, not that an arm is better."""
    from scipy.stats import chisquare

    total = sum(observed)
    if total == 0 or len(observed) < 2:
        return 1.0
    shares = np.asarray(expected_shares, dtype=np.float64)
    expected = shares / shares.sum() * total
    return float(chisquare(observed, expected).pvalue)


def binomial_p(wins: int, losses: int) -> float:
    """Two-sided fixed-horizon p-value of wins vs losses under no preference."""
    from scipy.stats import binomtest

    if wins + losses == 0:
        return 1.0
    return float(binomtest(wins, wins + losses, 0.5).pvalue)
