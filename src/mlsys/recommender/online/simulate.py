"""Simulated users who know the truth: they click by the data generator's own rule.

`mlsys simulate users URL --data DATA --rate R --duration S` replays requests.parquet (users,
coordinates, candidates, parameters; rows in a seeded random order, cycled) against a running
API at a constant arrival rate, reads each answer, and clicks like the generated data says a
user clicks:

    click ~ Bernoulli( examination(position) * sigmoid(user.f00..f09 . restaurant.f00..f09 + e) ),
    e ~ N(0, 0.1) per shown restaurant (generate.py's noise), examination(p) = 1 / log2(1 + p),

(in a drifted world from `mlsys generate drift`, by the rule in its manifest instead: see
`generate.ClickRule`), the position-based examination model behind DCG: a user looks at
position p with probability 1/log2(1+p) (1 at the top, 0.5 at 3, 0.25 at 15). An answer
returns nearly every candidate in reach (median 39), so without examination every ranking of
the same set would earn the same clicks; with it, the order is what the model changes. Each
click is posted to /feedback.

Because the truth is known, the simulator also reports, per arm, the expected clicks of what was
shown (`expected_ctr`: the sum of examination * true probability, noise-free, averaged over
impressions: the arm's true CTR without click noise) and the oracle's (`oracle_ctr`: the same
restaurants in the order of their true probability: the physical limit of any ranking). A
request with `sort_dist: true` (half of requests.parquet) asks for distance order, which no model
changes: its oracle is what was shown, so the oracle stays a limit a ranking can reach.

CTR here is clicks per impression, and an impression is one answered list (the unit the log
and the assignment use); `item_ctr` is clicks per shown restaurant.

New users (`--new-user-share S`): a share S of requests comes from a user the store has never
seen (an id past the dataset's users, one per request), whose true taste is that of the
request's own user: a newcomer drawn from the same population, whom the API can only answer
with its cold-start profile. The result reports true CTR / oracle for known and new users
side by side (`cohorts`), and how many new users got no answer. `--no-candidates` sends the
requests without their candidate lists, so the API retrieves the restaurants in reach.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from mlsys.errors import MlsysError
from mlsys.recommender.data.generate import SCORE_NOISE, ClickRule

if TYPE_CHECKING:
    from mlsys.recommender.data.dataset import ClickDataset


def examination(n: int) -> npt.NDArray[np.float64]:
    """P(a user looks at position 1..n)."""
    out: npt.NDArray[np.float64] = 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))
    return out


def clicks(
    logits: npt.NDArray[np.float64], rng: np.random.Generator, draws: int | None = None
) -> npt.NDArray[np.bool_]:
    """The click rule on one shown list (logits in position order): a boolean per position,
    or `draws` independent rows of them."""
    size = logits.shape if draws is None else (draws, len(logits))
    noisy = _sigmoid(logits + rng.normal(0.0, SCORE_NOISE, size=size))
    out: npt.NDArray[np.bool_] = rng.random(size) < examination(len(logits)) * noisy
    return out


@dataclass
class ArmTally:
    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    items: int = 0
    expected: float = 0.0
    oracle: float = 0.0
    credited: Counter[str] = field(default_factory=Counter)
    preference: Counter[str] = field(default_factory=Counter)  # interleaving: wins per arm

    def summary(self) -> dict[str, Any]:
        n = max(self.impressions, 1)
        out: dict[str, Any] = {
            "requests": self.requests,
            "impressions": self.impressions,
            "clicks": self.clicks,
            "ctr": self.clicks / n,
            "item_ctr": self.clicks / max(self.items, 1),
            "expected_ctr": self.expected / n,
            "oracle_ctr": self.oracle / n,
        }
        if self.preference:
            out["credited_clicks"] = dict(self.credited)
            out["preferred"] = dict(self.preference)
        return out


@dataclass
class Cohort:
    """True CTR of what known or new users were shown, against the oracle's."""

    answered: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # status -> count
    expected: float = 0.0
    oracle: float = 0.0

    def summary(self) -> dict[str, Any]:
        n = max(self.answered, 1)
        ratio = self.expected / self.oracle if self.oracle else None
        return {"answered": self.answered, "refused": dict(self.refused),
                "expected_ctr": self.expected / n, "oracle_ctr": self.oracle / n,
                "ctr_over_oracle": ratio}  # fmt: skip


