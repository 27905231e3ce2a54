"""Ranking without HTTP or Redis: the folded scorer, the distance filter, both sort orders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from geographiclib.geodesic import Geodesic

from mlsys.recommender.data.dataset import open_dataset
from mlsys.recommender.geo import EARTH_RADIUS_M
from mlsys.recommender.model import RankNet
from mlsys.recommender.ranking import Query, Rows, Scorer, rank
from mlsys.recommender.serving.served_model import load_model


def jit_probabilities(pt: Path, users: np.ndarray, rests: np.ndarray) -> np.ndarray:
    module = torch.jit.load(str(pt))
    x = torch.from_numpy(np.concatenate([users, rests], axis=1).astype(np.float32))
    with torch.no_grad():
        return torch.sigmoid(module(x)).double().numpy()


def test_scorer_equals_torchscript_model(model_dir: Path, tiny_data: Path) -> None:
    ds = open_dataset(tiny_data)
    users, rests = ds.user_features(), ds.restaurant_features()
    model = load_model(model_dir)
    for user_id in (0, 7, 1999):
        hu = model.scorer.user_part(users[user_id])
        ours = model.scorer.scores(hu, rests)
        ref = jit_probabilities(
            model_dir / "model.pt", np.repeat(users[[user_id]], len(rests), 0), rests
        )
        assert np.abs(ours - ref).max() < 1e-6


def test_bare_kit_model_pt_loads_and_matches(tmp_path: Path, tiny_data: Path) -> None:
    torch.manual_seed(3)
    pt = tmp_path / "model.pt"
    torch.jit.script(RankNet()).save(str(pt))
    model = load_model(pt)
    assert len(model.version) == 12
    ds = open_dataset(tiny_data)
    users, rests = ds.user_features()[:50], ds.restaurant_features()[:50]
    ours = np.array(
        [
            model.scorer.scores(model.scorer.user_part(u), r[None])[0]
            for u, r in zip(users, rests, strict=True)
        ]
    )
    assert np.abs(ours - jit_probabilities(pt, users, rests)).max() < 1e-6


def test_scorer_rejects_foreign_state() -> None:
    with pytest.raises(ValueError, match="missing"):
        Scorer({"weight": np.zeros(3)})


def _rows(
    lat: list[float],
    lon: list[float],
    feats: np.ndarray | None = None,
    positions: list[int] | None = None,
    candidates: list[int] | None = None,
) -> Rows:
    """What the store reads for `candidates` (default 0..k-1): the ones at `positions` known."""
    k = len(lat)
    at = np.arange(k) if positions is None else np.asarray(positions)
    return Rows(
        namespace="t",
        user=np.linspace(-1, 1, 30).astype(np.float32),
        ids=np.asarray(candidates if candidates is not None else range(k), np.int64)[at],
        features=np.zeros((k, 10), np.float32) if feats is None else feats,
        latitude=np.asarray(lat, np.float64),
        longitude=np.asarray(lon, np.float64),
        unknown=0 if positions is None else 1,
    )


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    torch.manual_seed(0)
    return Scorer(dict(RankNet().state_dict()))


def test_displacement_is_great_circle_within_half_percent_of_geodesic(scorer: Scorer) -> None:
    rng = np.random.default_rng(0)
    lat = rng.uniform(13.58, 14.17, 200).tolist()
    lon = rng.uniform(100.30, 100.86, 200).tolist()
    q = Query(
        user_id=0,
        candidate_ids=list(range(200)),
        latitude=13.75,
        longitude=100.5,
        size=200,
        max_dist=1e9,
    )
    r = rank(q, _rows(lat, lon), scorer)
    geod = Geodesic.WGS84
    for rid, d in zip(r.ids.tolist(), r.displacement.tolist(), strict=True):
        ref = geod.Inverse(13.75, 100.5, lat[rid], lon[rid])["s12"]
        assert abs(d - ref) <= 0.005 * ref
    assert EARTH_RADIUS_M == 6_359_000.0


def test_distance_filter_keeps_the_boundary_and_sorts_both_ways(scorer: Scorer) -> None:
    lat = [13.70, 13.71, 13.72, 13.73, 13.90]
    lon = [100.5] * 5
    feats = np.random.default_rng(1).normal(size=(5, 10)).astype(np.float32)
    base = Query(
        user_id=0,
        candidate_ids=[10, 11, 12, 13, 14],
        latitude=13.70,
        longitude=100.5,
        size=10,
        max_dist=1e9,
    )
    everything = rank(base, _rows(lat, lon, feats, candidates=base.candidate_ids), scorer)
    d13 = float(everything.displacement[everything.ids == 13][0])
    at = rank(
        Query(**{**base.__dict__, "max_dist": d13}),
        _rows(lat, lon, feats, candidates=base.candidate_ids),
        scorer,
    )
    assert 13 in at.ids and 14 not in at.ids and at.too_far == 1
    below = rank(
        Query(**{**base.__dict__, "max_dist": np.nextafter(d13, 0)}),
        _rows(lat, lon, feats, candidates=base.candidate_ids),
        scorer,
    )
    assert 13 not in below.ids and below.too_far == 2

    by_score = rank(
        Query(**{**base.__dict__, "max_dist": d13}),
        _rows(lat, lon, feats, candidates=base.candidate_ids),
        scorer,
    )
    assert np.all(np.diff(by_score.scores) <= 0)
    by_dist = rank(
        Query(**{**base.__dict__, "max_dist": d13, "sort_dist": True}),
        _rows(lat, lon, feats, candidates=base.candidate_ids),
        scorer,
    )
    assert by_dist.ids.tolist() == [10, 11, 12, 13]
    assert sorted(by_dist.ids.tolist()) == sorted(by_score.ids.tolist())
    top2 = rank(
        Query(**{**base.__dict__, "size": 2}),
        _rows(lat, lon, feats, candidates=base.candidate_ids),
        scorer,
    )
    assert top2.ids.tolist() == everything.ids[:2].tolist()


def test_ties_keep_request_order(scorer: Scorer) -> None:
    # identical features and location: equal scores and displacements
    q = Query(
        user_id=0, candidate_ids=[5, 3, 9, 1], latitude=13.7, longitude=100.5, size=10, max_dist=1e9
    )
    for sort_dist in (False, True):
        r = rank(
            Query(**{**q.__dict__, "sort_dist": sort_dist}),
            _rows([13.71] * 4, [100.51] * 4, candidates=q.candidate_ids),
            scorer,
        )
        assert r.ids.tolist() == [5, 3, 9, 1]


def test_unknown_candidates_map_positions(scorer: Scorer) -> None:
    q = Query(
        user_id=0, candidate_ids=[4, 999, 6], latitude=13.7, longitude=100.5, size=10, max_dist=1e9
    )
    r = rank(
        q, _rows([13.7, 13.8], [100.5, 100.5], positions=[0, 2], candidates=q.candidate_ids), scorer
    )
    assert r.ids.tolist() == [4, 6] or r.ids.tolist() == [6, 4]
    assert r.unknown == 1 and r.candidates == 3
    body = r.to_json()
    import json

    parsed = json.loads(body)
    assert [set(x) for x in parsed["restaurants"]] == [{"id", "score", "displacement"}] * 2
