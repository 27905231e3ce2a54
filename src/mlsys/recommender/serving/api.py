"""HTTP routes of the recommender: POST /recommend/{user_id}, POST /feedback and the admin
feature updates, as handler objects that hold one worker's state.

Request handling is: validate (422 naming the field, `api_schemas.py`) -> one Redis round trip
(`online_store.OnlineStore`: `fetch` the caller's candidates, or without a list `retrieve` the
restaurants near the user from the geo index; 503 if Redis fails) -> rank (`arms.py` under
the rollout, `ranking.py`, with the funnel's cheap first stage when more than
`first_stage_k` are in reach) -> JSON. A user the store does not know is ranked with the
cold-start profile (`X-Cold-Start: user`, counted, and marked in the impression). Nothing
about users or restaurants is cached in the process, so an update written to Redis is what
the next request reads.

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
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlsys.platform import answer_ids
from mlsys.platform.event_log import Click, EventLog, Exposure
from mlsys.platform.live_model import LiveModel
from mlsys.platform.rollout import RolloutFollower, RolloutStore, arm_for
from mlsys.platform.server import Component
from mlsys.platform.settings import Settings, spool_dir_for
from mlsys.platform.validation import InvalidRequest, error_response, invalid, parse_body
from mlsys.recommender.serving.api_schemas import (
    OPERATIONS,
    Feedback,
    RestaurantUpdate,
    UserUpdate,
    parse_query,
    parse_user_id,
)
from mlsys.recommender.serving.arms import Arms, Experiment, Shadows
from mlsys.recommender.serving.backends import Metrics, Stores
from mlsys.recommender.serving.entity_updates import (
    IncompleteEntity,
    InvalidFeatures,
    UnknownEntity,
    set_restaurant,
    set_user,
)
from mlsys.recommender.serving.impressions import impression
from mlsys.recommender.serving.online_store import read_meta
from mlsys.recommender.serving.served_model import Model, load_model, probe

if TYPE_CHECKING:
    pass


class Recommend:
    """POST /recommend/{user_id} and POST /feedback: answers, their impressions, their clicks."""

    def __init__(self, settings: Settings, stores: Stores, metrics: Metrics) -> None:
        self.settings = settings
        self.stores = stores
        self.metrics = metrics
        self.live = LiveModel(
            settings.model_dir or "", load_model, kind="ranknet", probe=probe,
            refresh_s=settings.model_refresh_s, label_of_folder=lambda m: m.version,
        )  # fmt: skip
        self.live.start()
        self.model_name = self.live.ref.name if self.live.ref is not None else "ranknet"
        self.events = EventLog(
            stores.log, settings.log_stream_mb, settings.feedback_window_s,
            spool_dir_for(settings), name="recommender",
            spool_max_bytes=settings.spool_max_mb << 20,
            on_outcome=lambda outcome, n: metrics.log_records.labels("recommender", outcome).inc(n),
            on_backlog=metrics.log_backlog.labels("recommender").set,
        )  # fmt: skip
        self.rollout = None if self.live.ref is None else self._follow_rollout()
        latency = metrics.shadow_latency.labels(self.model_name)
        k = settings.first_stage_k
        shadows = Shadows(self.events, metrics.shadow_requests, latency, k)
        self.arms = Arms(shadows, settings.monitor_sample, settings.log_impressions, k)

    def _follow_rollout(self) -> RolloutFollower[LiveModel[Model]]:
        """Follow the model name's rollout state; only a model served by registry alias has
        one (a challenger is another alias of the same name)."""

        def load_challenger(alias: str) -> LiveModel[Model]:
            challenger = LiveModel(
                f"models:/{self.model_name}@{alias}", load_model, kind="ranknet", probe=probe,
                refresh_s=self.settings.model_refresh_s,
            )  # fmt: skip
            challenger.start()
            return challenger

        follower = RolloutFollower(
            RolloutStore(self.stores.log), self.model_name, load_challenger, lambda m: m.stop(),
            refresh_s=self.settings.rollout_refresh_s,
        )  # fmt: skip
        follower.start()
        return follower

    async def recommend(self, request: Request) -> Response:
        m = self.metrics
        try:
            user_id = parse_user_id(request.path_params["user_id"])
            query = parse_query(user_id, await request.body(), self.settings.max_candidates)
        except InvalidRequest as exc:
            return invalid(exc)
        log = request.scope.get("state", {}).get("log", {})
        log["user_id"] = user_id
        started = time.perf_counter()
        # Read once: one request, one model version per arm, one rollout state.
        active = self.rollout.current if self.rollout is not None else None
        # The answer's key (its impression, its clicks) is made here, unguessable; the
        # client's X-Request-ID only correlates, in the log and the response's headers.
        request_id = answer_ids.mint()
        log["answer_id"] = request_id
        try:
            store = self.stores.store()
            if query.candidate_ids is None:
                rows = store.retrieve(user_id, query.latitude, query.longitude, query.max_dist)
            else:
                rows = store.fetch(user_id, query.candidate_ids)
        except self.stores.errors as exc:
            self.failed(active, user_id, request_id)
            log["error"] = f"{type(exc).__name__}: {exc}"
            return m.unavailable(exc)
        m.feature_fetch.observe(time.perf_counter() - started)
        if rows.user is None:  # unknown, and the loaded namespace has no cold-start profile
            body = {"error": "unknown_user", "user_id": user_id,
                    "message": "user not found (and no cold-start profile loaded)"}  # fmt: skip
            return JSONResponse(body, status_code=404)
        champion = self.live.current
        try:
            got = self.arms.answer(active, champion, query, rows, request_id)
        except Exception:  # a 500: counted against the arm that was to answer, then raised
            self.failed(active, user_id, request_id)
            raise
        ranking = got.ranking
        retrieved = query.candidate_ids is None
        m.candidates.labels("retrieved" if retrieved else "requested").inc(ranking.candidates)
        m.candidates.labels("unknown").inc(ranking.unknown)
        m.candidates.labels("too_far").inc(ranking.too_far)
        m.candidates.labels("returned").inc(len(ranking.ids))
        log.update(
            candidates=ranking.candidates, unknown=ranking.unknown, too_far=ranking.too_far,
            returned=len(ranking.ids), namespace=rows.namespace, model=got.label, arm=got.arm,
            retrieved=retrieved, cold_start=rows.cold_start,
        )  # fmt: skip
        if self.settings.log_impressions:
            record = impression(
                request_id, query, ranking, experiment=got.experiment, mode=got.mode or "",
                arm=got.arm, model=got.label, champion=champion.label, challenger=got.challenger,
                teams=got.teams, arms_agree=got.arms_agree,
                server_ms=(time.perf_counter() - started) * 1e3, reachable=got.reachable,
                sample=got.sample, correlation_id=request.scope["state"]["request_id"],
                cold_start="user" if rows.cold_start else "",
            )  # fmt: skip
            exposure = Exposure(request_id, user_id, got.arm, got.experiment, got.label,
                                record["ids"], got.teams)  # fmt: skip
            if self.events.impression(record, exposure):  # spooled: the writer ships it
                m.impressions.labels("logged").inc()
            else:  # the spool's backlog is full (a long outage): counted, answered
                m.impressions.labels("failed").inc()
                log["log_error"] = "impression dropped: the spool's backlog is full"
        m.rollout_requests.labels(self.model_name, got.mode or "none", got.arm).inc()
        m.rollout_latency.labels(self.model_name, got.arm).observe(time.perf_counter() - started)
        headers = {"x-unknown-candidates": str(ranking.unknown), "x-model-version": got.label,
                   "x-arm": got.arm, "x-answer-id": request_id,
                   "x-candidates": str(ranking.candidates)}  # fmt: skip
        if rows.cold_start:
            headers["x-cold-start"] = "user"
            m.cold_start.labels("user").inc()
        if got.experiment:
            headers["x-experiment"] = got.experiment
        return Response(ranking.to_json(request_id), media_type="application/json",
                        headers=headers, background=got.background)  # fmt: skip

    def failed(self, active: Experiment | None, user_id: int, request_id: str) -> None:
        """A request of an experiment that got no answer, counted for the arm it was assigned
        (the canary guardrail's error rate); the log's own failure must not hide the first."""
        if active is None:
            return
        arm = arm_for(active.state, user_id, request_id)
        with contextlib.suppress(*self.stores.errors):
            self.events.error(active.state.experiment, arm)

    async def feedback(self, request: Request) -> Response:
        counted = self.metrics.feedback
        try:
            click = parse_body(Feedback, await request.body())
        except InvalidRequest as exc:
            counted.labels("invalid").inc()
            return invalid(exc)
        answer, user, item = click.answer_id, click.user_id, click.restaurant_id
        window = self.settings.feedback_window_s
        in_flight = answer_ids.could_be_in_flight(answer, window)  # minted by us, recently
        outcome: Click | str | None = None  # None: the log is unreachable
        try:
            if self.events.writer.store_reachable:  # else held at once, without a wait
                outcome = self.events.click(answer, user, item)
            if outcome == "unknown_request" and in_flight:
                # Its impression may still be on its way (a writer ships within one tick of
                # the answer): this worker's spool first, then any worker's, then judge.
                await asyncio.to_thread(self.events.flush, 0.05)
                outcome = self.events.click(answer, user, item)
                if outcome == "unknown_request":
                    await asyncio.sleep(1.5 * self.events.linger_s)
                    outcome = self.events.click(answer, user, item)
        except self.stores.errors:
            outcome = None
        if outcome is None or (outcome == "unknown_request" and in_flight):
            # Unreachable, or an answer minted within the window that may sit in a spool not
            # yet shipped (after an outage): held, and judged once the spools have shipped.
            if not self.events.pending_click(answer, user, item):
                counted.labels("unavailable").inc()
                full = OSError("the click could not be checked and this worker's spool is full")
                return self.metrics.unavailable(full, store="log")
            counted.labels("pending").inc()
            return JSONResponse({"recorded": False, "status": "pending"}, status_code=202)
        if not isinstance(outcome, str):
            counted.labels("recorded").inc()
            body = {"recorded": True, "status": "recorded", "position": outcome.position,
                    "credited": outcome.credited}  # fmt: skip
            return JSONResponse(body, status_code=202)
        counted.labels(outcome).inc()
        status, field, message = {
            "unknown_request": (404, "answer_id",
                                f"no answer of this server with this id in the last {window} s"),
            "wrong_user": (422, "user_id", "that answer was for another user"),
            "not_in_response": (422, "restaurant_id", "was not in that answer"),
            "duplicate": (409, "restaurant_id", "this click was already recorded"),
        }[outcome]  # fmt: skip
        return error_response(status, outcome, field, message)

    def serving(self) -> str:
        active = self.rollout.current if self.rollout is not None else None
        if active is None:
            return self.live.current.label
        state = active.state
        return (f"{self.live.current.label} ({state.mode} {state.percent:g}% "
                f"{active.challenger.current.label}, {state.experiment})")  # fmt: skip

    def close(self) -> None:
        self.live.stop()
        self.events.close()
        if self.rollout is not None:
            self.rollout.stop()


class FeatureAdmin:
    """PUT /admin/features/{users,restaurants}/{id}: token, id, body, write, and one error
    mapping. An unknown id is 404 unless the request says `?create=true`: a mistyped id must
    not quietly add an entity."""

    def __init__(self, settings: Settings, stores: Stores, metrics: Metrics) -> None:
        self.settings = settings
        self.stores = stores
        self.metrics = metrics

    def authorized(self, request: Request) -> Response | None:
        if not self.settings.admin_token:
            return JSONResponse(
                {"error": "admin_disabled", "message": "set MLSYS_ADMIN_TOKEN to enable"},
                status_code=404,
            )
        given = request.headers.get("authorization", "")
        expected = f"Bearer {self.settings.admin_token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return None

    async def update_user(self, request: Request) -> Response:
        def write(user_id: int, body: bytes, create: bool) -> str:
            update = parse_body(UserUpdate, body)
            return set_user(self.stores.features(), user_id, update.features, create=create)

        return await self._update(request, "user", "user_id", write)

    async def update_restaurant(self, request: Request) -> Response:
        def write(restaurant_id: int, body: bytes, create: bool) -> str:
            update = parse_body(RestaurantUpdate, body)
            return set_restaurant(
                self.stores.features(), restaurant_id, update.features, update.latitude,
                update.longitude, create=create,
            )  # fmt: skip

        return await self._update(request, "restaurant", "restaurant_id", write)

    async def _update(
        self, request: Request, entity: str, id_param: str,
        write: Callable[[int, bytes, bool], str],
    ) -> Response:  # fmt: skip
        denied = self.authorized(request)
        if denied is not None:
            return denied
        try:
            entity_id = parse_user_id(request.path_params[id_param], id_param)
            create = request.query_params.get("create", "false")
            if create not in ("true", "false"):
                raise InvalidRequest("create", "must be true or false")
            key = write(entity_id, await request.body(), create == "true")
        except InvalidRequest as exc:
            return invalid(exc)
        except IncompleteEntity as exc:
            return error_response(409, "incomplete_entity", exc.field, exc.message)
        except InvalidFeatures as exc:
            return invalid(InvalidRequest(exc.field, exc.message))
        except UnknownEntity as exc:
            message = f"{exc.message}: add ?create=true to create it"
            return error_response(404, "unknown_entity", exc.field, message)
        except self.stores.errors as exc:
            return self.metrics.unavailable(exc)
        self.metrics.feature_updates.labels(entity).inc()
        return JSONResponse({"updated": key})


def component(settings: Settings) -> Component:
    """The recommender of one worker: load the model once, connect to Redis lazily."""
    assert settings.model_dir is not None
    metrics = Metrics.resolve()
    stores = Stores(settings)
    recommend = Recommend(settings, stores, metrics)
    admin = FeatureAdmin(settings, stores, metrics)

    def redis_check() -> str | None:
        stores.features().ping()
        return None

    def features_check() -> str | None:
        if read_meta(stores.features()) is None:
            return "no features loaded (run `mlsys features load`)"
        return None

    def close_all() -> None:
        recommend.close()
        stores.close()

    routes: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
        ("/recommend/{user_id}", recommend.recommend, "POST"),
        ("/feedback", recommend.feedback, "POST"),
        ("/admin/features/users/{user_id}", admin.update_user, "PUT"),
        ("/admin/features/restaurants/{restaurant_id}", admin.update_restaurant, "PUT"),
    ]
    return Component(
        name="recommender",
        routes=[Route(path, handler, methods=[method]) for path, handler, method in routes],
        checks={
            "model": lambda: None,  # load_model above raised if it could not load
            "redis": redis_check,
            "features": features_check,
        },
        close=close_all,
        serving=recommend.serving,
        operations=OPERATIONS,
    )
