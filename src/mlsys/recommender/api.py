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
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlsys.platform.live_model import LiveModel
from mlsys.platform.openapi import Operation, Param
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
    UnknownEntity,
    connect,
    read_meta,
    set_restaurant,
    set_user,
)
from mlsys.recommender.model import RESTAURANT_FEATURES, USER_FEATURES
from mlsys.recommender.service import Query, load_model, probe, rank
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
    client = connect(settings.redis_url, timeout_s=settings.redis_timeout_s)
    store = OnlineStore(client)
    redis_errors = (redis.ConnectionError, redis.TimeoutError, FeatureStoreError)

    async def recommend(request: Request) -> Response:
        try:
            user_id = parse_user_id(request.path_params["user_id"])
            query = parse_query(user_id, await request.body(), settings.max_candidates)
        except InvalidRequest as exc:
            return invalid(exc)
        log = request.scope.get("state", {}).get("log", {})
        log["user_id"] = user_id
        started = time.perf_counter()
        try:
            rows = store.fetch(user_id, query.candidate_ids)
        except redis_errors as exc:
            return _unavailable(exc)
        FEATURE_FETCH.observe(time.perf_counter() - started)
        if rows.user is None:
            body = {"error": "unknown_user", "user_id": user_id, "message": "user not found"}
            return JSONResponse(body, status_code=404)
        served = live.current  # read once: one request, one model version
        ranking = rank(query, rows, served.model.scorer)
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
            model=served.label,
        )
        return Response(
            ranking.to_json(),
            media_type="application/json",
            headers={"x-unknown-candidates": str(ranking.unknown), "x-model-version": served.label},
        )

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
        return set_user(client, user_id, update.features, create=create)

    def set_restaurant_from(restaurant_id: int, body: bytes, create: bool) -> str:
        update = parse_body(RestaurantUpdate, body)
        return set_restaurant(
            client, restaurant_id, update.features, update.latitude, update.longitude,
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
        client.ping()
        return None

    def features_check() -> str | None:
        meta = read_meta(client)
        if meta is None:
            return "no features loaded (run `mlsys features load`)"
        return None

    def close() -> None:
        live.stop()
        client.connection_pool.disconnect()

    return Component(
        name="recommender",
        routes=[
            Route("/recommend/{user_id}", recommend, methods=["POST"]),
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
        serving=lambda: live.current.label,
        operations=OPERATIONS,
    )


_ID_SCHEMA = {"type": "string", "pattern": f"^{ID_PATTERN}$"}
_CREATE = Param("create", "query", {"enum": ["true", "false"]},
                "add the entity if the store does not hold it", required=False)  # fmt: skip
OPERATIONS = [
    Operation(
        "/recommend/{user_id}", "POST", "Rank the candidates for a user",
        request=RecommendRequest, response=RecommendResponse,
        errors=(404, 408, 413, 422, 503),
        params=[Param("user_id", "path", _ID_SCHEMA, "123 or u000123")],
        headers={"X-Model-Version": "NAME/VERSION of the model that answered",
                 "X-Unknown-Candidates": "candidates not in the store, skipped"},
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
