"""Two-sample drift statistics: Evidently's choice of test, with thresholds calibrated on the
reference itself (the drift monitors of recommender/online/ and tagger/online/ use them).

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
noise. A window of many columns alarms when any of them does, so `baseline` calibrates the
columns of one table as a family (see there).

The statistics are scipy's (`ks_2samp`, `chisquare`, `wasserstein_distance`,
`spatial.distance.jensenshannon`); Evidently itself is ~1 GB of dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    picks = _chunk_picks(len(ref), window, chunks, seed)
    method = method_for(ref)
    values = _chunk_statistics(method, ref, window, picks)
    return _widen(method, _quantile(method, values, quantile), margin)


def _chunk_picks(n: int, window: int, chunks: int, seed: int) -> list[npt.NDArray[np.intp]]:
    if window >= n // 2:
        raise ValueError(f"a window of {window} needs a reference of more than {2 * window} rows")
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(chunks)]


def _chunk_statistics(
    method: str, ref: Array, window: int, picks: list[npt.NDArray[np.intp]]
) -> Array:
    """Each chunk (the first `window` rows of a pick) against the rest of the reference."""
    if method == "wasserstein":
        return _chunk_wasserstein(ref, window, picks)
    return np.asarray([statistic(method, ref[pick[window:]], ref[pick[:window]]) for pick in picks])


def _chunk_wasserstein(ref: Array, window: int, picks: list[npt.NDArray[np.intp]]) -> Array:
    """`statistic("wasserstein", rest, chunk)` for every chunk at once: a chunk and its rest
    together are the whole reference, so the sorted values scipy's `wasserstein_distance`
    walks are the same for every chunk; only which of them belong to the chunk changes. Per
    chunk, W1 = sum over the sorted values of |F_rest - F_chunk| * the gap to the next value
    (tied values have no gap, so their order does not matter), divided by the rest's standard
    deviation. The same numbers as the loop, ~50x faster (a monitor calibrates 44 columns x
    200 chunks; the loop took 11 s)."""
    n = len(ref)
    order = np.argsort(ref, kind="stable")
    sorted_values = ref[order]
    gaps = np.diff(sorted_values)
    rank = np.empty(n, dtype=np.intp)
    rank[order] = np.arange(n)
    upto = np.arange(1, n, dtype=np.float64)  # all values <= each sorted value
    distance = np.empty(len(picks))
    block = max(1, 2_000_000 // n)  # chunks per pass: ~16 MB of membership at most
    for start in range(0, len(picks), block):
        part = picks[start : start + block]
        member = np.zeros((len(part), n), dtype=np.float64)
        for row, pick in enumerate(part):
            member[row, rank[pick[:window]]] = 1.0
        in_chunk = np.cumsum(member, axis=1)[:, :-1]  # chunk values <= each sorted value
        cdf_gap = np.abs((upto - in_chunk) / (n - window) - in_chunk / window)
        distance[start : start + len(part)] = cdf_gap @ gaps
    # The rest's standard deviation, from the sums of the whole and of each chunk.
    chunk_values = np.stack([ref[pick[:window]] for pick in picks])
    total, total_sq = ref.sum(), (ref * ref).sum()
    rest_sum = total - chunk_values.sum(axis=1)
    rest_sq = total_sq - (chunk_values * chunk_values).sum(axis=1)
    mean = rest_sum / (n - window)
    var = np.maximum(rest_sq / (n - window) - mean * mean, 0.0)
    scale = np.sqrt(var)
    scale[scale == 0] = 1.0
    out: Array = distance / scale
    return out


def _quantile(method: str, values: Array, quantile: float) -> float:
    """How drifted the `quantile` most drifted chunk looks."""
    q = 1 - quantile if method in P_VALUE_METHODS else quantile
    return float(np.quantile(values, q))


def _widen(method: str, threshold: float, factor: float) -> float:
    """`threshold` made `factor` times stricter to reach, never looser than the fixed one."""
    fixed = fixed_threshold(method)
    if method in P_VALUE_METHODS:
        return min(fixed, threshold / factor)
    return max(fixed, threshold * factor)


def dataset_drift(columns: dict[str, ColumnDrift], share: float = 0.5) -> bool:
    """Evidently's dataset verdict: drift when at least `share` of the columns drifted."""
    if not columns:
        return False
    return sum(c.drifted for c in columns.values()) >= share * len(columns)


