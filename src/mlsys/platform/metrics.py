"""Prometheus metrics and JSON logs shared by every route of the server.

Several uvicorn workers serve the same port, and a scrape lands on one of them, so per-process
counters would be wrong. We use prometheus_client's multiprocess mode: every worker writes its
samples to mmap files in PROMETHEUS_MULTIPROC_DIR (set by `mlsys serve` to a fresh folder
before the workers start) and `/metrics` merges all files. Without that variable (tests, one
process) the default in-process registry is used. prometheus_client reads the variable when it
is first imported, which is why this module must not be imported before `serve` sets it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5,
    1.0, 2.5,
)  # fmt: skip

REQUEST_LATENCY = Histogram(
    "mlsys_http_request_duration_seconds",
    "Time from request start to response end, by route template and status",
    ("endpoint", "method", "status"),
    buckets=LATENCY_BUCKETS,
)
FEATURE_FETCH = Histogram(
    "mlsys_feature_fetch_seconds",
    "One online-store round trip (pointer + user + candidates) per request",
    buckets=(0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1),
)
CANDIDATES = Counter(
    "mlsys_candidates_total",
    "Candidate restaurants by outcome: requested (the caller's list), retrieved (read from the "
    "geo index, no list), unknown (not in store), too_far, returned",
    ("outcome",),
)
COLD_START = Counter(
    "mlsys_cold_start_total",
    "Answers for an entity the store does not know (user), ranked with its cold-start profile",
    ("entity",),
)
FEATURE_STORE_ERRORS = Counter(
    "mlsys_feature_store_errors_total", "Requests answered 503 because Redis failed", ("kind",)
)
FEATURE_UPDATES = Counter(
    "mlsys_feature_updates_total", "Admin single-entity feature updates", ("entity",)
)
CONNECTIONS_DROPPED = Counter(
    "mlsys_connections_dropped_total",
    "Connections closed by the server: header_timeout, connection_cap",
    ("reason",),
)
MODEL_INFO = Gauge(
    "mlsys_model_info",
    "1 for the version each worker serves (label pid: the worker), 0 once swapped out",
    ("model", "version"),
    multiprocess_mode="liveall",
)
MODEL_SWAPS = Counter(
    "mlsys_model_swaps_total",
    "Alias changes followed by a worker: ok (swapped in) or failed (old version kept)",
    ("model", "outcome"),
)
ROLLOUT_REQUESTS = Counter(
    "mlsys_rollout_requests_total",
    "Answered requests by rollout mode (none when no rollout) and the arm that answered",
    ("model", "mode", "arm"),
)
ROLLOUT_LATENCY = Histogram(
    "mlsys_rollout_latency_seconds",
    "Handler time of answered requests per arm (shadow work is not in it: see mlsys_shadow_*)",
    ("model", "arm"),
    buckets=LATENCY_BUCKETS,
)
SHADOW_LATENCY = Histogram(
    "mlsys_shadow_seconds",
    "Challenger scoring and logging in shadow mode, after the answer went out (mirrored "
    "traffic, counted here and never in the request metrics)",
    ("model",),
    buckets=LATENCY_BUCKETS,
)
SHADOW_REQUESTS = Counter(
    "mlsys_shadow_requests_total", "Shadow scorings by outcome: logged, failed", ("outcome",)
)
IMPRESSIONS = Counter(
    "mlsys_impressions_total",
    "Impressions handed to the worker's log spool (logged), or dropped because its backlog "
    "was full (failed; the answer is still sent)",
    ("outcome",),
)
LOG_RECORDS = Counter(
    "mlsys_log_records",
    "Log records by stream (recommender, tagger) and what the worker's writer did with them: "
    "spooled (written to its spool file), shipped (in the log's Redis), recovered (shipped "
    "from a dead worker's spool), dropped (the backlog was full), failed (batches retried); "
    "click_* for pending clicks judged after an outage",
    ("stream", "outcome"),
)
LOG_BACKLOG = Gauge(
    "mlsys_log_backlog_bytes",
    "Bytes spooled by the live workers and not yet shipped to the log's Redis",
    ("stream",),
    multiprocess_mode="livesum",
)
TAG_RECORDS = Counter(
    "mlsys_tag_records_total",
    "Answered /tag requests whose record was spooled for the log (logged), or dropped because "
    "the spool's backlog was full (failed; the answer is still sent)",
    ("outcome",),
)
FEEDBACK = Counter(
    "mlsys_feedback_total",
    "POST /feedback by outcome: recorded, duplicate, unknown_request, not_in_response, "
    "invalid, unavailable",
    ("outcome",),
)


def forget_dead_workers(folder: str) -> list[int]:
    """Drop the live gauges (`mlsys_model_info`, ...) of workers that are gone: uvicorn
    restarts a killed worker under a new pid, and without this the dead pid's series stayed
    in /metrics forever. Counters and histograms keep what the dead worker counted."""
    import re

    import psutil
    from prometheus_client import multiprocess

    pids = {int(m.group(1)) for name in os.listdir(folder)
            if (m := re.search(r"_(\d+)\.db$", name))}  # fmt: skip

    def gone(pid: int) -> bool:  # a killed worker not yet reaped by its parent is a zombie
        try:
            return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True

    dead = [pid for pid in pids if gone(pid)]
    for pid in dead:
        multiprocess.mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]
    return dead


def render() -> tuple[bytes, str]:
    """The exposition text: merged over all workers in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        forget_dead_workers(os.environ[MULTIPROC_ENV])
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log shippers parse without configuration."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """Route the `mlsys` loggers to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger("mlsys")
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
