"""The load generator against a stub server: open-model timing, errors by status, outputs."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlsys.compose.loadtest import main, run_once
from mlsys.platform.redis_server import free_port

SLOW_S = 0.2


async def recommend(request: Request) -> Response:
    """Odd users fail with 503; user 1 also stalls, so the open model must count the wait."""
    user = int(request.path_params["user_id"])
    body = await request.json()
    assert isinstance(body["candidate_restaurant_ids"], list)
    if user == 1:
        await asyncio.sleep(SLOW_S)
    if user % 2:
        return JSONResponse({"error": "down"}, status_code=503)
    return JSONResponse({"restaurants": []})


async def ok(request: Request) -> Response:
    return JSONResponse({"ready": True})


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    app = Starlette(
        routes=[Route("/recommend/{user_id}", recommend, methods=["POST"]), Route("/readyz", ok)]
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)


@pytest.fixture(scope="module")
def requests_file(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny's requests with user ids rewritten: 0, 1, 2, 3, ... (1 is slow, odd ones fail)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(tiny_data / "requests.parquet").slice(0, 20)
    table = table.set_column(0, "user_id", pa.array(range(20), pa.int64()))
    out = tmp_path_factory.mktemp("req") / "requests.parquet"
    pq.write_table(table, out)
    return out


def test_open_model_rate_errors_and_latency_from_due_time(
    stub_url: str, requests_file: Path
) -> None:
    result, summary = run_once(stub_url, requests_file, rate=40, duration=1.0, warmup=2)
    assert summary["requests"] == 40
    assert 30 <= summary["achieved_rate"] <= 42
    assert summary["errors"] == 20 and summary["errors_by_status"] == {"503": 20}
    assert summary["meets_spec"] is False
    # the two requests for user 1 waited SLOW_S: their latency includes it
    assert summary["max_ms"] >= SLOW_S * 1e3
    assert result.connections >= 2  # a stalled request does not hold back the next one


def test_cli_writes_json_and_png_and_sweep(
    stub_url: str, requests_file: Path, tmp_path: Path
) -> None:
    args = argparse.Namespace(
        url=stub_url, requests=str(requests_file), rate=20.0, duration=0.5, timeout=2.0,
        out=str(tmp_path), name=None, sweep=False, rates=None, no_candidates=False,
    )  # fmt: skip
    assert main(args) == 1  # errors -> non-zero exit
    report = json.loads((tmp_path / "loadtest-20rps.json").read_text())
    assert {
        "p50_ms",
        "p90_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "achieved_rate",
        "errors_by_status",
    } <= set(report)
    assert (tmp_path / "loadtest-20rps.png").stat().st_size > 10_000
    sweep = argparse.Namespace(**{**vars(args), "sweep": True, "rates": "10,20"})
    assert main(sweep) == 0
    result = json.loads((tmp_path / "sweep.json").read_text())
    assert result["best_rate"] is None and len(result["steps"]) == 1  # the first step fails
    assert (tmp_path / "sweep.png").exists()