@dataclass
class Population:
    """What the simulator knows: requests as ready bodies, and the click rule's features."""

    users: npt.NDArray[np.int64]
    bodies: list[bytes]
    sort_dist: npt.NDArray[np.bool_]
    tastes: npt.NDArray[np.float32]  # ClickRule.tastes: the kit's, the first 10 features
    restaurants10: npt.NDArray[np.float32]
    bias: float = 0.0

    def logits(self, user: int, items: list[int]) -> npt.NDArray[np.float64]:
        """taste . restaurant + bias: the click rule's logit, noise-free."""
        logit = self.restaurants10[items].astype(np.float64) @ self.tastes[user].astype(np.float64)
        out: npt.NDArray[np.float64] = logit + self.bias
        return out


def load_population(data_dir: str | Path, candidates: bool = True) -> Population:
    from mlsys.recommender.data.dataset import open_dataset

    ds = open_dataset(data_dir)
    rows = ds.request_rows()
    if not candidates:
        for row in rows:
            del row["candidate_restaurant_ids"]
    return population_of(ds, rows)


def population_of(ds: ClickDataset, rows: list[dict[str, Any]]) -> Population:
    """The simulator's view of a dataset whose request rows were read already."""
    bodies = [
        json.dumps(
            {k: row[k] for k in ("candidate_restaurant_ids", "latitude", "longitude", "size",
                                 "max_dist", "sort_dist") if k in row},
            separators=(",", ":"),
        ).encode()
        for row in rows
    ]  # fmt: skip
    users = np.asarray([row["user_id"] for row in rows], dtype=np.int64)
    sort_dist = np.asarray([bool(row["sort_dist"]) for row in rows], dtype=bool)
    rule = ClickRule.of(ds.manifest)  # a drifted world may click by another rule
    tastes = rule.tastes(ds.user_features(first=rule.user_columns))
    return Population(users, bodies, sort_dist, tastes, ds.restaurant_features(), rule.bias)


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-x))
    return out


async def _run(
    url: str, population: Population, rate: float, duration: float, seed: int, timeout: float,
    new_user_share: float = 0.0,
) -> dict[str, Any]:  # fmt: skip
    import httpx

    order = np.random.default_rng(seed).permutation(len(population.bodies))
    n_users = len(population.tastes)
    cohorts: dict[str, Cohort] = {"known": Cohort(), "new": Cohort()}
    total = max(1, int(rate * duration))
    run = uuid.uuid4().hex[:8]
    arms: dict[str, ArmTally] = defaultdict(ArmTally)
    statuses: Counter[str] = Counter()
    feedback: Counter[str] = Counter()
    user_arms: dict[int, set[str]] = defaultdict(set)
    latency: list[float] = []  # ms, answered requests, as the user saw them
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    started = time.monotonic()
    done = 0

    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def click(answer_id: str, user: int, item: int) -> str | None:
            """The arm the click was credited to; "pending" while the log is unreachable
            (the server checks it later); None when refused or failed."""
            try:
                r = await client.post(
                    "/feedback",
                    json={"answer_id": answer_id, "user_id": user, "restaurant_id": item},
                )
            except httpx.HTTPError as exc:
                feedback[type(exc).__name__] += 1
                return None
            feedback[str(r.status_code)] += 1
            if r.status_code != 202:
                return None
            answer = r.json()
            return str(answer["credited"]) if answer.get("recorded") else "pending"

        async def one(i: int) -> None:
            nonlocal done
            row = int(order[i % len(order)])
            truth = int(population.users[row])  # whose taste decides the clicks
            new = (
                new_user_share > 0 and np.random.default_rng([seed, i, 1]).random() < new_user_share
            )
            user = n_users + i if new else truth  # a newcomer: an id the store never saw
            cohort = cohorts["new" if new else "known"]
            request_id = f"sim-{run}-{i}"
            sent = time.perf_counter()
            try:
                r = await client.post(
                    f"/recommend/{user}",
                    content=population.bodies[row],
                    headers={"content-type": "application/json", "x-request-id": request_id},
                )
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
                return
            statuses[str(r.status_code)] += 1
            if r.status_code == 200:
                latency.append((time.perf_counter() - sent) * 1e3)
            else:
                cohort.refused[str(r.status_code)] += 1
            arm = r.headers.get("x-arm", "champion")
            tally = arms[arm]
            tally.requests += 1
            if r.status_code != 200:
                return
            if arm != "interleaved":
                user_arms[user].add(arm)
            answer = r.json()
            items = [int(x["id"]) for x in answer["restaurants"]]
            rng = np.random.default_rng([seed, i])
            logit = population.logits(truth, items)
            p = _sigmoid(logit)
            exam = examination(len(items))
            clicked = [it for it, c in zip(items, clicks(logit, rng), strict=True) if c]
            tally.impressions += 1
            tally.items += len(items)
            tally.expected += float(exam @ p)
            best = p if population.sort_dist[row] else np.sort(p)[::-1]
            tally.oracle += float(exam @ best)
            cohort.answered += 1
            cohort.expected += float(exam @ p)
            cohort.oracle += float(exam @ best)
            credited = await asyncio.gather(
                *(click(answer["answer_id"], user, it) for it in clicked)
            )
            got = [c for c in credited if c is not None]
            tally.clicks += len(got)
            if arm == "interleaved":
                per = Counter(got)
                tally.credited.update(per)
                a, b = per.get("champion", 0), per.get("challenger", 0)
                tally.preference["challenger" if b > a else "champion" if a > b else "tie"] += 1
            done += 1

        tasks = []
        for i in range(total):
            due = started + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)

    elapsed = time.monotonic() - started
    served = [t for t in arms.values() if t.impressions]
    oracle = sum(t.oracle for t in served) / max(sum(t.impressions for t in served), 1)
    switched = sum(1 for a in user_arms.values() if len(a) > 1)
    return {
        "requests": total,
        "ok": statuses.get("200", 0),
        "statuses": dict(statuses),
        "feedback": dict(feedback),
        "seconds": round(elapsed, 2),
        "rate": round(total / elapsed, 2) if elapsed else math.nan,
        "users": len(user_arms),
        "users_switching_arm": switched,
        "arms": {name: t.summary() for name, t in sorted(arms.items())},
        "oracle_ctr": oracle,
        "p95_ms": float(np.percentile(latency, 95)) if latency else None,
        "new_user_share": new_user_share,
        "cohorts": {name: c.summary() for name, c in cohorts.items()},
    }


