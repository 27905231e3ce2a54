"""Serving by alias (issue 15, item 3): a real `mlsys serve` follows models:/ranknet@champion.

Requests flow the whole time; the alias moves to another version (every worker swaps it in
between requests, no request fails), then to a version whose files were damaged after
registration, pointed at behind the probe gate's back (the workers refuse it and keep
serving).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlsys.compose.stack import settle, start_api, stop_process, wait_ready
from mlsys.platform.redis_server import free_port

pytestmark = pytest.mark.integration
REFRESH_S = 0.5


def _ranknet(out: Path, seed: int) -> Path:
    import torch

    from mlsys.recommender.artifact import save_ranknet
    from mlsys.recommender.model import RankNet

    torch.manual_seed(seed)
    save_ranknet(RankNet(), out, data_checksum="test", config={"seed": seed}, metrics={})
    return out


def test_a_server_follows_the_alias_between_requests_and_refuses_a_broken_version(
    loaded_redis: Any, tiny_data: Path, tmp_path: Path
) -> None:
    """From a fresh store, the user's path: train -> register as champion -> serve by alias;
    then the alias moves under traffic."""
    from mlsys.cli import main
    from mlsys.compose.models import model_card, probe
    from mlsys.platform.registry import Registry

    name = "ranknet-hot-swap"
    trained = tmp_path / "trained"
    assert main(["train", "ranknet", str(tiny_data), "--out", str(trained), "--epochs", "1",
                 "--no-progress"]) == 0  # fmt: skip
    assert main(["models", "register", str(trained), "--name", name, "--alias", "champion"]) == 0
    registry = Registry()
    first = registry.alias_target(name, "champion")
    assert first is not None
    second, broken = (
        registry.register(folder, name, model_card(folder))
        for folder in (_ranknet(tmp_path / "m1", seed=1), _ranknet(tmp_path / "m2", seed=2))
    )

    port = free_port()
    log = tmp_path / "api.log"
    proc = start_api(
        f"models:/{name}@champion", loaded_redis.url, port=port, workers=2, log_path=log,
        extra_args=["--model-refresh", str(REFRESH_S)],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    seen: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        body = {"candidate_restaurant_ids": list(range(50)), "latitude": 13.87,
                "longitude": 100.58, "max_dist": 1e7}  # fmt: skip
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                r = http.post("/recommend/3", json=body)
                seen.append((time.monotonic(), r.status_code, r.headers.get("x-model-version", "")))
                time.sleep(0.01)

    try:
        wait_ready(url, proc, timeout_s=120)
        # /readyz answers once one worker is up; the other, still loading under a busy CI,
        # would load the second version directly and count no swap (seen once)
        settle(proc.pid)
        sender = threading.Thread(target=traffic)
        sender.start()
        time.sleep(1.0)
        switched = time.monotonic()
        registry.set_alias(name, "champion", second, "test swap", probe)
        time.sleep(4 * REFRESH_S + 2.0)

        # damage the third version's stored weights, then point the alias at it directly
        stored = Path(registry.version(name, broken).source.removeprefix("file://"))
        (stored / "model.pt").write_bytes(b"not a model")
        registry.client.set_registered_model_alias(name, "champion", broken)
        time.sleep(4 * REFRESH_S + 2.0)
        stop.set()
        sender.join()
        metrics = httpx.get(f"{url}/metrics").text
        ready = httpx.get(f"{url}/readyz").json()
    finally:
        stop.set()
        stop_process(proc)

    assert seen and all(status == 200 for _, status, _ in seen), "a request failed"
    labels = [label for _, _, label in seen]
    assert labels[0] == f"{name}/{first}"
    late = [label for t, _, label in seen if t > switched + 2 * REFRESH_S + 1.5]
    assert late and set(late) == {f"{name}/{second}"}  # never the broken one
    assert ready["models"] == {"recommender": f"{name}/{second}"}

    def total(outcome: str) -> float:
        return sum(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("mlsys_model_swaps_total") and f'outcome="{outcome}"' in line
        )

    assert total("ok") == 2  # one swap per worker
    assert total("failed") == 2  # each worker refused the broken version once, not every round
    assert "model swap failed" in log.read_text()
