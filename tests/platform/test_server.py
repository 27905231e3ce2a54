"""The app factory without any domain: settings via env, component hook, readiness, limits."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from mlsys.platform.server import Component, create_app
from mlsys.platform.settings import Settings


def test_settings_round_trip_through_env() -> None:
    s = Settings(model_dir="/m", redis_url="redis://h:1/2", redis_timeout_s=0.2,
                 max_body_bytes=123, admin_token="t", log_requests=False)  # fmt: skip
    env = s.to_env()
    assert env["MLSYS_LOG_REQUESTS"] == "0" and "MLSYS_TAGGER_MODEL_DIR" not in env
    assert Settings.from_env(env) == s
    assert Settings.from_env({}) == Settings()


def _component(ready: bool, limit: int | None = None) -> Component:
    async def echo(request: Request) -> Response:
        return JSONResponse({"bytes": len(await request.body())})

    return Component(
        name="demo",
        routes=[Route("/echo/{x}", echo, methods=["POST"])],
        checks={"thing": lambda: None if ready else "thing is down"},
        max_body_bytes=limit,
    )


def test_components_routes_readiness_and_body_limits() -> None:
    settings = Settings(max_body_bytes=100, log_requests=False)
    with TestClient(create_app(settings, [_component(ready=False)])) as c:
        assert c.post("/echo/1", content=b"x" * 100).json() == {"bytes": 100}
        big = c.post("/echo/1", content=b"x" * 101)
        assert big.status_code == 413 and big.json()["field"] == "body"
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"demo.thing": "thing is down"}
        assert c.get("/healthz").status_code == 200
        assert c.get("/nowhere").status_code == 404
    with TestClient(create_app(settings, [_component(ready=True, limit=1000)])) as c:
        assert c.post("/echo/1", content=b"x" * 1000).status_code == 200  # its own limit
        ready = c.get("/readyz").json()
        assert (ready["ready"], ready["checks"], ready["models"]) == (
            True,
            {"demo.thing": "ok"},
            {},
        )


def test_chunked_body_over_the_limit_is_cut_off() -> None:
    settings = Settings(max_body_bytes=100, log_requests=False)

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"y" * 50

    with TestClient(create_app(settings, [_component(ready=True)])) as c:
        r = c.post("/echo/1", content=chunks())
        assert r.status_code == 413


def test_no_components_is_not_ready() -> None:
    with TestClient(create_app(Settings(log_requests=False), [])) as c:
        assert c.get("/readyz").status_code == 503
        assert "mlsys_http_request_duration_seconds" in c.get("/metrics").text