@dataclass(frozen=True)
class Baseline:
    """What a window is judged against: reference columns, and per column the threshold
    calibrated for the number of values a window brings of it."""

    columns: dict[str, Array]
    thresholds: dict[str, float]
    sizes: dict[str, int]


def baseline(
    reference: Mapping[str, npt.ArrayLike],
    sizes: Mapping[str, int],
    chunks: int = 200,
    quantile: float = 0.995,
    family_quantile: float = 0.99,
    margin: float = 1.25,
    seed: int = 0,
) -> Baseline:
    """Calibrate every column of `reference` for windows of `sizes[column]` values, so that a
    whole window, not each column, rarely alarms.

    A window alarms when any of its columns does, so with 40 columns each at 0.5 % a window
    would alarm about 20 % of the time. Columns of one table (the same length and window
    size) are calibrated as a family: the chunks take the same rows from every column, as a
    window does; each column's threshold starts at its `quantile` point, then all are widened
    by the factor that keeps the `family_quantile` of the chunks' worst column below
    threshold, and by `margin`. A table too small for its window (at most twice its size) is
    left out of the baseline, so its columns are not judged.
    """
    columns = {k: np.asarray(v, dtype=np.float64) for k, v in reference.items()}
    tables: dict[tuple[int, int], list[str]] = {}
    for k, v in columns.items():
        tables.setdefault((len(v), int(sizes[k])), []).append(k)
    thresholds: dict[str, float] = {}
    for (rows, window), names in tables.items():
        if window >= rows // 2:
            continue
        picks = _chunk_picks(rows, window, chunks, seed)
        methods = {k: method_for(columns[k]) for k in names}
        values = {k: _chunk_statistics(methods[k], columns[k], window, picks) for k in names}
        # Each column's own threshold first (never under the fixed one: a constant column's
        # chunks all measure 0), then the family's widening.
        start = {k: _widen(methods[k], _quantile(methods[k], values[k], quantile), 1.0)
                 for k in names}  # fmt: skip
        # Per chunk, its most drifted column, relative to that column's start.
        worst = np.max(
            [
                [severity(ColumnDrift(methods[k], v, start[k], False)) for v in values[k]]
                for k in names
            ],
            axis=0,
        )
        family = max(1.0, float(np.quantile(worst, family_quantile)))
        thresholds.update({k: _widen(methods[k], start[k], family * margin) for k in names})
    kept = {k: columns[k] for k in thresholds}
    return Baseline(kept, thresholds, {k: int(sizes[k]) for k in kept})


def window_drift(
    base: Baseline, current: Mapping[str, npt.ArrayLike], min_share: float = 0.5
) -> dict[str, ColumnDrift]:
    """Each column's drift in one window. A column with fewer than `min_share` of the values
    it was calibrated for is left out: its calibrated threshold would not hold."""
    out = {}
    for name, values in current.items():
        if name not in base.columns:
            continue
        cur = np.asarray(values, dtype=np.float64)
        if len(cur) < min_share * base.sizes[name]:
            continue
        out[name] = column_drift(base.columns[name], cur, base.thresholds[name])
    return out


def severity(result: ColumnDrift) -> float:
    """How far past its threshold a column is, on one scale for every method: above 1 is
    drift (a distance over its threshold; for a p-value, the threshold over it)."""
    if result.method in P_VALUE_METHODS:
        return result.threshold / max(result.statistic, 1e-300)
    return result.statistic / result.threshold
