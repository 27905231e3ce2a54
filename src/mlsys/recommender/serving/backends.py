"""What one API worker connects to and counts: the feature store and the log's Redis
(`Stores`), and the Prometheus metrics its routes move (`Metrics`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse, Response

from mlsys.errors import MlsysError
from mlsys.platform.redis_client import (
    RedisClient,
    close,
    connect,
    connect_node,
    server_is_cluster,
    unavailable_errors,
)
from mlsys.platform.settings import Settings
from mlsys.recommender.serving.online_store import FeatureStoreError, OnlineStore

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram


@dataclass(frozen=True)
class Metrics:
    """The Prometheus metrics the recommender's routes move, resolved once per worker:
    prometheus_client must not be imported before `mlsys serve` sets its multiprocess folder
    (`platform/metrics.py`), so not at this module's import."""

    candidates: Counter
    cold_start: Counter
    feature_fetch: Histogram
    feature_updates: Counter
    feature_store_errors: Counter
    feedback: Counter
    impressions: Counter
    log_records: Counter
    log_backlog: Gauge
    rollout_latency: Histogram
    rollout_requests: Counter
    shadow_latency: Histogram
    shadow_requests: Counter

    @classmethod
    def resolve(cls) -> Metrics:
        from mlsys.platform import metrics as m

        return cls(
            m.CANDIDATES, m.COLD_START, m.FEATURE_FETCH, m.FEATURE_UPDATES,
            m.FEATURE_STORE_ERRORS, m.FEEDBACK, m.IMPRESSIONS, m.LOG_RECORDS, m.LOG_BACKLOG,
            m.ROLLOUT_LATENCY, m.ROLLOUT_REQUESTS, m.SHADOW_LATENCY, m.SHADOW_REQUESTS,
        )  # fmt: skip

    def unavailable(self, exc: Exception, store: str = "feature_store") -> Response:
        """503 naming the store that failed (feature_store or log); try again in a second."""
        if store == "feature_store":
            self.feature_store_errors.labels(type(exc).__name__).inc()
        body = {"error": f"{store}_unavailable", "message": f"{type(exc).__name__}: {exc}"}
        return JSONResponse(body, status_code=503, headers={"retry-after": "1"})


class Stores:
    """One worker's connections: the feature store (connected lazily: the API may start
    before Redis does) and the log's Redis (the impression log and the rollout state)."""

    def __init__(self, settings: Settings) -> None:
        import redis

        self.settings = settings
        self._store: OnlineStore | None = None
        self.errors: tuple[type[Exception], ...] = (*unavailable_errors(), FeatureStoreError)
        log_url = settings.log_redis_url or settings.redis_url
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            if server_is_cluster(log_url, settings.redis_timeout_s):
                raise MlsysError(
                    f"log_redis_url: {log_url} is a Redis Cluster node, and the impression log "
                    "needs one Redis node of its own (set --log-redis or MLSYS_LOG_REDIS_URL)"
                )
        self.log = connect_node(log_url, timeout_s=settings.redis_timeout_s)

    def store(self) -> OnlineStore:
        """Whether the store is one node or a cluster is asked when Redis first answers. Until
        then `connect` raises (a 503), and the next request asks again."""
        if self._store is None:
            self._store = OnlineStore(
                connect(self.settings.redis_url, timeout_s=self.settings.redis_timeout_s)
            )
        return self._store

    def features(self) -> RedisClient:
        return self.store().client

    def close(self) -> None:
        if self._store is not None:
            close(self._store.client)
        close(self.log)
