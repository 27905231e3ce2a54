"""The HTTP server: one Starlette app, domain routes plugged in, operations routes built in.

This is infrastructure: it knows `Component`s, not domains. Each domain's `api.component(
settings)` returns one (its routes, its readiness checks, what to close at shutdown, its body
limit), and `mlsys.compose.app` decides which domains a server runs (the recommender when
`settings.model_dir` is set, the garment tagger when `settings.tagger_model_dir` is).
Everything else is here, once for all domains:

- GET /healthz: the process is alive (no dependencies checked, so a slow Redis never gets a
  healthy worker killed);
- GET /readyz: every component's checks pass (Redis reachable, model loaded, features loaded);
- GET /metrics: Prometheus text, merged over workers (see `metrics.py`);
- GET /openapi.json: the OpenAPI 3.1 document of every route, from the models that validate
  them (`openapi.py`);
- 404 and 405 in the same JSON error shape as every other error;
- a pure-ASGI middleware (`request_context.py`) that gives each request an id (X-Request-ID,
  echoed back), rejects bodies over the limit with 413 before they are buffered
  (`Settings.max_body_bytes`, 1 MiB, or a component's own `max_body_bytes` for its routes,
  e.g. 10 MB for photos), answers 408 when the body is not complete within
  `Settings.body_timeout_s`, times the request into the latency histogram by route template
  and status, and writes one JSON log line (status 499 when the client left before the
  answer).

Slow clients before the body (headers that never end, too many connections) are the
protocol's business: `protocol.GuardedHttpToolsProtocol`, which `serve()` hands to uvicorn.

Workers: `serve()` runs uvicorn with N worker processes; each builds its own app (own Redis
connection pool, own model copy) through the factory it is given, reading `Settings` from the
environment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mlsys.platform.openapi import Operation, document
from mlsys.platform.request_context import RequestContext
from mlsys.platform.settings import Settings

log = logging.getLogger("mlsys.server")

Check = Callable[[], str | None]  # None when ready, else why not


@dataclass
class Component:
    """What a domain contributes to the server."""

    name: str
    routes: list[BaseRoute]
    checks: dict[str, Check] = field(default_factory=dict)
    close: Callable[[], None] | None = None
    # Body limit for this component's routes (e.g. 10 MB for image uploads); None: the
    # server-wide `Settings.max_body_bytes`.
    max_body_bytes: int | None = None
    # The model version this worker serves now ("ranknet/3"), shown by /readyz.
    serving: Callable[[], str] | None = None
    # What /openapi.json says of the routes, from the models that validate them.
    operations: list[Operation] = field(default_factory=list)


class Alive(BaseModel):
    status: str
    pid: int


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(description="component.check -> ok, or what is wrong")
    models: dict[str, str] = Field(description="component -> the version this worker serves")
    pid: int


OPERATIONS = [
    Operation("/healthz", "GET", "The process is alive (no dependency checked)", response=Alive),
    Operation(
        "/readyz",
        "GET",
        "Every component's checks pass",
        response=Readiness,
        other={503: Readiness},
    ),
    Operation(
        "/metrics", "GET", "Prometheus text, merged over workers", response_media="text/plain"
    ),
    Operation("/openapi.json", "GET", "This document", response_media="application/json"),
]


def create_app(settings: Settings, parts: list[Component]) -> Starlette:
    """The app serving `parts` (which domains: `mlsys.compose.app` decides) plus operations."""
    from mlsys.platform.metrics import render, setup_logging

    setup_logging()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive", "pid": os.getpid()})

    async def readyz(request: Request) -> Response:
        checks: dict[str, str] = {}
        for part in parts:
            for name, check in part.checks.items():
                try:
                    problem = check()
                except Exception as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                checks[f"{part.name}.{name}"] = "ok" if problem is None else problem
        ready = bool(parts) and all(v == "ok" for v in checks.values())
        models = {p.name: p.serving() for p in parts if p.serving is not None}
        body = {"ready": ready, "checks": checks, "models": models, "pid": os.getpid()}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        body, content_type = render()
        return Response(body, media_type=content_type)

    spec = document(
        "mlsys", _package_version(), [*OPERATIONS, *(op for p in parts for op in p.operations)]
    )

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    for part in parts:
        routes.extend(part.routes)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for part in parts:
            if part.close is not None:
                part.close()

    async def http_error(request: Request, exc: Exception) -> Response:
        """The router's own 404 and 405 in the same JSON shape as every other error."""
        assert isinstance(exc, HTTPException)
        error, field = {404: ("not_found", "path"), 405: ("method_not_allowed", "method")}.get(
            exc.status_code, ("http_error", "request")
        )
        body = {"error": error, "field": field, "message": f"{exc.detail}: {request.method} "
                f"{request.url.path}"}  # fmt: skip
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
    # A path with a trailing slash is a 404 like any unknown path: Starlette would answer 307
    # with a Location built from the client's own Host header.
    app.router.redirect_slashes = False
    body_limits = tuple(
        (getattr(route, "path", "").split("{", 1)[0], part.max_body_bytes)
        for part in parts
        if part.max_body_bytes is not None
        for route in part.routes
    )
    app.add_middleware(
        RequestContext,
        max_body_bytes=settings.max_body_bytes,
        log_requests=settings.log_requests,
        body_limits=body_limits,
        body_timeout_s=settings.body_timeout_s,
    )
    return app


def _package_version() -> str:
    from importlib import metadata

    return metadata.version("mlsys")


def serve(
    settings: Settings,
    factory: str,
    host: str,
    port: int,
    workers: int,
    limit_concurrency: int | None = None,
) -> None:
    """Run uvicorn with `workers` processes, each building its app with `factory` (an import
    string, "module:function", reading `Settings.from_env()`); blocks until interrupted.

    `limit_concurrency` (per worker) turns overload into immediate 503s instead of an
    unbounded queue; off by default, as the measured capacity is far above the spec's load.
    """
    os.environ.update(settings.to_env())
    _raise_open_files_limit()
    # One BLAS/torch thread per worker: requests are small, workers are the parallelism.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    created: str | None = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        created = tempfile.mkdtemp(prefix="mlsys-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = created
    else:
        folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
    try:
        _run_uvicorn(factory, host, port, workers, limit_concurrency)
    finally:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)


def _raise_open_files_limit() -> None:
    """Soft descriptor limit up to the hard one (inherited by the workers), so the
    `max_connections` cap binds before the process runs out of descriptors for Redis and
    model files."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _run_uvicorn(
    factory: str, host: str, port: int, workers: int, limit_concurrency: int | None
) -> None:
    import uvicorn

    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_level="warning",
        loop="uvloop",
        http="mlsys.platform.protocol:GuardedHttpToolsProtocol",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
        limit_concurrency=limit_concurrency,
    )
