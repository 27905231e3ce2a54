"""Two-sample drift statistics: Evidently's choice of test, with thresholds calibrated on the
reference itself (issue 17's foundation; the reference profiles and live windows build on it).

Evidently's data-drift preset picks the test by column type and reference size, and this
module follows the same rule so that verdicts compare:

- numeric (more than 5 distinct values): up to 1,000 reference rows the two-sample
  Kolmogorov-Smirnov test (drift at p < 0.05), above that the Wasserstein distance divided by
  the reference's standard deviation (drift above 0.1);
- categorical (5 distinct values or fewer): up to 1,000 rows the chi-square test on the
  category counts (p < 0.05), above that the Jensen-Shannon distance (above 0.1).

Evidently's users report verdicts that flip with the sample size (evidently#50, #509, #710): a
p-value falls with n however small the shift, and a distance measured on a small window is
noisy. NannyML's answer, used here too: compute the statistic on chunks of the reference that
have the window's size, each against the rest of the reference, and alarm only above what
undrifted chunks reach (`calibrate`: the 99.5 % point of the chunk statistics times a margin,
never below the fixed threshold). A window then alarms on a shift, not on its own sample
noise.

The statistics are scipy's (`ks_2samp`, `chisquare`, `wasserstein_distance`,
`spatial.distance.jensenshannon`); Evidently itself is ~1 GB of dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SMALL_REFERENCE = 1000  # Evidently: tests up to this many reference rows, distances above
CATEGORICAL_MAX_VALUES = 5
P_THRESHOLD = 0.05
DISTANCE_THRESHOLD = 0.1
P_VALUE_METHODS = ("ks", "chisquare")  # drift when small; the distances when large

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ColumnDrift:
    method: str  # ks, chisquare, wasserstein, jensenshannon
    statistic: float  # a p-value for the tests, a distance for the distances
    threshold: float
    drifted: bool


def is_categorical(values: npt.ArrayLike) -> bool:
    return len(np.unique(np.asarray(values))) <= CATEGORICAL_MAX_VALUES


def method_for(reference: npt.ArrayLike) -> str:
    """Evidently's rule: by column type and reference size."""
    small = len(np.asarray(reference)) <= SMALL_REFERENCE
    if is_categorical(reference):
        return "chisquare" if small else "jensenshannon"
    return "ks" if small else "wasserstein"


def statistic(method: str, reference: npt.ArrayLike, current: npt.ArrayLike) -> float:
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if method == "ks":
        from scipy.stats import ks_2samp

        return float(ks_2samp(ref, cur).pvalue)
    if method == "wasserstein":
        from scipy.stats import wasserstein_distance

        scale = float(ref.std()) or 1.0
        return float(wasserstein_distance(ref, cur) / scale)
    categories = np.union1d(np.unique(ref), np.unique(cur))
    ref_counts = np.array([(ref == c).sum() for c in categories], dtype=np.float64)
    cur_counts = np.array([(cur == c).sum() for c in categories], dtype=np.float64)
    if method == "chisquare":
        from scipy.stats import chisquare

        # Expected counts from the reference's shares, smoothed so that a category the
        # reference never saw makes the test fail instead of dividing by zero.
        shares = (ref_counts + 0.5) / (ref_counts + 0.5).sum()
        return float(chisquare(cur_counts, shares * cur_counts.sum()).pvalue)
    if method == "jensenshannon":
        from scipy.spatial.distance import jensenshannon

        return float(jensenshannon(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()))
    raise ValueError(f"unknown drift method {method!r}")


def drifted(method: str, value: float, threshold: float) -> bool:
    return value < threshold if method in P_VALUE_METHODS else value > threshold


def fixed_threshold(method: str) -> float:
    return P_THRESHOLD if method in P_VALUE_METHODS else DISTANCE_THRESHOLD


def column_drift(
    reference: npt.ArrayLike, current: npt.ArrayLike, threshold: float | None = None
) -> ColumnDrift:
    """Drift of one column: Evidently's method, and `threshold` if calibrated, else its fixed
    one."""
    method = method_for(reference)
    value = statistic(method, reference, current)
    limit = fixed_threshold(method) if threshold is None else threshold
    return ColumnDrift(method, value, limit, drifted(method, value, limit))


def calibrate(
    reference: npt.ArrayLike,
    window: int,
    chunks: int = 200,
    quantile: float = 0.995,
    margin: float = 1.25,
    seed: int = 0,
) -> float:
    """The threshold at which a window of `window` undrifted rows rarely alarms.

    `chunks` random chunks of the reference, each of the window's size, are compared with the
    rest of the reference by the method the full reference gets; the threshold is the
    `quantile` of how drifted they look (for a p-value, its 1 - quantile), widened by
    `margin`, and never less strict than the fixed threshold. 200 chunks place the 99.5 %
    point between the two most extreme ones.
    """
    ref = np.asarray(reference, dtype=np.float64)
    if window >= len(ref) // 2:
        raise ValueError(f"a window of {window} needs a reference of more than {2 * window} rows")
    method = method_for(ref)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(chunks):
        pick = rng.permutation(len(ref))
        chunk, rest = ref[pick[:window]], ref[pick[window:]]
        values.append(statistic(method, rest, chunk))
    fixed = fixed_threshold(method)
    if method in P_VALUE_METHODS:
        return min(fixed, float(np.quantile(values, 1 - quantile)) / margin)
    return max(fixed, float(np.quantile(values, quantile)) * margin)


def dataset_drift(columns: dict[str, ColumnDrift], share: float = 0.5) -> bool:
    """Evidently's dataset verdict: drift when at least `share` of the columns drifted."""
    if not columns:
        return False
    return sum(c.drifted for c in columns.values()) >= share * len(columns)
