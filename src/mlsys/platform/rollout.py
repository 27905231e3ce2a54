"""How a model name's traffic is split between its champion and a challenger.

One rollout state per model name, a JSON value under one Redis key (`mlsys:rollout:NAME`),
written whole by `mlsys rollout ...` (one SET: a worker never reads half a state) and read by
every worker's `RolloutFollower` once a second, so a change reaches all workers within about
one second plus the challenger's load time:

- shadow: the challenger scores the same candidates after the champion's answer has gone out;
  its result is logged, never returned;
- canary / ab: `bucket(experiment, user_id) = hash(salt, user_id) mod 10000`; the user sees the
  challenger when bucket < percent * 100. The salt is the experiment id, so assignment is
  sticky for the whole experiment (every worker computes the same arm with no shared state),
  and a ramp (`canary --percent 5` then `--percent 20` with the same challenger) keeps the
  experiment, so a user already on the challenger stays there;
- interleave: both rank, `team_draft` merges the two rankings into one response and records
  which arm put each item there.

KServe, Seldon and Istio split by request weight, so a user flips between variants from one
request to the next (istio#9764); the hash of the user id is what keeps a user on one side.

A worker applies a new state only once the challenger it names is loaded, and until then keeps
the previous one: a request never waits for a model load. Every record a request writes names
its experiment, so the few requests a slow worker serves under the old state during the
switch are not counted in the new experiment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from mlsys.errors import MlsysError
from mlsys.files import JsonIn
from mlsys.platform.redis_client import RedisClient

log = logging.getLogger("mlsys.rollout")


class Mode(StrEnum):
    """How a rollout splits traffic (the module docstring)."""

    SHADOW = "shadow"
    CANARY = "canary"
    AB = "ab"
    INTERLEAVE = "interleave"

    @property
    def splits_users(self) -> bool:
        """Canary and A/B assign users to arms; shadow and interleave take requests."""
        return self in (Mode.CANARY, Mode.AB)


class Arm(StrEnum):
    """Who answered a request (X-Arm, the log's `arm`, a click's `credited`)."""

    CHAMPION = "champion"
    CHALLENGER = "challenger"
    INTERLEAVED = "interleaved"


MODES = tuple(Mode)
DEFAULT_PERCENT = {Mode.SHADOW: 100.0, Mode.CANARY: 5.0, Mode.AB: 50.0, Mode.INTERLEAVE: 100.0}
BUCKETS = 10_000
KEY_PREFIX = "mlsys:rollout:"
HISTORY_SUFFIX = ":history"
HISTORY_KEEP = 1000

T = TypeVar("T")


class RolloutError(MlsysError):
    pass


@dataclass(frozen=True)
class Guardrails:
    """A canary's limits, judged by `mlsys experiment report`: the challenger's p95 latency may
    exceed the champion's by at most `p95_ms`, its error rate the champion's by `error_rate`."""

    p95_ms: float = 5.0
    error_rate: float = 0.01


@dataclass(frozen=True)
class RolloutState:
    model: str  # registered model name
    mode: Mode
    challenger: str  # registry alias of the challenger
    percent: float  # shadow, interleave: share of requests; canary, ab: share of users
    experiment: str  # id, and the assignment's salt
    started: float  # unix time
    champion: str = "champion"  # registry alias of the champion
    guardrails: Guardrails = Guardrails()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))  # a mode given as text is checked

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> RolloutState:
        data = json.loads(raw)
        data["guardrails"] = Guardrails(**data.get("guardrails", {}))
        return cls(**data)


def bucket(salt: str, user_id: int) -> int:
    """hash(salt, user) mod 10000: the same on every worker and machine (no Python `hash`,
    which is salted per process)."""
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def assign(state: RolloutState, user_id: int) -> Arm:
    """The arm a user sees under a canary or A/B state."""
    return (
        Arm.CHALLENGER if bucket(state.experiment, user_id) < state.percent * 100 else Arm.CHAMPION
    )


def arm_for(state: RolloutState, user_id: int, request_id: str) -> Arm:
    """Who answers a request: a canary or A/B user's arm, an interleaved answer for a request
    in interleaving's share, else the champion (shadow mode always answers with it)."""
    if state.mode.splits_users:
        return assign(state, user_id)
    if state.mode is Mode.INTERLEAVE and sampled(state, request_id):
        return Arm.INTERLEAVED
    return Arm.CHAMPION


def sampled(state: RolloutState, request_id: str) -> bool:
    """Whether shadow or interleave mode takes this request (`percent` of requests, by
    request id)."""
    return state.percent >= 100 or bucket(state.experiment, hash_id(request_id)) < (
        state.percent * 100
    )


