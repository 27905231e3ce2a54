"""HTTP routes of the recommender: POST /recommend/{user_id} and the admin feature updates.

Request handling is: validate (422 naming the field) -> one Redis round trip
(`features.OnlineStore.fetch`; 503 if Redis fails, 404 if the user is unknown) -> rank
(`service.rank`) -> JSON. Nothing about users or restaurants is cached in the process, so an
update written to Redis is what the next request reads.

The Redis call is synchronous inside the async handler on purpose: one request's work is ~2 ms
of CPU and a bounded (50 ms timeout) round trip, each worker process serves one request at a
time, and the parallelism comes from worker processes (one per core). A thread pool or
redis.asyncio would add per-request overhead without adding any CPU.

Unknown candidate ids are skipped; their count is returned in the `X-Unknown-Candidates`
header (the body stays exactly the spec's `{"restaurants": [...]}`), logged, and counted in
/metrics.

Online experiments (`platform/rollout.py`): when the model is served by registry alias, each
worker follows the model name's rollout state. The arm that answered is in `X-Arm`
(champion, challenger, interleaved), its version in `X-Model-Version`, the experiment in
`X-Experiment`. Every 200 answer is logged as an impression before it is sent
(`platform/event_log.py`); `POST /feedback` records a click on one of its restaurants.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlsys.errors import MlsysError
from mlsys.platform.event_log import SHADOW_FLUSH_S, EventLog, Exposure
from mlsys.platform.live_model import LiveModel, Served
from mlsys.platform.openapi import Operation, Param
from mlsys.platform.redis_client import close as close_client
from mlsys.platform.redis_client import (
    connect,
    connect_node,
    server_is_cluster,
    unavailable_errors,
)
from mlsys.platform.rollout import (
    CHALLENGER,
    CHAMPION,
    INTERLEAVED,
    Active,
    RolloutFollower,
    RolloutStore,
    arm_for,
    hash_id,
    sampled,
)
from mlsys.platform.server import Component
from mlsys.platform.settings import Settings
from mlsys.platform.validation import (
    INTEGRAL_ITEMS,
    InvalidRequest,
    JsonInt,
    error_response,
    invalid,
    parse_body,
)
from mlsys.recommender.features import (
    FeatureStoreError,
    IncompleteEntity,
    InvalidFeatures,
    OnlineStore,
    Rows,
    UnknownEntity,
    read_meta,
    set_restaurant,
    set_user,
)
from mlsys.recommender.impressions import impression, interleave, scored_sample
from mlsys.recommender.model import RESTAURANT_FEATURES, USER_FEATURES
from mlsys.recommender.service import (
    Model,
    Query,
    Ranking,
    Reachable,
    load_model,
    order,
    probe,
    reachable,
)
from mlsys.recommender.values import FLOAT32_MAX

INT64_MAX = (1 << 63) - 1
MAX_CANDIDATES = 10_000
# An entity id in a path: up to 18 digits, so always below int64's maximum; the same pattern
# is what /openapi.json publishes.
ID_PATTERN = r"u?([0-9]{1,18})"
_ID = re.compile(ID_PATTERN)


def parse_user_id(raw: str, field: str = "user_id") -> int:
    """`u000123` (the spec's example) and `123` (requests.parquet) are both user 123.

    `fullmatch`, not `match(...$)`: `$` also matches before a trailing newline, which made
    `/recommend/1140%0A` user 1140.
    """
    m = _ID.fullmatch(raw)
    if m is None:
        raise InvalidRequest(field, "must be an integer id like 123 or u000123 (<= 18 digits)")
    return int(m.group(1))


Int64 = Annotated[StrictInt, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]
Float32 = Annotated[float, Field(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class RecommendRequest(BaseModel):
    """The body of POST /recommend/{user_id}: validates requests and is what /openapi.json
    publishes. Strict: a string is not a number, a bool not an id."""

    model_config = STRICT
    candidate_restaurant_ids: Annotated[list[Int64], INTEGRAL_ITEMS] = Field(
        max_length=MAX_CANDIDATES
    )
    latitude: float = Field(ge=-90, le=90, description="degrees, where the user is")
    longitude: float = Field(ge=-180, le=180, description="degrees")
    size: JsonInt = Field(default=20, ge=1, description="at most this many restaurants")
    max_dist: float = Field(default=5000.0, ge=0, description="metres; farther ones are dropped")
    sort_dist: StrictBool = Field(default=False, description="by distance, not by score")


class Restaurant(BaseModel):
    id: int
    score: float = Field(description="click probability")
    displacement: float = Field(description="metres from the user")


class RecommendResponse(BaseModel):
    restaurants: list[Restaurant]


class UserUpdate(BaseModel):
    """PUT /admin/features/users/{user_id}: all 30 features (float32 range)."""

    model_config = STRICT
    features: list[Float32] = Field(min_length=len(USER_FEATURES), max_length=len(USER_FEATURES))


class RestaurantUpdate(BaseModel):
    """PUT /admin/features/restaurants/{restaurant_id}: any of features and location; a new
    restaurant (?create=true) needs all three."""

    model_config = STRICT
    features: list[Float32] | None = Field(
        default=None, min_length=len(RESTAURANT_FEATURES), max_length=len(RESTAURANT_FEATURES)
    )
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)


REQUEST_ID_PATTERN = r"[A-Za-z0-9._:-]{1,64}"


class Feedback(BaseModel):
    """POST /feedback: the user clicked `restaurant_id` in the answer to `request_id` (the
    X-Request-ID of that /recommend response)."""

    model_config = STRICT
    request_id: str = Field(pattern=f"^{REQUEST_ID_PATTERN}$")
    restaurant_id: Int64


class FeedbackRecorded(BaseModel):
    recorded: bool
    position: int = Field(description="1-based position of the restaurant in that answer")
    credited: str = Field(description="the arm the click counts for: champion or challenger")


class Updated(BaseModel):
    updated: str = Field(description="the Redis key written")


def parse_query(user_id: int, body: bytes, max_candidates: int = MAX_CANDIDATES) -> Query:
    """Validate a /recommend body; the error names the first offending field.

    `max_candidates` may lower the published limit (Settings.max_candidates), never raise it.
    """
    req = parse_body(RecommendRequest, body)
    if len(req.candidate_restaurant_ids) > max_candidates:
        raise InvalidRequest(
            "candidate_restaurant_ids",
            f"has {len(req.candidate_restaurant_ids)} ids, at most {max_candidates} allowed",
        )
    return Query(
        user_id=user_id,
        candidate_ids=req.candidate_restaurant_ids,
        latitude=req.latitude,
        longitude=req.longitude,
        size=req.size,
        max_dist=req.max_dist,
        sort_dist=req.sort_dist,
    )


def _unavailable(exc: Exception) -> Response:
    from mlsys.platform.monitoring import FEATURE_STORE_ERRORS

    FEATURE_STORE_ERRORS.labels(type(exc).__name__).inc()
    body = {"error": "feature_store_unavailable", "message": f"{type(exc).__name__}: {exc}"}
    return JSONResponse(body, status_code=503, headers={"retry-after": "1"})


def component(settings: Settings) -> Component:
    """Load the model once per worker; connect to Redis lazily (it may come up later)."""
    import redis

    from mlsys.platform.monitoring import (
        CANDIDATES,
        FEATURE_FETCH,
        FEATURE_UPDATES,
        FEEDBACK,
        IMPRESSIONS,
        ROLLOUT_LATENCY,
        ROLLOUT_REQUESTS,
        SHADOW_LATENCY,
        SHADOW_REQUESTS,
    )

    assert settings.model_dir is not None
    live = LiveModel(
        settings.model_dir,
        load_model,
        kind="ranknet",
        probe=probe,
        refresh_s=settings.model_refresh_s,
        label_of_folder=lambda m: m.version,
    )
    live.start()

    @functools.cache
    def store() -> OnlineStore:
        """Whether the store is one node or a cluster is asked when Redis first answers: the
        API may start before Redis does. Until then `connect` raises (a 503), and since an
        exception is not cached, the next request asks again."""
        return OnlineStore(connect(settings.redis_url, timeout_s=settings.redis_timeout_s))

    def client() -> Any:
        return store().client

    redis_errors: tuple[type[Exception], ...] = (*unavailable_errors(), FeatureStoreError)
    log_url = settings.log_redis_url or settings.redis_url
    with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
        if server_is_cluster(log_url, settings.redis_timeout_s):
            raise MlsysError(
                f"log_redis_url: {log_url} is a Redis Cluster node, and the impression log needs "
                "one Redis node of its own (set --log-redis or MLSYS_LOG_REDIS_URL)"
            )
    log_client = connect_node(log_url, timeout_s=settings.redis_timeout_s)
    events = EventLog(log_client, settings.log_max_len, settings.feedback_window_s)
    model_name = live.ref.name if live.ref is not None else "ranknet"
    rollout = None if live.ref is None else _follow_rollout(model_name, settings, log_client)

    async def recommend(request: Request) -> Response:
        try:
            user_id = parse_user_id(request.path_params["user_id"])
            query = parse_query(user_id, await request.body(), settings.max_candidates)
        except InvalidRequest as exc:
            return invalid(exc)
        log = request.scope.get("state", {}).get("log", {})
        log["user_id"] = user_id
        started = time.perf_counter()
        # Read once: one request, one model version per arm, one rollout state.
        active = rollout.current if rollout is not None else None
        request_id: str = request.scope["state"]["request_id"]
        try:
            rows = store().fetch(user_id, query.candidate_ids)
        except redis_errors as exc:
            failed(active, user_id, request_id)
            log["error"] = f"{type(exc).__name__}: {exc}"
            return _unavailable(exc)
        FEATURE_FETCH.observe(time.perf_counter() - started)
        if rows.user is None:
            body = {"error": "unknown_user", "user_id": user_id, "message": "user not found"}
            return JSONResponse(body, status_code=404)
        champion = live.current
        try:
            got = answer(active, champion, query, rows, request_id)
        except Exception:  # a 500: counted against the arm that was to answer, then raised
            failed(active, user_id, request_id)
            raise
        ranking, arm, label = got.ranking, got.arm, got.label
        CANDIDATES.labels("requested").inc(ranking.candidates)
        CANDIDATES.labels("unknown").inc(ranking.unknown)
        CANDIDATES.labels("too_far").inc(ranking.too_far)
        CANDIDATES.labels("returned").inc(len(ranking.ids))
        log.update(
            candidates=ranking.candidates,
            unknown=ranking.unknown,
            too_far=ranking.too_far,
            returned=len(ranking.ids),
            namespace=rows.namespace,
            model=label,
            arm=arm,
        )
        if settings.log_impressions:
            record = impression(
                request_id, query, ranking, experiment=got.experiment, mode=got.mode, arm=arm,
                model=label, champion=champion.label, challenger=got.challenger, teams=got.teams,
                arms_agree=got.arms_agree, server_ms=(time.perf_counter() - started) * 1e3,
                reachable=got.reachable, sample=got.sample,
            )  # fmt: skip
            try:
                events.impression(
                    record,
                    Exposure(
                        request_id, user_id, arm, got.experiment, label, record["ids"], got.teams
                    ),
                )
                IMPRESSIONS.labels("logged").inc()
            except redis_errors as exc:  # the answer matters more than its log line
                IMPRESSIONS.labels("failed").inc()
                log["log_error"] = f"{type(exc).__name__}: {exc}"
        ROLLOUT_REQUESTS.labels(model_name, got.mode or "none", arm).inc()
        ROLLOUT_LATENCY.labels(model_name, arm).observe(time.perf_counter() - started)
        headers = {"x-unknown-candidates": str(ranking.unknown), "x-model-version": label,
                   "x-arm": arm}  # fmt: skip
        if got.experiment:
            headers["x-experiment"] = got.experiment
        return Response(
            ranking.to_json(), media_type="application/json", headers=headers,
            background=got.background,
        )  # fmt: skip

    def answer(
        active: Experiment | None,
        champion: Served[Model],
        query: Query,
        rows: Rows,
        request_id: str,
    ) -> Answer:
        """Who answers under the rollout state, and their ranking (see rollout.py)."""
        reach = reachable(query, rows)
        got = _choose(active, champion, query, reach, request_id)
        if not settings.log_impressions or not monitored(request_id):
            return replace(got, reachable=len(reach.ids))
        # The monitor's row is scored by the model that answered (the champion when both did).
        by = active.challenger.current if active and got.arm == CHALLENGER else champion
        sample = scored_sample(hash_id(request_id), reach, by.model.scorer, by.label)
        return replace(got, reachable=len(reach.ids), sample=sample)

    def monitored(request_id: str) -> bool:
        share = settings.monitor_sample
        return share >= 1 or hash_id("monitor:" + request_id) % 10_000 < share * 10_000

    def _choose(
        active: Experiment | None,
        champion: Served[Model],
        query: Query,
        reach: Reachable,
        request_id: str,
    ) -> Answer:
        if active is None:
            return Answer(order(query, reach, champion.model.scorer), CHAMPION, champion.label)
        state, challenger = active.state, active.challenger.current
        exp, mode, other = state.experiment, state.mode, challenger.label
        arm = arm_for(state, query.user_id, request_id)
        if arm == INTERLEAVED:
            first = order(query, reach, champion.model.scorer)
            second = order(query, reach, challenger.model.scorer)
            merged, teams = interleave(first, second, query.size, seed=hash_id(request_id))
            return Answer(
                merged, INTERLEAVED, f"{champion.label},{challenger.label}", teams=teams,
                arms_agree=bool(np.array_equal(first.ids, second.ids)), experiment=exp, mode=mode,
                challenger=other,
            )  # fmt: skip
        if arm == CHALLENGER:
            return Answer(
                order(query, reach, challenger.model.scorer), CHALLENGER, challenger.label,
                experiment=exp, mode=mode, challenger=other,
            )  # fmt: skip
        background = None
        if mode == "shadow" and sampled(state, request_id):
            background = BackgroundTask(
                shadow, request_id, query, reach, challenger.label, challenger.model,
                champion.label, state.experiment,
            )  # fmt: skip
        return Answer(
            order(query, reach, champion.model.scorer), CHAMPION, champion.label,
            background=background, experiment=exp, mode=mode, challenger=other,
        )  # fmt: skip

    def failed(active: Experiment | None, user_id: int, request_id: str) -> None:
        """A request of an experiment that got no answer, counted for the arm it was assigned
        (the canary guardrail's error rate); the log's own failure must not hide the first."""
        if active is None:
            return
        arm = arm_for(active.state, user_id, request_id)
        with contextlib.suppress(*redis_errors):
            events.error(active.state.experiment, arm)

    async def shadow(
        request_id: str, query: Query, reach: Reachable, label: str, model: Model, champion: str,
        experiment: str,
    ) -> None:  # fmt: skip
        """The challenger's ranking of the same candidates, after the answer has gone out."""
        began = time.perf_counter()
        try:
            ranking = order(query, reach, model.scorer)
            waiting = events.shadow(
                {
                    "request_id": request_id, "ts_ms": int(time.time() * 1000),
                    "experiment": experiment, "model": label, "champion": champion,
                    "ids": ranking.ids.tolist(),
                    "scores": np.round(ranking.scores, 6).tolist(),
                    "shadow_ms": round((time.perf_counter() - began) * 1e3, 3),
                }
            )  # fmt: skip
            SHADOW_REQUESTS.labels("logged").inc()
            if waiting and not flush_scheduled:
                flush_scheduled.append(True)
                asyncio.get_running_loop().call_later(SHADOW_FLUSH_S, flush_shadows)
        except Exception:  # never the answer's problem: it has been sent
            SHADOW_REQUESTS.labels("failed").inc()
        SHADOW_LATENCY.labels(model_name).observe(time.perf_counter() - began)

    flush_scheduled: list[bool] = []  # a flush of buffered shadow records is due

    def flush_shadows() -> None:
        """On the event loop, like every other use of `events`: no lock needed."""
        flush_scheduled.clear()
        try:
            events.flush_shadows()
        except redis_errors:
            SHADOW_REQUESTS.labels("failed").inc()

    async def feedback(request: Request) -> Response:
        try:
            click = parse_body(Feedback, await request.body())
        except InvalidRequest as exc:
            FEEDBACK.labels("invalid").inc()
            return invalid(exc)
        try:
            outcome = events.click(click.request_id, click.restaurant_id)
        except redis_errors as exc:
            FEEDBACK.labels("unavailable").inc()
            return _unavailable(exc)
        if not isinstance(outcome, str):
            FEEDBACK.labels("recorded").inc()
            body = {"recorded": True, "position": outcome.position, "credited": outcome.credited}
            return JSONResponse(body, status_code=202)
        FEEDBACK.labels(outcome).inc()
        status, field, message = {
            "unknown_request": (404, "request_id", "no answer with this id within the "
                                f"feedback window ({settings.feedback_window_s} s)"),
            "not_in_response": (422, "restaurant_id", "was not in that answer"),
            "duplicate": (409, "restaurant_id", "this click was already recorded"),
        }[outcome]  # fmt: skip
        return error_response(status, outcome, field, message)

    def authorized(request: Request) -> Response | None:
        if not settings.admin_token:
            return JSONResponse(
                {"error": "admin_disabled", "message": "set MLSYS_ADMIN_TOKEN to enable"},
                status_code=404,
            )
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.admin_token}".encode()):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return None

    def set_user_from(user_id: int, body: bytes, create: bool) -> str:
        update = parse_body(UserUpdate, body)
        return set_user(client(), user_id, update.features, create=create)

    def set_restaurant_from(restaurant_id: int, body: bytes, create: bool) -> str:
        update = parse_body(RestaurantUpdate, body)
        return set_restaurant(
            client(), restaurant_id, update.features, update.latitude, update.longitude,
            create=create,
        )  # fmt: skip

    def admin_update(
        entity: str, id_param: str, apply: Callable[[int, bytes, bool], str]
    ) -> Callable[[Request], Awaitable[Response]]:
        """PUT handler for one entity kind: token, id, body, write, and the same error mapping.

        An unknown id is 404 unless the request says `?create=true`: a mistyped id must not
        quietly add an entity.
        """

        async def handler(request: Request) -> Response:
            denied = authorized(request)
            if denied is not None:
                return denied
            try:
                entity_id = parse_user_id(request.path_params[id_param], id_param)
                create = request.query_params.get("create", "false")
                if create not in ("true", "false"):
                    raise InvalidRequest("create", "must be true or false")
                key = apply(entity_id, await request.body(), create == "true")
            except InvalidRequest as exc:
                return invalid(exc)
            except IncompleteEntity as exc:
                return error_response(409, "incomplete_entity", exc.field, exc.message)
            except InvalidFeatures as exc:
                return invalid(InvalidRequest(exc.field, exc.message))
            except UnknownEntity as exc:
                message = f"{exc.message}: add ?create=true to create it"
                return error_response(404, "unknown_entity", exc.field, message)
            except redis_errors as exc:
                return _unavailable(exc)
            FEATURE_UPDATES.labels(entity).inc()
            return JSONResponse({"updated": key})

        return handler

    update_user = admin_update("user", "user_id", set_user_from)
    update_restaurant = admin_update("restaurant", "restaurant_id", set_restaurant_from)

    def redis_check() -> str | None:
        client().ping()
        return None

    def features_check() -> str | None:
        meta = read_meta(client())
        if meta is None:
            return "no features loaded (run `mlsys features load`)"
        return None

    def close() -> None:
        live.stop()
        with contextlib.suppress(*redis_errors):
            events.flush_shadows()
        if rollout is not None:
            rollout.stop()
        if store.cache_info().currsize:
            close_client(store().client)
        close_client(log_client)

    def serving() -> str:
        active = rollout.current if rollout is not None else None
        if active is None:
            return live.current.label
        state = active.state
        return (f"{live.current.label} ({state.mode} {state.percent:g}% "
                f"{active.challenger.current.label}, {state.experiment})")  # fmt: skip

    return Component(
        name="recommender",
        routes=[
            Route("/recommend/{user_id}", recommend, methods=["POST"]),
            Route("/feedback", feedback, methods=["POST"]),
            Route("/admin/features/users/{user_id}", update_user, methods=["PUT"]),
            Route(
                "/admin/features/restaurants/{restaurant_id}",
                update_restaurant,
                methods=["PUT"],
            ),
        ],
        checks={
            "model": lambda: None,  # load_model above raised if it could not load
            "redis": redis_check,
            "features": features_check,
        },
        close=close,
        serving=serving,
        operations=OPERATIONS,
    )


Experiment = Active[LiveModel[Model]]  # a rollout state as a worker applies it


@dataclass(frozen=True)
class Answer:
    """A request's ranking and who made it: X-Arm, X-Model-Version, and the impression."""

    ranking: Ranking
    arm: str
    label: str
    experiment: str = ""
    mode: str = ""
    challenger: str = ""
    teams: str = ""  # interleaving: per position, "a" champion or "b" challenger
    arms_agree: bool | None = None  # interleaving: both arms ranked alike
    background: BackgroundTask | None = None  # shadow scoring, after the answer
    reachable: int = 0  # candidates within max_dist, all scored
    sample: dict[str, Any] | None = None  # the monitor's scored row (impressions.scored_sample)


def _follow_rollout(
    name: str, settings: Settings, log_client: Any
) -> RolloutFollower[LiveModel[Model]]:
    """Follow the model name's rollout state; only a model served by registry alias has one
    (a challenger is another alias of the same name)."""

    def load_challenger(alias: str) -> LiveModel[Model]:
        challenger = LiveModel(
            f"models:/{name}@{alias}", load_model, kind="ranknet", probe=probe,
            refresh_s=settings.model_refresh_s,
        )  # fmt: skip
        challenger.start()
        return challenger

    follower = RolloutFollower(
        RolloutStore(log_client), name, load_challenger, lambda m: m.stop(),
        refresh_s=settings.rollout_refresh_s,
    )  # fmt: skip
    follower.start()
    return follower


_ID_SCHEMA = {"type": "string", "pattern": f"^{ID_PATTERN}$"}
_CREATE = Param("create", "query", {"enum": ["true", "false"]},
                "add the entity if the store does not hold it", required=False)  # fmt: skip
OPERATIONS = [
    Operation(
        "/recommend/{user_id}", "POST", "Rank the candidates for a user",
        request=RecommendRequest, response=RecommendResponse,
        errors=(404, 408, 413, 422, 503),
        params=[Param("user_id", "path", _ID_SCHEMA, "123 or u000123")],
        headers={"X-Model-Version": "NAME/VERSION of the model that answered (interleaving: "
                                    "champion,challenger)",
                 "X-Arm": "champion, challenger or interleaved",
                 "X-Experiment": "the rollout experiment, when one runs",
                 "X-Unknown-Candidates": "candidates not in the store, skipped"},
    ),
    Operation(
        "/feedback", "POST", "Record a click on a restaurant of an earlier answer",
        request=Feedback, response=FeedbackRecorded, status=202,
        errors=(404, 408, 409, 413, 422, 503),
    ),
    Operation(
        "/admin/features/users/{user_id}", "PUT", "Overwrite a user's features",
        request=UserUpdate, response=Updated, errors=(401, 404, 408, 413, 422, 503),
        params=[Param("user_id", "path", _ID_SCHEMA), _CREATE],
    ),
    Operation(
        "/admin/features/restaurants/{restaurant_id}", "PUT",
        "Overwrite a restaurant's features and/or location",
        request=RestaurantUpdate, response=Updated,
        errors=(401, 404, 408, 409, 413, 422, 503),
        params=[Param("restaurant_id", "path", _ID_SCHEMA), _CREATE],
    ),
]  # fmt: skip
