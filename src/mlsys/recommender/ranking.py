"""Ranking one recommendation request: distance filter, scoring, sort. No HTTP, no Redis here.

Shared by every stage that ranks as `/recommend` does: serving (`serving/api.py`), the
training reference profile (`training/reference.py`) and the replay (`online/replay.py`).

Scoring exploits the model's shape. RankNet is Linear(40,256) -> Linear(256,128) -> ReLU ->
Linear(128,1) with no activation between the first two layers, so for the input [u; r]

    W2 (W1 [u; r] + b1) + b2 = Mu u + Mr r + c,   M = W2 W1 (128x40) = [Mu | Mr],  c = W2 b1 + b2.

`Scorer` folds M and c once at model load; a request then costs one (128x30) mat-vec for the
user, shared by all candidates, and one (k x 10) @ (10 x 128) product for the k candidates that
survive the distance filter, instead of k full 40->256->128 passes. Everything is float64, so
the result equals `sigmoid(torch.jit.load(model.pt)(x))` (float32) to ~1e-7; a test holds it to
1e-6. There is no per-candidate Python loop: rows are numpy arrays (`Rows`, as
`serving/online_store.py` reads them, or in memory).

Displacement is the great-circle distance of `geo.haversine_m` (its docstring states the Earth
radius, 6,359,000 m, and why).

Order and ties: `sort_dist=false` sorts by score descending, `true` by displacement ascending;
both sorts are stable, so ties keep the order of `candidate_restaurant_ids` in the request.
A restaurant is kept when displacement <= max_dist (the boundary is included). Duplicate
candidate ids are ranked as given (the request is the caller's list, not a set).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from mlsys.files import JsonIn
from mlsys.recommender.artifact import STATE_KEYS
from mlsys.recommender.geo import haversine_m

Float64Array = npt.NDArray[np.float64]
IdArray = npt.NDArray[np.int64]
FloatMatrix = npt.NDArray[np.float32]


class Scorer:
    """Click probabilities from the folded RankNet parameters (see the module docstring)."""

    def __init__(self, state: dict[str, Any], n_user: int = 30) -> None:
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"not a RankNet state dict: missing {missing}")
        w1, b1, w2, b2, w3, b3 = (
            np.asarray(_numpy(state[k]), dtype=np.float64) for k in STATE_KEYS
        )
        if not all(np.isfinite(w).all() for w in (w1, b1, w2, b2, w3, b3)):
            # With finite float32 weights and features (values.py), float64 scores are always
            # finite, so a response can never carry NaN.
            raise ValueError("parameters hold NaN or infinite values")
        m = w2 @ w1  # (128, 40)
        self.n_user = n_user
        self.mu = np.ascontiguousarray(m[:, :n_user])  # (128, 30)
        self.mr_t = np.ascontiguousarray(m[:, n_user:].T)  # (10, 128)
        self.c = w2 @ b1 + b2  # (128,)
        self.w3 = np.ascontiguousarray(w3.reshape(-1))  # (128,)
        self.b3 = float(b3.reshape(-1)[0])
        # The first stage's copy (`first_stage`): the same folded weights in float32.
        self.mr_t32 = self.mr_t.astype(np.float32)
        self.w3_32 = self.w3.astype(np.float32)

    def user_part(self, user: FloatMatrix) -> Float64Array:
        """Mu u + c: the user's share of the hidden layer, computed once per request. Also
        for a (n x 30) matrix of users, one row each (`scores` then pairs row with row)."""
        out: Float64Array = user.astype(np.float64) @ self.mu.T + self.c
        return out

    def scores(self, hu: Float64Array, restaurants: FloatMatrix) -> Float64Array:
        """sigmoid(w3 . relu(hu + Mr r) + b3) for every row r of `restaurants` (k x 10)."""
        hidden = restaurants.astype(np.float64) @ self.mr_t
        hidden += hu
        np.maximum(hidden, 0.0, out=hidden)
        logits = hidden @ self.w3 + self.b3
        out: Float64Array = 1.0 / (1.0 + np.exp(-logits))
        return out

    def rough_logits(self, hu: Float64Array, restaurants: FloatMatrix) -> FloatMatrix:
        """The logits in float32 (no sigmoid: the order is all the first stage needs), in
        blocks of rows so the (rows x 128) hidden layer stays in cache."""
        hu32 = hu.astype(np.float32)
        out = np.empty(len(restaurants), dtype=np.float32)
        for start in range(0, len(restaurants), _BLOCK):
            hidden = restaurants[start : start + _BLOCK] @ self.mr_t32
            hidden += hu32
            np.maximum(hidden, 0.0, out=hidden)
            out[start : start + _BLOCK] = hidden @ self.w3_32
        return out


_BLOCK = 2048


def _numpy(t: Any) -> npt.NDArray[Any]:
    return np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t)


@dataclass(frozen=True)
class Query:
    """A validated /recommend request."""

    user_id: int
    candidate_ids: list[int] | None  # None: retrieve every restaurant within max_dist
    latitude: float
    longitude: float
    size: int = 20
    max_dist: float = 5000.0
    sort_dist: bool = False

    @classmethod
    def of_request(cls, row: JsonIn) -> Query:
        """A row of requests.parquet (its columns are the body's fields, plus user_id)."""
        return cls(int(row["user_id"]), list(row["candidate_restaurant_ids"]), row["latitude"],
                   row["longitude"], row["size"], row["max_dist"], row["sort_dist"])  # fmt: skip


@dataclass(frozen=True)
class Rows:
    """What one request reads: the user row and the restaurants' rows, either the known ones
    of the caller's candidates or those retrieved near the user (`serving/online_store.py`).

    `user` is the profile to rank with: the user's own row, or for a user the store does not
    know the namespace's cold-start profile (`cold_start` True); None when it has neither."""

    namespace: str
    user: FloatMatrix | None  # (30,)
    ids: IdArray  # (k,) restaurant ids, in the request's order (or the index's)
    features: FloatMatrix  # (k, 10)
    latitude: Float64Array  # (k,)
    longitude: Float64Array  # (k,)
    unknown: int  # candidates not in the store
    cold_start: bool = False

    @classmethod
    def in_memory(
        cls,
        user: FloatMatrix,
        candidate_ids: IdArray | npt.NDArray[np.int32],
        restaurants: FloatMatrix,
        locations: Float64Array,
    ) -> Rows:
        """What `OnlineStore.fetch` reads, from feature tables held in memory (the replay, the
        reference profile): every candidate known."""
        return cls("memory", user, np.asarray(candidate_ids, dtype=np.int64),
                   restaurants[candidate_ids], locations[candidate_ids, 0],
                   locations[candidate_ids, 1], 0)  # fmt: skip


@dataclass(frozen=True)
class Ranking:
    ids: IdArray
    scores: Float64Array
    displacement: Float64Array
    candidates: int  # in the request
    unknown: int  # not in the store, skipped
    too_far: int  # displacement > max_dist, dropped before scoring

    def to_json(self, answer_id: str | None = None) -> bytes:
        """The response body (orjson: floats as Python's shortest repr, 6x faster than
        building it with str.format), with the answer's id when it has one."""
        body: dict[str, object] = {"restaurants": [
            {"id": i, "score": s, "displacement": d}
            for i, s, d in zip(self.ids.tolist(), self.scores.tolist(),
                               self.displacement.tolist(), strict=True)
        ]}  # fmt: skip
        if answer_id is not None:
            body["answer_id"] = answer_id
        return orjson.dumps(body)


@dataclass(frozen=True)
class Reachable:
    """The candidates within `max_dist` of the user: what every model of a request ranks
    (computed once when an experiment ranks with two)."""

    user: FloatMatrix
    ids: IdArray
    displacement: Float64Array
    features: FloatMatrix
    candidates: int  # in the request, or read from the geo index
    unknown: int
    too_far: int


def reachable(query: Query, rows: Rows) -> Reachable:
    assert rows.user is not None, "ranking needs a user profile"
    displacement = haversine_m(query.latitude, query.longitude, rows.latitude, rows.longitude)
    near = displacement <= query.max_dist
    candidates = len(rows.ids) if query.candidate_ids is None else len(query.candidate_ids)
    return Reachable(
        user=rows.user,
        ids=rows.ids[near],
        displacement=displacement[near],
        features=rows.features[near],
        candidates=candidates,
        unknown=rows.unknown,
        too_far=int(len(near) - int(near.sum())),
    )


def first_stage(query: Query, reach: Reachable, scorer: Scorer, keep: int) -> Reachable:
    """The funnel's cheap stage: at most max(keep, size) of the reachable restaurants, the ones
    the full model is to score.

    By score, it keeps the best by the same folded model in float32 (`Scorer.rough_logits`),
    1.3x cheaper than the float64 scores on the same rows, and the full model then scores
    max(keep, size) of them exactly: 2.2-4.4x less than scoring all in reach at 100k-10M
    restaurants (docs/funnel.md). Cheaper scorers lose too much of the answer, because this
    RankNet uses its ReLU broadly (`benchmarks/first_stage.py`: recall@size 0.56 for the
    model without its ReLU, 0.66 and 0.94 for its 32 and 64 most important hidden units, 1.0
    for float32). By distance
    (`sort_dist`) nothing needs guessing: the `size` nearest are the answer, exactly, so only
    they are scored."""
    n = len(reach.ids)
    if query.sort_dist:
        if n <= query.size:
            return reach
        kept = np.sort(np.argsort(reach.displacement, kind="stable")[: query.size])
    else:
        limit = max(keep, query.size)
        if n <= limit:
            return reach
        rough = scorer.rough_logits(scorer.user_part(reach.user), reach.features)
        kept = np.sort(np.argpartition(-rough, limit - 1)[:limit])
    return replace(reach, ids=reach.ids[kept], displacement=reach.displacement[kept],
                   features=reach.features[kept])  # fmt: skip


def order(query: Query, reach: Reachable, scorer: Scorer, first_stage_k: int = 0) -> Ranking:
    """Score the reachable candidates, sort, cut to `size`. With `first_stage_k` > 0 the
    cheap stage (`first_stage`) picks which ones the full model scores."""
    if first_stage_k > 0:
        reach = first_stage(query, reach, scorer, first_stage_k)
    scores = scorer.scores(scorer.user_part(reach.user), reach.features)
    key = reach.displacement if query.sort_dist else -scores
    top = np.argsort(key, kind="stable")[: query.size]
    return Ranking(
        ids=reach.ids[top],
        scores=scores[top],
        displacement=reach.displacement[top],
        candidates=reach.candidates,
        unknown=reach.unknown,
        too_far=reach.too_far,
    )


def rank(query: Query, rows: Rows, scorer: Scorer, first_stage_k: int = 0) -> Ranking:
    """Filter by distance, score what is left, sort, cut to `size` (see the module docstring)."""
    return order(query, reachable(query, rows), scorer, first_stage_k)


def probe_input() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """A fixed user and 8 restaurants spanning the features' typical range (about +-2)."""
    user = np.linspace(-2.0, 2.0, 30, dtype=np.float32)
    restaurants = np.linspace(-2.0, 2.0, 80, dtype=np.float32).reshape(8, 10)[::-1].copy()
    return user, restaurants
