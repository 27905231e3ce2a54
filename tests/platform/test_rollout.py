"""Assignment, team-draft interleaving and the rollout state (platform/rollout.py)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
import redis

from mlsys.platform.rollout import (
    Arm,
    RolloutError,
    RolloutFollower,
    RolloutState,
    RolloutStore,
    assign,
    bucket,
    team_draft,
)


def _state(percent: float, experiment: str = "exp-1", mode: str = "ab") -> RolloutState:
    return RolloutState("m", mode, "challenger", percent, experiment, 0.0)


def test_a_bucket_is_the_same_in_every_process() -> None:
    """Workers are separate interpreters (Python's hash() is salted per process)."""
    here = [bucket("exp-1", u) for u in range(5)]
    code = (
        "from mlsys.platform.rollout import bucket; print([bucket('exp-1', u) for u in range(5)])"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert there.stdout.strip() == str(here)
    assert all(0 <= b < 10_000 for b in here)


@pytest.mark.parametrize("percent", [5.0, 50.0])
def test_the_split_matches_the_percentage(percent: float) -> None:
    arms = Counter(assign(_state(percent), u) for u in range(40_000))
    share = arms[Arm.CHALLENGER] / 40_000
    assert abs(share - percent / 100) < 4 * (percent / 100 * (1 - percent / 100) / 40_000) ** 0.5


def test_a_ramp_keeps_every_challenger_user_on_the_challenger() -> None:
    at5 = {u for u in range(20_000) if assign(_state(5), u) == Arm.CHALLENGER}
    at20 = {u for u in range(20_000) if assign(_state(20), u) == Arm.CHALLENGER}
    assert at5 < at20


def test_a_new_experiment_reshuffles_users() -> None:
    a = {u for u in range(20_000) if assign(_state(50, "exp-1"), u) == Arm.CHALLENGER}
    b = {u for u in range(20_000) if assign(_state(50, "exp-2"), u) == Arm.CHALLENGER}
    overlap = len(a & b) / len(a)
    assert 0.45 < overlap < 0.55  # independent: about half of one arm is in the other


def test_team_draft_merges_two_rankings_fairly() -> None:
    first = [1, 2, 3, 4, 5, 6]
    second = [6, 5, 3, 7, 1, 2]
    first_picks = Counter()
    for seed in range(400):
        items, source, teams = team_draft(first, second, 10, seed)
        assert len(items) == len(set(items)) == len(set(first) | set(second))
        for item, index, team in zip(items, source, teams, strict=True):
            assert (first if team == "a" else second)[index] == item
        # each team's picks appear in its own ranking's order
        for team, ranking in (("a", first), ("b", second)):
            picked = [i for i, t in zip(items, teams, strict=True) if t == team]
            assert picked == sorted(picked, key=ranking.index)
        # neither team gets ahead by more than one pick while both have items left
        assert abs(teams[:4].count("a") - teams[:4].count("b")) <= 1
        first_picks[teams[0]] += 1
        assert team_draft(first, second, 10, seed) == (items, source, teams)
    assert 150 < first_picks["a"] < 250


def test_team_draft_stops_at_size_and_handles_identical_rankings() -> None:
    items, _, teams = team_draft([1, 2, 3, 4], [1, 2, 3, 4], 3, seed=1)
    assert items == [1, 2, 3] and len(teams) == 3


def test_the_store_ramps_restarts_and_stops(redis_server: Any) -> None:
    client = redis.Redis.from_url(redis_server.url)
    store = RolloutStore(client)
    name = "rollout-store-test"
    store.stop(name)
    first = store.start(name, "canary", "challenger", 5)
    assert store.get(name) == first and first.percent == 5
    ramped = store.start(name, "canary", "challenger", 20)
    assert ramped.experiment == first.experiment and ramped.percent == 20
    with pytest.raises(RolloutError, match="percent"):
        store.start(name, "ab", "challenger", 0)
    with pytest.raises(RolloutError, match="mode"):
        store.start(name, "bandit", "challenger")
    assert store.stop(name) == ramped and store.get(name) is None
    assert store.experiment(name).experiment == first.experiment  # the latest, after a stop
    events = [e["event"] for e in store.history(name)]
    assert events[-3:] == ["set", "set", "stop"]


def test_a_follower_applies_a_state_only_once_its_challenger_loaded(redis_server: Any) -> None:
    client = redis.Redis.from_url(redis_server.url)
    store = RolloutStore(client)
    name = "rollout-follower-test"
    store.stop(name)
    loads: list[str] = []
    closed: list[str] = []

    def load(alias: str) -> str:
        loads.append(alias)
        if alias == "broken":
            raise RuntimeError("no such version")
        return f"model@{alias}"

    follower = RolloutFollower(store, name, load, closed.append)
    follower.check_now()
    assert follower.current is None
    state = store.start(name, "ab", "challenger", 50)
    follower.check_now()
    assert follower.current is not None and follower.current.state == state
    store.start(name, "ab", "challenger", 30)  # same challenger: no reload
    follower.check_now()
    assert follower.current.state.percent == 30 and loads == ["challenger"]
    store.start(name, "ab", "broken", 50)  # fails to load: the previous state stays
    follower.check_now()
    follower.check_now()  # not retried until the state changes
    assert follower.current.state.percent == 30 and loads == ["challenger", "broken"]
    store.stop(name)
    follower.check_now()
    assert follower.current is None and closed == ["model@challenger"]