def simulate(
    url: str,
    data_dir: str | Path,
    rate: float,
    duration: float,
    seed: int = 0,
    timeout: float = 5.0,
    population: Population | None = None,
    new_user_share: float = 0.0,
    candidates: bool = True,
) -> dict[str, Any]:
    """`population` (`load_population(data_dir)`) saves reading the world again when a caller
    simulates it in many short runs. `candidates=False` sends no candidate lists."""
    if rate <= 0 or duration <= 0:
        raise MlsysError("--rate and --duration must be positive")
    if not 0.0 <= new_user_share <= 1.0:
        raise MlsysError(f"--new-user-share {new_user_share}: a share, 0 to 1")
    population = population or load_population(data_dir, candidates=candidates)
    return asyncio.run(_run(url.rstrip("/"), population, rate, duration, seed, timeout,
                            new_user_share))  # fmt: skip


def print_summary(result: dict[str, Any]) -> None:
    print(
        f"{result['requests']} requests in {result['seconds']} s ({result['rate']}/s), "
        f"{result['ok']} answered 200; {result['users']} users, "
        f"{result['users_switching_arm']} saw more than one arm"
    )
    print(f"{'arm':<12} {'requests':>8} {'impr.':>7} {'clicks':>7} {'CTR':>7} "
          f"{'true CTR':>8} {'oracle':>7}")  # fmt: skip
    for name, arm in result["arms"].items():
        print(
            f"{name:<12} {arm['requests']:>8} {arm['impressions']:>7} {arm['clicks']:>7} "
            f"{arm['ctr']:>7.3f} {arm['expected_ctr']:>8.3f} {arm['oracle_ctr']:>7.3f}"
        )
        if "preferred" in arm:
            print(f"{'':<12} credited clicks {arm['credited_clicks']}, "
                  f"requests won {arm['preferred']}")  # fmt: skip
    print(f"oracle CTR over all impressions: {result['oracle_ctr']:.3f} "
          "(clicks per impression, examination 1/log2(1+position))")  # fmt: skip
    if result["new_user_share"]:
        for name, c in result["cohorts"].items():
            ratio = c["ctr_over_oracle"]
            print(f"{name} users: {c['answered']} answered, refused {c['refused'] or 'none'}; "
                  f"true CTR {c['expected_ctr']:.3f}, oracle {c['oracle_ctr']:.3f}, "
                  f"ratio {ratio if ratio is None else round(ratio, 3)}")  # fmt: skip
