"""The click generator: kit compatibility, schema, the click rule, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mlsys.errors import MlsysError
from mlsys.recommender.data import generate
from mlsys.recommender.data.dataset import open_dataset
from mlsys.recommender.data.generate import SCALES, draw_clicks, generate_clicks

# Sums over the kit's seed-7 tables, read off the kit's own output (see shared/reference).
KIT_USER_FEATURE_SUM = -1244509.9779565763
KIT_RESTAURANT_FEATURE_SUM = 116302.06495593728
KIT_LATITUDE_SUM = 1387675.6693173198


def _column_sum(path: Path, columns: list[str]) -> float:
    table = pq.read_table(path, columns=columns)
    return float(sum(np.sum(table.column(c).to_numpy(), dtype=np.float64) for c in columns))


@pytest.fixture(scope="module")
def small_tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `small` scale has the kit's full-size user and restaurant tables."""
    out = tmp_path_factory.mktemp("small") / "small"
    generate_clicks(out, scale="small", seed=7, progress=False)
    return out


def test_seed7_tables_equal_the_kits(small_tables: Path) -> None:
    users = [f"f{i:02d}" for i in range(30)]
    rests = [f"f{i:02d}" for i in range(10)]
    # Float sums depend on summation order: the last digit may differ, nothing more.
    assert _column_sum(small_tables / "user_features.parquet", users) == pytest.approx(
        KIT_USER_FEATURE_SUM, rel=1e-13
    )
    assert _column_sum(small_tables / "restaurant_features.parquet", rests) == pytest.approx(
        KIT_RESTAURANT_FEATURE_SUM, rel=1e-13
    )
    assert _column_sum(small_tables / "restaurant_features.parquet", ["latitude"]) == pytest.approx(
        KIT_LATITUDE_SUM, rel=1e-13
    )


def test_features_are_float32_values_stored_as_double(small_tables: Path) -> None:
    col = pq.read_table(small_tables / "user_features.parquet", columns=["f07"]).column(0)
    values = col.to_numpy()
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values, values.astype(np.float32).astype(np.float64))


EXPECTED_SCHEMAS = {
    "user_features.parquet": {"user_id": "int64", **{f"f{i:02d}": "double" for i in range(30)}},
    "restaurant_features.parquet": {
        "restaurant_id": "int64",
        "latitude": "double",
        "longitude": "double",
        **{f"f{i:02d}": "double" for i in range(10)},
    },
    "train/train_00.parquet": {"user_id": "int64", "restaurant_id": "int64", "click": "int64"},
    "test/test_00.parquet": {"user_id": "int64", "restaurant_id": "int64", "click": "int64"},
    "requests.parquet": {
        "user_id": "int64",
        "latitude": "double",
        "longitude": "double",
        "candidate_restaurant_ids": "list<element: int64>",
        "size": "int64",
        "max_dist": "int64",
        "sort_dist": "bool",
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SCHEMAS))
def test_files_have_the_kits_columns_in_order_and_dtypes(tiny_data: Path, name: str) -> None:
    schema = pq.read_schema(tiny_data / name)
    got = {field.name: str(field.type) for field in schema}
    assert list(got) == list(EXPECTED_SCHEMAS[name])
    for column, dtype in EXPECTED_SCHEMAS[name].items():
        assert got[column].replace("item", "element") == dtype, column


def test_file_layout_and_row_counts_follow_the_scale(tiny_data: Path) -> None:
    sizes = SCALES["tiny"]
    dataset = open_dataset(tiny_data, verify_checksums=True)
    assert [f.path.name for f in dataset.files("train")] == [
        f"train_{i:02d}.parquet" for i in range(sizes.train_files)
    ]
    assert len(dataset.files("test")) == sizes.test_files
    assert dataset.rows("train") == sizes.train_rows
    assert dataset.rows("test") == sizes.test_rows
    assert (dataset.n_users, dataset.n_restaurants) == (sizes.users, sizes.restaurants)
    manifest = json.loads((tiny_data / "manifest.json").read_text())
    assert manifest["scale"] == "tiny" and manifest["seed"] == 7
    assert manifest["counts"]["train_rows"] == sizes.train_rows
    assert set(manifest["files"]) >= {"user_features.parquet", "train/train_00.parquet"}


def test_requests_follow_the_kits_rules(tiny_data: Path) -> None:
    sizes = SCALES["tiny"]
    table = pq.read_table(tiny_data / "requests.parquet").to_pydict()
    assert len(table["user_id"]) == sizes.requests
    assert len(set(table["user_id"])) == sizes.requests  # users without replacement
    for cands in table["candidate_restaurant_ids"]:
        assert len(cands) == len(set(cands)) == sizes.candidates
        assert min(cands) >= 0 and max(cands) < sizes.restaurants
    assert set(table["size"]) <= {100 * k for k in range(1, 11)}
    assert set(table["max_dist"]) <= {1000 * k for k in range(5, 11)}
    assert set(table["sort_dist"]) == {False, True}
    lat = np.array(table["latitude"])
    assert lat.min() >= generate.MIN_LAT and lat.max() <= generate.MAX_LAT


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path, tiny_data: Path) -> None:
    again = tmp_path / "again"
    generate_clicks(again, scale="tiny", seed=7, progress=False, workers=1)
    a = json.loads((tiny_data / "manifest.json").read_text())["files"]
    b = json.loads((again / "manifest.json").read_text())["files"]
    assert {k: v["sha256"] for k, v in a.items()} == {k: v["sha256"] for k, v in b.items()}
    other = tmp_path / "other"
    generate_clicks(other, scale="tiny", seed=8, progress=False)
    c = json.loads((other / "manifest.json").read_text())["files"]
    assert a["train/train_00.parquet"]["sha256"] != c["train/train_00.parquet"]["sha256"]


