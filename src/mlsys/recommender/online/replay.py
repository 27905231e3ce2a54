"""Serve worlds without HTTP: the impressions and clicks `/recommend` and the simulated users
would log, thousands of answers a second.

The monitor's targets need hundreds of windows of 500 answers (false alarms over at least 200
windows: 100,000 answers, 40 minutes at the simulator's live rate) and many shifted streams.
A replay gives them in seconds with the serving code itself: each request is ranked by
`ranking.reachable` and `ranking.order` on the world's feature tables, its monitored row is
`impressions.scored_sample`, its record `impressions.impression`, and users click by
`simulate.clicks` under the world's click rule. The live runs (perf_test/monitoring.py) check
that the API logs the same thing.

A replay is a list of segments, (world directory, answers): the clean world for a while, then
a drifted one, as when a shift happens at a known request.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mlsys.platform.event_log import LogRecord
from mlsys.platform.rollout import hash_id
from mlsys.recommender.online.simulate import Population, clicks, population_of
from mlsys.recommender.ranking import Query, Rows, Scorer, order, reachable
from mlsys.recommender.serving.impressions import impression, scored_sample


@dataclass
class World:
    population: Population
    users: npt.NDArray[np.float32]
    restaurants: npt.NDArray[np.float32]
    locations: npt.NDArray[np.float64]
    queries: list[Query]


def load_world(data_dir: str | Path) -> World:
    from mlsys.recommender.data.dataset import open_dataset

    ds = open_dataset(data_dir)
    rows = ds.request_rows()
    return World(
        population_of(ds, rows), ds.user_features(), ds.restaurant_features(),
        ds.restaurant_locations(), [Query.of_request(row) for row in rows],
    )  # fmt: skip


def replay(
    segments: Sequence[tuple[World, int]],
    scorer: Scorer,
    label: str,
    seed: int = 0,
) -> tuple[list[LogRecord], list[LogRecord]]:
    """The impressions and clicks of `sum(answers)` requests, segment after segment."""
    impressions: list[LogRecord] = []
    click_log: list[LogRecord] = []
    for i, (world, record, shown) in enumerate(_answers(segments, scorer, label, seed)):
        impressions.append(record)
        rng = np.random.default_rng([seed, i])
        logits = world.population.logits(record["user_id"], shown)
        for position in np.flatnonzero(clicks(logits, rng)) + 1:
            click_log.append({"request_id": record["request_id"], "position": int(position),
                              "item_id": shown[position - 1]})  # fmt: skip
    return impressions, click_log


def _answers(
    segments: Sequence[tuple[World, int]], scorer: Scorer, label: str, seed: int
) -> Iterator[tuple[World, LogRecord, list[int]]]:
    i = 0
    for world, answers in segments:
        rng = np.random.default_rng([seed, i])
        n = len(world.queries)
        for k in range(answers):
            if k % n == 0:  # a fresh order per pass: windows never repeat a pass's users
                order_of = rng.permutation(n)
            query = world.queries[int(order_of[k % n])]
            cands = np.asarray(query.candidate_ids, dtype=np.int64)
            user = world.users[query.user_id]
            reach = reachable(query, Rows.in_memory(user, cands, world.restaurants,
                                                    world.locations))  # fmt: skip
            ranking = order(query, reach, scorer)
            request_id = f"replay-{seed}-{i}"
            sample = scored_sample(hash_id(request_id), reach, scorer, label)
            record = impression(
                request_id, query, ranking, experiment="", mode="", arm="champion", model=label,
                champion=label, challenger="", teams="", arms_agree=None, server_ms=0.0,
                reachable=len(reach.ids), sample=sample,
            )  # fmt: skip
            record["stream_id"] = f"{i + 1}-0"
            record["ts_ms"] = i + 1
            yield world, record, ranking.ids.tolist()
            i += 1
