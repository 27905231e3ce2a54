"""Who answers a /recommend request under its model's rollout, and with what ranking.

The rollout state (`platform/rollout.py`) says which arm a request belongs to; this module
applies it to one request: the champion's ranking, the challenger's, or both merged by team
draft (interleaving). In shadow mode the champion answers and the challenger's ranking of the
same candidates is scored after the answer has gone out (`Shadows`), never on the critical
path. For the drift monitor, a share of answers carries one scored row (`scored_sample`),
scored by the model that answered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from starlette.background import BackgroundTask

from mlsys.platform.event_log import EventLog
from mlsys.platform.live_model import LiveModel, Served
from mlsys.platform.rollout import Active, Arm, Mode, arm_for, hash_id, sampled
from mlsys.recommender.ranking import Query, Ranking, Reachable, Rows, order, reachable
from mlsys.recommender.serving.impressions import ScoredSample, interleave, scored_sample
from mlsys.recommender.serving.served_model import Model

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

Experiment = Active[LiveModel[Model]]  # a rollout state as a worker applies it


@dataclass(frozen=True)
class Answer:
    """A request's ranking and who made it: X-Arm, X-Model-Version, and the impression."""

    ranking: Ranking
    arm: Arm
    label: str
    experiment: str = ""
    mode: Mode | None = None
    challenger: str = ""
    teams: str = ""  # interleaving: per position, "a" champion or "b" challenger
    arms_agree: bool | None = None  # interleaving: both arms ranked alike
    background: BackgroundTask | None = None  # shadow scoring, after the answer
    reachable: int = 0  # candidates within max_dist, all scored
    sample: ScoredSample | None = None  # the monitor's scored row


class Shadows:
    """The challenger's rankings in shadow mode, scored after the answer has gone out and
    handed to the log's writer (`EventLog.shadow`)."""

    def __init__(
        self,
        events: EventLog,
        requests: Counter,  # by outcome: logged, failed
        latency: Histogram,  # scoring time, labelled with the model name already
        first_stage_k: int = 0,
    ) -> None:
        self.first_stage_k = first_stage_k
        self.events = events
        self.requests = requests
        self.latency = latency

    def task(
        self, request_id: str, query: Query, reach: Reachable, challenger: Served[Model],
        champion: str, experiment: str,
    ) -> BackgroundTask:  # fmt: skip
        return BackgroundTask(self.score, request_id, query, reach, challenger, champion,
                              experiment)  # fmt: skip

    async def score(
        self, request_id: str, query: Query, reach: Reachable, challenger: Served[Model],
        champion: str, experiment: str,
    ) -> None:  # fmt: skip
        """The challenger's ranking of the same candidates, after the answer has gone out."""
        began = time.perf_counter()
        try:
            ranking = order(query, reach, challenger.model.scorer, self.first_stage_k)
            kept = self.events.shadow(
                {
                    "request_id": request_id, "ts_ms": int(time.time() * 1000),
                    "experiment": experiment, "model": challenger.label, "champion": champion,
                    "ids": ranking.ids.tolist(),
                    "scores": np.round(ranking.scores, 6).tolist(),
                    "shadow_ms": round((time.perf_counter() - began) * 1e3, 3),
                }
            )  # fmt: skip
            self.requests.labels("logged" if kept else "failed").inc()
        except Exception:  # never the answer's problem: it has been sent
            self.requests.labels("failed").inc()
        self.latency.observe(time.perf_counter() - began)


class Arms:
    """Applies a rollout state to one request (see the module docstring)."""

    def __init__(
        self, shadows: Shadows, monitor_sample: float, log_impressions: bool,
        first_stage_k: int = 0,
    ) -> None:  # fmt: skip
        self.first_stage_k = first_stage_k
        self.shadows = shadows
        self.monitor_sample = monitor_sample
        self.log_impressions = log_impressions

    def answer(
        self,
        active: Experiment | None,
        champion: Served[Model],
        query: Query,
        rows: Rows,
        request_id: str,
    ) -> Answer:
        """Who answers under the rollout state, and their ranking."""
        reach = reachable(query, rows)
        got = self._choose(active, champion, query, reach, request_id)
        if not self.log_impressions or not self.monitored(request_id):
            return replace(got, reachable=len(reach.ids))
        # The monitor's row is scored by the model that answered (the champion when both did).
        by = active.challenger.current if active and got.arm is Arm.CHALLENGER else champion
        sample = scored_sample(hash_id(request_id), reach, by.model.scorer, by.label)
        return replace(got, reachable=len(reach.ids), sample=sample)

    def _order(self, query: Query, reach: Reachable, by: Served[Model]) -> Ranking:
        return order(query, reach, by.model.scorer, self.first_stage_k)

    def monitored(self, request_id: str) -> bool:
        share = self.monitor_sample
        return share >= 1 or hash_id("monitor:" + request_id) % 10_000 < share * 10_000

    def _choose(
        self,
        active: Experiment | None,
        champion: Served[Model],
        query: Query,
        reach: Reachable,
        request_id: str,
    ) -> Answer:
        if active is None:
            return Answer(self._order(query, reach, champion), Arm.CHAMPION, champion.label)
        state, challenger = active.state, active.challenger.current
        exp, mode, other = state.experiment, state.mode, challenger.label
        arm = arm_for(state, query.user_id, request_id)
        if arm is Arm.INTERLEAVED:
            first = self._order(query, reach, champion)
            second = self._order(query, reach, challenger)
            merged, teams = interleave(first, second, query.size, seed=hash_id(request_id))
            return Answer(
                merged, Arm.INTERLEAVED, f"{champion.label},{challenger.label}", teams=teams,
                arms_agree=bool(np.array_equal(first.ids, second.ids)), experiment=exp, mode=mode,
                challenger=other,
            )  # fmt: skip
        if arm is Arm.CHALLENGER:
            return Answer(
                self._order(query, reach, challenger), Arm.CHALLENGER, challenger.label,
                experiment=exp, mode=mode, challenger=other,
            )  # fmt: skip
        background = None
        if mode is Mode.SHADOW and sampled(state, request_id):
            background = self.shadows.task(request_id, query, reach, challenger, champion.label,
                                           state.experiment)  # fmt: skip
        return Answer(
            self._order(query, reach, champion), Arm.CHAMPION, champion.label,
            background=background, experiment=exp, mode=mode, challenger=other,
        )  # fmt: skip