def _logistic_fit(x: np.ndarray, y: np.ndarray, iters: int = 25) -> np.ndarray:
    """Newton-Raphson for P(y=1) = sigmoid(a + b x); returns [a, b]."""
    design = np.column_stack([np.ones_like(x), x])
    w = np.zeros(2)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-design @ w))
        hess = design.T @ (design * (p * (1 - p))[:, None])
        w += np.linalg.solve(hess, design.T @ (y - p))
    return w


def test_click_rule_is_bernoulli_of_sigmoid_of_the_true_score(tiny_data: Path) -> None:
    """Fit click ~ sigmoid(a + b * true_score) on the stored rows: expect a ~ 0 and b ~ 1.

    N(0, 0.1) score noise shrinks the slope by 1/sqrt(1 + pi * 0.01 / 8) ~ 0.998 (probit
    approximation), well inside the tolerance; a wrong sign, scale or missing sigmoid is not.
    """
    dataset = open_dataset(tiny_data)
    users = dataset.user_features()[:, :10].astype(np.float64)
    rests = dataset.restaurant_features().astype(np.float64)
    scores, clicks = [], []
    for _, u, r, c in dataset.iter_clicks("train"):
        scores.append(np.einsum("ij,ij->i", users[u], rests[r]))
        clicks.append(c)
    x, y = np.concatenate(scores), np.concatenate(clicks).astype(np.float64)
    a, b = _logistic_fit(x, y)
    assert abs(a) < 0.05, a
    assert 0.95 < b < 1.05, b
    # The ids are uniform over users and restaurants (chi-square over 10 equal bins).
    for ids, n in (
        (np.concatenate([u for _, u, _, _ in dataset.iter_clicks("train")]), dataset.n_users),
        (np.concatenate([r for _, _, r, _ in dataset.iter_clicks("train")]), dataset.n_restaurants),
    ):
        counts = np.bincount(ids * 10 // n, minlength=10)
        expected = len(ids) / 10
        assert ((counts - expected) ** 2 / expected).sum() < 30  # chi2(9) p ~ 0.0005 at 30


def test_draw_clicks_matches_the_rule_at_large_n() -> None:
    """The vectorised rule in isolation, at a size where the fit is tight."""
    rng = np.random.default_rng(0)
    users10 = rng.normal(0, 1, (500, 10)).astype(np.float32)
    rests = rng.normal(0, 0.5, (300, 10)).astype(np.float32)
    u, r, c = draw_clicks(rng, 400_000, users10, rests)
    score = np.einsum("ij,ij->i", users10[u].astype(np.float64), rests[r].astype(np.float64))
    a, b = _logistic_fit(score, c.astype(np.float64))
    assert abs(a) < 0.02 and abs(b - 0.998) < 0.02, (a, b)


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "d"
    generate_clicks(out, scale="tiny", progress=False)
    before = (out / "manifest.json").read_text()
    with pytest.raises(MlsysError, match="--force"):
        generate_clicks(out, scale="tiny", seed=3, progress=False)
    assert (out / "manifest.json").read_text() == before
    generate_clicks(out, scale="tiny", seed=3, force=True, progress=False)
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no staging or old copies left


def test_interrupted_run_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the middle (here: while writing requests) leaves neither a half dataset nor
    the staging folder, and an existing dataset under the name survives untouched."""
    out = tmp_path / "d"
    generate_clicks(out, scale="tiny", progress=False)
    before = (out / "manifest.json").read_text()

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "requests_table", interrupt)
    with pytest.raises(KeyboardInterrupt):
        generate_clicks(out, scale="tiny", seed=5, force=True, progress=False)
    assert (out / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
    with pytest.raises(KeyboardInterrupt):
        generate_clicks(tmp_path / "fresh", scale="tiny", progress=False)
    assert not (tmp_path / "fresh").exists()


def test_a_bigger_catalogue_grows_in_area_and_density_as_documented(tmp_path: Path) -> None:
    """`--restaurants N`: up to the kit's 100k the kit's box; beyond, area and density each
    x sqrt(N / 100k) about the same centre (here 400k: 2x the area, 2x the density)."""
    kit = generate.catalogue_box(100_000)
    assert kit == generate.catalogue_box(1_000)

    def area(box: tuple[float, float, float, float]) -> float:
        return (box[1] - box[0]) * (box[3] - box[2])

    big = generate.catalogue_box(400_000)
    assert area(big) / area(kit) == pytest.approx(2.0)
    assert (big[0] + big[1]) / 2 == pytest.approx((kit[0] + kit[1]) / 2)
    generate_clicks(tmp_path / "big", scale="tiny", restaurants=400_000, progress=False)
    ds = open_dataset(tmp_path / "big")
    loc = ds.restaurant_locations()
    assert ds.n_restaurants == 400_000
    assert big[0] <= loc[:, 0].min() and loc[:, 0].max() <= big[1]
    assert big[2] <= loc[:, 1].min() and loc[:, 1].max() <= big[3]
    with pytest.raises(MlsysError, match="restaurants"):
        generate_clicks(tmp_path / "few", scale="tiny", restaurants=10, progress=False)
