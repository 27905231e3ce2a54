"""The funnel without Redis: the geo index's covering against brute force, and the cheap first
stage against scoring every reachable restaurant."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mlsys.recommender.geo import EARTH_RADIUS_M, haversine_m
from mlsys.recommender.model import RankNet
from mlsys.recommender.ranking import Query, Rows, Scorer, first_stage, order, reachable
from mlsys.recommender.serving import geo_cells


@pytest.mark.parametrize("latitude", [13.8, 45.0, 64.0, -33.9, 0.0, 89.99, -89.9])
@pytest.mark.parametrize("max_dist", [0.0, 150.0, 5_000.0, 10_000.0, 20_000.0])
def test_the_covering_holds_every_point_within_max_dist(latitude: float, max_dist: float) -> None:
    """Points just inside the circle (where a too-small covering fails first) at several
    latitudes, since H3 cells' size and shape change with them."""
    rng = np.random.default_rng([int(abs(latitude) * 10), int(max_dist)])
    for _ in range(5):
        lat0 = float(np.clip(latitude + rng.uniform(-0.05, 0.05), -90, 90))
        lon0 = float(rng.choice([rng.uniform(-179, 179), 179.999, -180.0]))
        listed = geo_cells.covering(lat0, lon0, max_dist)
        cells = set(listed)
        suffixes = geo_cells.covering_suffixes(lat0, lon0, max_dist)
        assert suffixes == [geo_cells.cell_suffix(*c) for c in listed]
        angle = rng.uniform(0, 2 * np.pi, 400)
        r = max_dist * np.sqrt(rng.uniform(0.95, 1.0, 400))
        lat = lat0 + r * np.cos(angle) / 111_000
        lon = lon0 + r * np.sin(angle) / (111_000 * max(np.cos(np.radians(lat0)), 1e-3))
        inside = (haversine_m(lat0, lon0, lat, lon) <= max_dist) & (np.abs(lat) <= 90)
        lon = (lon + 180) % 360 - 180
        for a, b in zip(lat[inside], lon[inside], strict=True):
            assert geo_cells.cell_of(float(a), float(b)) in cells
        assert geo_cells.cell_of(lat0, lon0) in cells


def _cell_area_m2(band: int) -> float:
    south = np.radians(-90 + band * geo_cells.HEIGHT_DEG)
    north = np.radians(-90 + (band + 1) * geo_cells.HEIGHT_DEG)
    width = np.radians(geo_cells.HEIGHT_DEG * (1 << geo_cells.lon_shift(band)))
    return float(EARTH_RADIUS_M**2 * width * (np.sin(north) - np.sin(south)))


@pytest.mark.parametrize("latitude", [13.8, 60.0])
def test_the_covering_reads_little_more_than_the_circle(latitude: float) -> None:
    """The cells read cover at most 1.6x the circle's area at the kit's radii (a looser
    covering would still be correct, and slow), and each cell once."""
    for max_dist in (5_000.0, 10_000.0, 20_000.0):
        cells = geo_cells.covering(latitude, 100.5, max_dist)
        assert len(set(cells)) == len(cells)
        area = sum(_cell_area_m2(band) for band, _ in cells)
        assert area / (np.pi * max_dist**2) < 1.6


def _world(n: int, seed: int) -> tuple[Rows, Query]:
    rng = np.random.default_rng(seed)
    rows = Rows(
        namespace="t",
        user=rng.normal(size=30).astype(np.float32),
        ids=np.arange(n, dtype=np.int64) * 3,
        features=rng.normal(size=(n, 10)).astype(np.float32),
        latitude=13.8 + rng.uniform(-0.05, 0.05, n),
        longitude=100.5 + rng.uniform(-0.05, 0.05, n),
        unknown=0,
    )
    return rows, Query(0, None, 13.8, 100.5, size=50, max_dist=5_000.0)


def test_by_distance_the_first_stage_changes_nothing() -> None:
    torch.manual_seed(1)
    scorer = Scorer(dict(RankNet().state_dict()))
    rows, query = _world(3_000, 1)
    query = replace(query, sort_dist=True)
    reach = reachable(query, rows)
    full, funnel = order(query, reach, scorer), order(query, reach, scorer, first_stage_k=10)
    np.testing.assert_array_equal(full.ids, funnel.ids)
    np.testing.assert_array_equal(full.scores, funnel.scores)
    assert len(first_stage(query, reach, scorer, 10).ids) == query.size


