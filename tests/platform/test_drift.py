"""Drift statistics on known distributions: Evidently's method choice, chunk-calibrated
thresholds that keep undrifted windows quiet, and shifts that are caught."""

from __future__ import annotations

import numpy as np
import pytest

from mlsys.platform.drift import (
    ColumnDrift,
    baseline,
    calibrate,
    column_drift,
    dataset_drift,
    method_for,
    severity,
    window_drift,
)

RNG = np.random.default_rng(0)
NORMAL_REF = RNG.standard_normal(20_000)
CATEGORIES = np.array([0, 1, 2])
CAT_REF = RNG.choice(CATEGORIES, size=20_000, p=[0.5, 0.3, 0.2])


@pytest.mark.parametrize(
    ("values", "method"),
    [
        (RNG.standard_normal(800), "ks"),
        (RNG.standard_normal(5_000), "wasserstein"),
        (RNG.choice(CATEGORIES, size=800), "chisquare"),
        (RNG.choice(CATEGORIES, size=5_000), "jensenshannon"),
    ],
)
def test_the_method_follows_evidentlys_rule(values: np.ndarray, method: str) -> None:
    assert method_for(values) == method


def _alarm_rate(reference: np.ndarray, draw: object, threshold: float | None, n: int) -> float:
    rng = np.random.default_rng(1)
    alarms = sum(column_drift(reference, draw(rng), threshold).drifted for _ in range(n))  # type: ignore[operator]
    return alarms / n


def test_calibrated_thresholds_keep_undrifted_windows_quiet_where_fixed_ones_do_not() -> None:
    window = 200
    threshold = calibrate(NORMAL_REF, window)
    quiet = _alarm_rate(NORMAL_REF, lambda r: r.standard_normal(window), threshold, 200)
    fixed = _alarm_rate(NORMAL_REF, lambda r: r.standard_normal(window), None, 200)
    assert quiet <= 0.01
    assert fixed > quiet  # Evidently's fixed 0.1 alarms on small windows' own noise
    shifted = _alarm_rate(NORMAL_REF, lambda r: r.standard_normal(window) + 0.5, threshold, 100)
    assert shifted >= 0.95


def test_a_category_mix_shift_is_caught_and_an_unshifted_mix_is_not() -> None:
    window = 500
    threshold = calibrate(CAT_REF, window)
    same = _alarm_rate(CAT_REF, lambda r: r.choice(CATEGORIES, window, p=[0.5, 0.3, 0.2]),
                       threshold, 200)  # fmt: skip
    moved = _alarm_rate(CAT_REF, lambda r: r.choice(CATEGORIES, window, p=[0.3, 0.3, 0.4]),
                        threshold, 100)  # fmt: skip
    assert same <= 0.01 and moved >= 0.95


def test_small_references_use_the_ks_test_and_calibration_tames_it() -> None:
    """Against one fixed reference, p < 0.05 alarms on 5-10 % of undrifted windows (the
    windows share the reference's own sampling noise); the calibrated p-value does not."""
    reference = np.random.default_rng(2).standard_normal(800)
    assert column_drift(reference, reference[:300]).method == "ks"
    threshold = calibrate(reference, 300)
    assert threshold < 0.05
    fixed = _alarm_rate(reference, lambda r: r.standard_normal(300), None, 400)
    calibrated = _alarm_rate(reference, lambda r: r.standard_normal(300), threshold, 400)
    moved = _alarm_rate(reference, lambda r: r.standard_normal(300) + 0.5, threshold, 100)
    assert fixed >= 0.02 and calibrated <= 0.01 and moved >= 0.95


def test_a_window_as_large_as_the_reference_cannot_be_calibrated() -> None:
    with pytest.raises(ValueError, match="reference"):
        calibrate(NORMAL_REF[:1000], 600)


