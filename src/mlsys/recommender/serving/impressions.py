"""What the recommender writes to the event log, and how an interleaved answer is built.

An impression is one answered /recommend request: who asked, where, with which parameters,
which experiment and arm answered with which model versions, and the returned restaurants in
order with their scores (position = index + 1). For interleaving, `teams` says per position
which arm put the restaurant there ("a" champion, "b" challenger), and `arms_agree` whether both
arms ranked alike (then the answer can show no preference). The parquet schemas below
are what `mlsys log export` writes: the analysis reads those columns and nothing else.

For the drift monitor (`online/drift_monitor.py`) an impression also carries a sample of what
the model saw: one reachable candidate, drawn from the request id, as the scored row (the user's 30
features and the restaurant's 10, in `reference.reference_columns()` order), its click
probability under the model that scored it, and its distance. One row per answer, drawn
uniformly from what was scored (not from what was shown, which the ranking selects), is what
the training reference's uniform user-restaurant pairs compare with.
"""

from __future__ import annotations

import time
from typing import Any, TypedDict

import numpy as np

from mlsys.platform.event_log import LogRecord
from mlsys.platform.rollout import team_draft
from mlsys.recommender.ranking import Query, Ranking, Reachable, Scorer


def schemas() -> dict[str, Any]:
    """Stream name -> pyarrow schema, in the order `mlsys log export` writes them (pyarrow is
    imported here, not by the API's workers, which never need it)."""
    import pyarrow as pa

    impressions = pa.schema(
        [
            ("stream_id", pa.string()),
            ("request_id", pa.string()),
            ("correlation_id", pa.string()),
            ("ts_ms", pa.int64()),
            ("user_id", pa.int64()),
            ("experiment", pa.string()),
            ("mode", pa.string()),
            ("arm", pa.string()),
            ("model", pa.string()),
            ("champion", pa.string()),
            ("challenger", pa.string()),
            ("ids", pa.list_(pa.int64())),
            ("scores", pa.list_(pa.float64())),
            ("teams", pa.string()),
            ("arms_agree", pa.bool_()),
            ("latitude", pa.float64()),
            ("longitude", pa.float64()),
            ("size", pa.int64()),
            ("max_dist", pa.float64()),
            ("sort_dist", pa.bool_()),
            ("candidates", pa.int64()),
            ("reachable", pa.int64()),
            ("server_ms", pa.float64()),
            ("sample", pa.list_(pa.float32())),
            ("sample_score", pa.float64()),
            ("sample_model", pa.string()),
            ("sample_distance", pa.float64()),
        ]
    )
    clicks = pa.schema(
        [
            ("stream_id", pa.string()),
            ("request_id", pa.string()),
            ("ts_ms", pa.int64()),
            ("item_id", pa.int64()),
            ("position", pa.int64()),
            ("user_id", pa.int64()),
            ("experiment", pa.string()),
            ("arm", pa.string()),
            ("credited", pa.string()),
            ("model", pa.string()),
        ]
    )
    shadow = pa.schema(
        [
            ("stream_id", pa.string()),
            ("request_id", pa.string()),
            ("ts_ms", pa.int64()),
            ("experiment", pa.string()),
            ("model", pa.string()),
            ("champion", pa.string()),
            ("ids", pa.list_(pa.int64())),
            ("scores", pa.list_(pa.float64())),
            ("shadow_ms", pa.float64()),
        ]
    )
    return {"impressions": impressions, "clicks": clicks, "shadow": shadow}


def interleave(first: Ranking, second: Ranking, size: int, seed: int) -> tuple[Ranking, str]:
    """Team-draft merge of two rankings of the same candidates: each restaurant keeps the
    score and displacement of the ranking that placed it."""
    items, source, teams = team_draft(first.ids.tolist(), second.ids.tolist(), size, seed)
    pick_a = np.frombuffer(teams.encode(), dtype=np.uint8) == ord("a")
    index = np.asarray(source, dtype=np.int64)
    scores = np.empty(len(items), dtype=np.float64)
    displacement = np.empty(len(items), dtype=np.float64)
    scores[pick_a] = first.scores[index[pick_a]]
    scores[~pick_a] = second.scores[index[~pick_a]]
    displacement[pick_a] = first.displacement[index[pick_a]]
    displacement[~pick_a] = second.displacement[index[~pick_a]]
    merged = Ranking(
        ids=np.asarray(items, dtype=np.int64),
        scores=scores,
        displacement=displacement,
        candidates=first.candidates,
        unknown=first.unknown,
        too_far=first.too_far,
    )
    return merged, teams


class ScoredSample(TypedDict):
    """The monitor's row of one answer, as the impression carries it."""

    sample: list[float]  # the user's 30 features, then the restaurant's 10
    sample_score: float
    sample_model: str
    sample_distance: float


def scored_sample(seed: int, reach: Reachable, scorer: Scorer, label: str) -> ScoredSample | None:
    """One reachable candidate (index `seed` mod their count) as the monitor sees it."""
    if not len(reach.ids):
        return None
    j = seed % len(reach.ids)
    row = reach.features[j : j + 1]
    score = float(scorer.scores(scorer.user_part(reach.user), row)[0])
    features = np.concatenate([np.asarray(reach.user, dtype=np.float64), row[0]])
    return {
        "sample": np.round(features, 5).tolist(),
        "sample_score": round(score, 6),
        "sample_model": label,
        "sample_distance": round(float(reach.displacement[j]), 1),
    }


def impression(
    request_id: str,
    query: Query,
    ranking: Ranking,
    *,
    experiment: str,
    mode: str,
    arm: str,
    model: str,
    champion: str,
    challenger: str,
    teams: str,
    arms_agree: bool | None,
    server_ms: float,
    reachable: int,
    sample: ScoredSample | None,
    correlation_id: str = "",
    cold_start: str = "",
) -> LogRecord:
    return {
        "request_id": request_id,
        "correlation_id": correlation_id,
        "ts_ms": int(time.time() * 1000),
        "user_id": query.user_id,
        "experiment": experiment,
        "mode": mode,
        "arm": arm,
        "model": model,
        "champion": champion,
        "challenger": challenger,
        "ids": ranking.ids.tolist(),
        "scores": np.round(ranking.scores, 6).tolist(),
        "teams": teams,
        "arms_agree": arms_agree,
        "latitude": query.latitude,
        "longitude": query.longitude,
        "size": query.size,
        "max_dist": query.max_dist,
        "sort_dist": query.sort_dist,
        "candidates": ranking.candidates,
        "retrieved": query.candidate_ids is None,  # no list: read from the geo index
        "cold_start": cold_start,  # "user": ranked with the cold-start profile
        "reachable": reachable,
        "server_ms": round(server_ms, 3),
        **(sample or {}),
    }