def test_by_score_the_funnel_returns_the_full_ranking_with_exact_scores() -> None:
    """The first stage ranks by the same model in float32: on random models and restaurants
    the answer is the full ranking's, with the float64 scores."""
    torch.manual_seed(2)
    scorer = Scorer(dict(RankNet().state_dict()))
    rows, query = _world(3_000, 2)
    reach = reachable(query, rows)
    assert len(reach.ids) > 500
    full, funnel = order(query, reach, scorer), order(query, reach, scorer, first_stage_k=60)
    np.testing.assert_array_equal(full.ids, funnel.ids)
    kept = first_stage(query, reach, scorer, 60)
    assert len(kept.ids) == 60 and set(funnel.ids) <= set(kept.ids.tolist())
    # at least `size`, whatever k says; and nothing to do when few are in reach
    assert len(first_stage(query, reach, scorer, 5).ids) == query.size
    assert first_stage(query, reach, scorer, 10_000) is reach


# ------------------------------------------------------------------ against real servers


@pytest.mark.integration
def test_a_cluster_gives_the_same_answers_as_one_node(
    loaded_redis: Any, loaded_cluster: Any, model_dir: Path, tiny_data: Path
) -> None:
    """Requests without candidates, replayed from requests.parquet: the same restaurants,
    scores and order from a 3-master cluster as from one node, and every restaurant within
    max_dist of the user returned (a size larger than the reach)."""
    from starlette.testclient import TestClient

    from mlsys.compose.app import build_app
    from mlsys.platform.settings import Settings
    from mlsys.recommender.data.dataset import open_dataset

    ds = open_dataset(tiny_data)
    loc = ds.restaurant_locations()
    node = Settings(model_dir=str(model_dir), redis_url=loaded_redis.url)
    cluster = replace(node, redis_url=loaded_cluster.url, log_redis_url=loaded_redis.url)
    with TestClient(build_app(node)) as a, TestClient(build_app(cluster)) as b:
        for row in ds.request_rows()[:40]:
            body = {k: row[k] for k in ("latitude", "longitude", "size", "max_dist", "sort_dist")}
            body["size"] = 1_000
            one, many = (c.post(f"/recommend/{row['user_id']}", json=body) for c in (a, b))
            assert one.status_code == many.status_code == 200
            assert one.json()["restaurants"] == many.json()["restaurants"]
            d = haversine_m(row["latitude"], row["longitude"], loc[:, 0], loc[:, 1])
            want = np.flatnonzero(d <= row["max_dist"]).tolist()
            assert sorted(x["id"] for x in one.json()["restaurants"]) == want


@pytest.mark.integration
def test_new_users_and_no_candidate_lists_against_the_api_as_a_subprocess(
    loaded_redis: Any, model_dir: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """Simulated users, 20% of them new, send no candidate lists to `mlsys serve`: no answer
    is refused, the new users' answers are marked and counted, and both cohorts' true CTR is
    measured against the oracle."""
    import httpx

    from mlsys.compose.stack import start_api, stop_process, wait_ready
    from mlsys.platform.redis_server import RedisServer, free_port
    from mlsys.recommender.online.simulate import simulate

    with RedisServer(workdir=tmp_path / "log") as log:
        port = free_port()
        proc = start_api(model_dir, loaded_redis.url, port=port, workers=1,
                         log_path=tmp_path / "api.log",
                         extra_args=["--log-redis", log.url])  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, proc, timeout_s=120)
            result = simulate(url, tiny_data, rate=20, duration=3, seed=4,
                              new_user_share=0.2, candidates=False)  # fmt: skip
            metrics = httpx.get(f"{url}/metrics").text
            far = httpx.post(f"{url}/recommend/1", json={"latitude": 51.5, "longitude": -0.1})
        finally:
            stop_process(proc)
    assert result["statuses"] == {"200": result["requests"]}
    new, known = result["cohorts"]["new"], result["cohorts"]["known"]
    assert new["answered"] > 0 and known["answered"] > 0 and not new["refused"]
    assert 0 < new["ctr_over_oracle"] <= 1 and 0 < known["ctr_over_oracle"] <= 1
    cold = [line for line in metrics.splitlines() if line.startswith("mlsys_cold_start_total")]
    assert cold and float(cold[0].split()[-1]) == new["answered"]
    retrieved = [ln for ln in metrics.splitlines() if 'outcome="retrieved"' in ln]
    assert retrieved and float(retrieved[0].split()[-1]) > 0
    assert far.status_code == 200 and far.json()["restaurants"] == []