def test_dataset_drift_needs_half_the_columns() -> None:
    yes, no = ColumnDrift("ks", 0.001, 0.05, True), ColumnDrift("ks", 0.5, 0.05, False)
    assert dataset_drift({"a": yes, "b": no})
    assert not dataset_drift({"a": yes, "b": no, "c": no})
    assert not dataset_drift({})


def _table(rng: np.random.Generator, rows: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    """20 columns like the recommender's: clustered (a mixture), one categorical."""
    centres = np.random.default_rng(7).normal(0, 2, (10, 20))
    cluster = rng.integers(0, 10, rows)
    values = centres[cluster] + 0.1 * rng.standard_normal((rows, 20))
    out = {f"f{j:02d}": values[:, j] for j in range(19)}
    out["f00"] = out["f00"] + shift * out["f00"].std()
    out["kind"] = (cluster % 3).astype(np.float64)
    return out


def test_a_window_of_twenty_columns_rarely_alarms_once_calibrated_as_a_family() -> None:
    rng = np.random.default_rng(3)
    reference = _table(rng, 5000)
    family = baseline(reference, dict.fromkeys(reference, 500))
    alone = {k: calibrate(v, 500) for k, v in reference.items()}  # each column by itself
    windows = [_table(rng, 500) for _ in range(200)]
    family_alarms = sum(any(c.drifted for c in window_drift(family, w).values()) for w in windows)
    alone_alarms = sum(
        any(column_drift(reference[k], w[k], alone[k]).drifted for k in w) for w in windows
    )
    assert family_alarms <= 2  # at most 1 % of 200 windows
    assert alone_alarms > family_alarms


def test_a_shifted_feature_is_named_and_the_others_are_not() -> None:
    rng = np.random.default_rng(4)
    reference = _table(rng, 5000)
    family = baseline(reference, dict.fromkeys(reference, 500))
    result = window_drift(family, _table(rng, 500, shift=0.5))
    assert [k for k, c in result.items() if c.drifted] == ["f00"]
    assert severity(result["f00"]) > 1 > max(severity(c) for k, c in result.items() if k != "f00")


def test_a_window_with_too_few_values_is_not_judged() -> None:
    rng = np.random.default_rng(5)
    reference = {"x": rng.standard_normal(5000)}
    family = baseline(reference, {"x": 500})
    assert window_drift(family, {"x": rng.standard_normal(200) + 5}) == {}
    assert window_drift(family, {"x": rng.standard_normal(400) + 5})["x"].drifted


def test_each_table_is_calibrated_on_its_own_and_one_too_small_is_left_out() -> None:
    rng = np.random.default_rng(6)
    reference = {
        "a": rng.standard_normal(3000),  # a table of 3,000 rows
        "b": rng.standard_normal(3000),
        "c": rng.standard_normal(1000),  # another of 1,000
        "d": rng.standard_normal(150),  # too small for windows of 100
    }
    family = baseline(reference, dict.fromkeys(reference, 100))
    assert set(family.thresholds) == {"a", "b", "c"}
    window = {k: rng.standard_normal(100) for k in reference}
    assert set(window_drift(family, window)) == {"a", "b", "c"}


@pytest.mark.parametrize("seed", [0, 1])
def test_the_chunks_wasserstein_at_once_equals_scipy_chunk_by_chunk(seed: int) -> None:
    """Calibration computes every chunk's distance in one pass; the loop over scipy's
    `wasserstein_distance` is the definition (ties, a skewed column, blocks of chunks)."""
    from mlsys.platform.drift import _chunk_picks, _chunk_wasserstein, statistic

    rng = np.random.default_rng(seed)
    for ref in (
        rng.normal(size=3000),
        np.round(rng.normal(size=3000), 1),
        rng.exponential(size=1500),
    ):
        picks = _chunk_picks(len(ref), 50, 120, seed)
        fast = _chunk_wasserstein(ref, 50, picks)
        slow = [statistic("wasserstein", ref[p[50:]], ref[p[:50]]) for p in picks]
        np.testing.assert_allclose(fast, slow, rtol=1e-12)