def hash_id(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def team_draft(
    first: Sequence[int], second: Sequence[int], size: int, seed: int
) -> tuple[list[int], list[int], str]:
    """Team-draft interleaving (Radlinski, Kurup and Joachims, 2008) of two rankings.

    The team with fewer picks so far picks next (a coin flip on a tie) and adds its best item
    not yet shown. Returns (items, index of each item in its team's ranking, teams), where
    teams[i] is "a" when `first` put item i there and "b" for `second`. The coin is seeded by
    the caller (the request id), so a response can be recomputed.
    """
    rng = random.Random(seed)
    out: list[int] = []
    source: list[int] = []
    teams: list[str] = []
    shown: set[int] = set()
    ia = ib = picks_a = picks_b = 0
    while len(out) < size:
        while ia < len(first) and first[ia] in shown:
            ia += 1
        while ib < len(second) and second[ib] in shown:
            ib += 1
        left_a, left_b = ia < len(first), ib < len(second)
        if not (left_a or left_b):
            break
        take_a = left_a and (
            not left_b or picks_a < picks_b or (picks_a == picks_b and rng.random() < 0.5)
        )
        if take_a:
            item, index = first[ia], ia
            picks_a += 1
        else:
            item, index = second[ib], ib
            picks_b += 1
        shown.add(item)
        out.append(item)
        source.append(index)
        teams.append("a" if take_a else "b")
    return out, source, "".join(teams)


class RolloutStore:
    """The rollout states in Redis: one key per model name, and a capped history list."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client

    def get(self, model: str) -> RolloutState | None:
        raw = self.client.get(KEY_PREFIX + model)
        return None if raw is None else RolloutState.from_json(raw)

    def start(
        self,
        model: str,
        mode: Mode | str,
        challenger: str,
        percent: float | None = None,
        guardrails: Guardrails | None = None,
    ) -> RolloutState:
        """Set a mode; the same mode and challenger again only changes the percentage (a ramp
        keeps the experiment and so every user's arm), anything else starts a new one."""
        if mode not in MODES:
            raise RolloutError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        mode = Mode(mode)
        share = DEFAULT_PERCENT[mode] if percent is None else float(percent)
        if not 0 < share <= 100:
            raise RolloutError(f"--percent {share:g}: must be in (0, 100]")
        if challenger == "champion":
            raise RolloutError("the challenger must be another alias than champion")
        old = self.get(model)
        if old is not None and old.mode == mode and old.challenger == challenger:
            state = RolloutState(
                model, mode, challenger, share, old.experiment, old.started,
                guardrails=guardrails or old.guardrails,
            )  # fmt: skip
        else:
            now = time.time()
            experiment = f"{model}-{mode}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}"
            state = RolloutState(
                model, mode, challenger, share, experiment, now,
                guardrails=guardrails or Guardrails(),
            )  # fmt: skip
        self._write(model, state.to_json(), {"event": "set", **json.loads(state.to_json())})
        return state

    def stop(self, model: str) -> RolloutState | None:
        old = self.get(model)
        self._write(model, None, {"event": "stop", "model": model,
                                  "experiment": old.experiment if old else None})  # fmt: skip
        return old

    def history(self, model: str) -> list[JsonIn]:
        raw = self.client.lrange(KEY_PREFIX + model + HISTORY_SUFFIX, 0, -1)
        return [json.loads(r) for r in raw]

    def experiment(self, model: str, experiment: str | None = None) -> RolloutState:
        """The named experiment of a model, or its current or latest one."""
        current = self.get(model)
        if experiment is None and current is not None:
            return current
        for entry in reversed(self.history(model)):
            if entry.get("event") == "set" and experiment in (None, entry["experiment"]):
                entry = {k: v for k, v in entry.items() if k not in ("event", "at")}
                return RolloutState.from_json(json.dumps(entry))
        what = f"experiment {experiment}" if experiment else "any experiment"
        raise RolloutError(f"no rollout of {model!r} has run {what}")

    def _write(self, model: str, value: str | None, event: dict[str, object]) -> None:
        event["at"] = time.time()
        pipe = self.client.pipeline(transaction=True)
        if value is None:
            pipe.delete(KEY_PREFIX + model)
        else:
            pipe.set(KEY_PREFIX + model, value)
        history = KEY_PREFIX + model + HISTORY_SUFFIX
        pipe.rpush(history, json.dumps(event, sort_keys=True))
        pipe.ltrim(history, -HISTORY_KEEP, -1)
        pipe.execute()


@dataclass(frozen=True)
class Active(Generic[T]):
    """The state a worker applies, with its challenger loaded (a `LiveModel`)."""

    state: RolloutState
    challenger: T


class RolloutFollower(Generic[T]):
    """A worker's view of its model's rollout: polled every `refresh_s`, applied once the
    challenger is loaded (`load(alias)`; `close(challenger)` when it is dropped)."""

    def __init__(
        self,
        store: RolloutStore,
        model: str,
        load: Callable[[str], T],
        close: Callable[[T], None],
        refresh_s: float = 1.0,
    ) -> None:
        self.store = store
        self.model = model
        self._load = load
        self._close = close
        self.refresh_s = refresh_s
        self.current: Active[T] | None = None
        self._failed: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._follow, name=f"rollout {self.model}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.current is not None:
            self._close(self.current.challenger)

    def check_now(self) -> None:
        state = self.store.get(self.model)
        current = self.current
        if state is None:
            if current is not None:
                self.current = None
                self._close(current.challenger)
                log.info("rollout stopped", extra={"fields": {"model": self.model}})
            return
        if current is not None and current.state == state:
            return
        if current is not None and current.state.challenger == state.challenger:
            self.current = Active(state, current.challenger)  # same model, new split
            return
        if state.to_json() == self._failed:
            return
        try:
            challenger = self._load(state.challenger)
        except Exception as exc:  # keep the previous state; retried when the state changes
            self._failed = state.to_json()
            log.error(
                "rollout not applied: the challenger did not load",
                extra={"fields": {"model": self.model, "challenger": state.challenger,
                                  "error": f"{type(exc).__name__}: {exc}"}},
            )  # fmt: skip
            return
        self.current = Active(state, challenger)
        if current is not None:
            self._close(current.challenger)
        log.info(
            "rollout applied",
            extra={"fields": {"model": self.model, "mode": state.mode,
                              "experiment": state.experiment, "percent": state.percent}},
        )  # fmt: skip

    def _follow(self) -> None:
        while True:
            try:
                self.check_now()
            except Exception as exc:  # Redis unreachable: keep the last state, try again
                error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "could not read the rollout state",
                    extra={"fields": {"model": self.model, "error": error}},
                )
            if self._stop.wait(self.refresh_s):
                return
