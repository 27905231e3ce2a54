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
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlsys.platform.live_model import LiveModel
from mlsys.platform.server import Component
from mlsys.platform.settings import Settings
from mlsys.platform.validation import (
    InvalidRequest,
    error_response,
    invalid,
    number,
    parse_json_object,
)
from mlsys.recommender.features import (
    FeatureStoreError,
    InvalidFeatures,
    OnlineStore,
    UnknownEntity,
    connect,
    read_meta,
    set_restaurant,
    set_user,
)
from mlsys.recommender.service import Query, load_model, probe, rank

INT64_MAX = (1 << 63) - 1
_USER_ID = re.compile(r"u?([0-9]{1,19})")


def parse_user_id(raw: str, field: str = "user_id") -> int:
    """`u000123` (the spec's example) and `123` (requests.parquet) are both user 123.

    `fullmatch`, not `match(...$)`: `$` also matches before a trailing newline, which made
    `/recommend/1140%0A` user 1140.
    """
    m = _USER_ID.fullmatch(raw)
    if m is None or int(m.group(1)) > INT64_MAX:
        raise InvalidRequest(field, "must be an integer id like 123 or u000123")
    return int(m.group(1))


def parse_query(user_id: int, body: bytes, max_candidates: int) -> Query:
    """Validate a /recommend body; the error names the first offending field."""
    data = parse_json_object(body)

    ids = data.get("candidate_restaurant_ids")
    if ids is None:
        raise InvalidRequest("candidate_restaurant_ids", "is required")
    if not isinstance(ids, list):
        raise InvalidRequest("candidate_restaurant_ids", "must be a list of integer ids")
    if len(ids) > max_candidates:
        raise InvalidRequest(
            "candidate_restaurant_ids", f"has {len(ids)} ids, at most {max_candidates} allowed"
        )
    # type() of each id via map: C-level, and bool (a subclass of int) is rejected.
    if ids and set(map(type, ids)) != {int}:
        raise InvalidRequest("candidate_restaurant_ids", "must contain only integers")
    if ids and (min(ids) < -INT64_MAX - 1 or max(ids) > INT64_MAX):
        raise InvalidRequest("candidate_restaurant_ids", "ids must fit in 64 bits")

    latitude = number(data, "latitude", None, -90.0, 90.0)
    longitude = number(data, "longitude", None, -180.0, 180.0)

    size = data.get("size", 20)
    if isinstance(size, bool) or not isinstance(size, int):
        raise InvalidRequest("size", "must be an integer")
    if size < 1:
        raise InvalidRequest("size", "must be at least 1")
    max_dist = number(data, "max_dist", 5000.0, low=0.0)
    sort_dist = data.get("sort_dist", False)
    if not isinstance(sort_dist, bool):
        raise InvalidRequest("sort_dist", "must be true or false")
    return Query(
        user_id=user_id,
        candidate_ids=ids,
        latitude=latitude,
        longitude=longitude,
        size=size,
        max_dist=max_dist,
        sort_dist=sort_dist,
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

    async def admin_body(request: Request) -> dict[str, Any]:
        data = parse_json_object(await request.body())
        features = data.get("features")
        if features is not None and (
            not isinstance(features, list)
            or any(isinstance(v, bool) or not isinstance(v, int | float) for v in features)
        ):
            raise InvalidRequest("features", "must be a list of numbers")
        return data

    def set_user_from(user_id: int, data: dict[str, Any], create: bool) -> str:
        if data.get("features") is None:
            raise InvalidRequest("features", "is required")
        return set_user(client, user_id, data["features"], create=create)

    def set_restaurant_from(restaurant_id: int, data: dict[str, Any], create: bool) -> str:
        lat = None if data.get("latitude") is None else number(data, "latitude", None, -90, 90)
        lon = None if data.get("longitude") is None else number(data, "longitude", None, -180, 180)
        features = data.get("features")
        return set_restaurant(client, restaurant_id, features, lat, lon, create=create)

    def admin_update(
        entity: str, id_param: str, apply: Callable[[int, dict[str, Any], bool], str]
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
                key = apply(entity_id, await admin_body(request), create == "true")
            except InvalidRequest as exc:
                return invalid(exc)
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
    )
