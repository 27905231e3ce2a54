"""The online store on a real local Redis Cluster when nodes fail: a dead master costs fast
503s and no wrong answers, and the service follows the cluster back (a replica promoted by
failover, or the node restarted and the features reloaded). The serving contract itself runs
against a cluster in test_api.py and test_features.py."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from mlsys.compose.app import build_app
from mlsys.errors import MlsysError
from mlsys.platform.redis_client import close, connect
from mlsys.platform.redis_server import LocalCluster, RedisServer
from mlsys.platform.settings import Settings
from mlsys.recommender.serving.materialize import materialize

pytestmark = pytest.mark.integration

LAT, LON = 13.87, 100.58
CANDIDATES = list(range(0, 1000, 3))  # 334 candidates: every bucket, so every master


def body(user: int) -> dict[str, Any]:
    del user
    return {"candidate_restaurant_ids": CANDIDATES, "latitude": LAT, "longitude": LON,
            "max_dist": 1e7, "size": 10}  # fmt: skip


@pytest.fixture()
def log_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(workdir=tmp_path / "log") as server:
        yield server


def serve(cluster: LocalCluster, model_dir: Path, log_redis: RedisServer) -> TestClient:
    settings = Settings(
        model_dir=str(model_dir), redis_url=cluster.url, log_redis_url=log_redis.url
    )
    return TestClient(build_app(settings))


def load(cluster: LocalCluster, data: Path) -> None:
    client = connect(cluster.url, timeout_s=5)
    materialize(data, client, progress=False)
    close(client)


def master_ports(cluster: LocalCluster) -> list[int]:
    client = connect(cluster.url, timeout_s=5)
    ports = [int(n.port) for n in client.get_primaries()]
    close(client)
    return ports


def test_the_log_refuses_a_cluster(
    loaded_cluster: LocalCluster, model_dir: Path, json_bodies: Any
) -> None:
    """The impression log's Lua scripts touch several keys: it needs a node of its own."""
    settings = Settings(model_dir=str(model_dir), redis_url=loaded_cluster.url)
    with pytest.raises(MlsysError, match="log_redis_url"):
        build_app(settings)


def test_dead_master_is_fast_503_then_recovers_after_restart_and_reload(
    tmp_path: Path, tiny_data: Path, model_dir: Path, log_redis: RedisServer, json_bodies: Any
) -> None:
    with LocalCluster(tmp_path / "cluster", masters=3) as cluster:
        load(cluster, tiny_data)
        with json_bodies(serve(cluster, model_dir, log_redis)) as c:
            before = c.post("/recommend/5", json=body(5))
            assert before.status_code == 200
            victim = next(n for n in cluster.nodes if n.port == master_ports(cluster)[1])
            victim.stop()
            slow = 0.0
            for _ in range(5):
                t = time.perf_counter()
                r = c.post("/recommend/5", json=body(5))
                slow = max(slow, time.perf_counter() - t)
                assert r.status_code == 503, r.text
                assert r.json()["error"] == "feature_store_unavailable"
            assert slow < 0.5, slow  # 50 ms timeouts; the bound leaves room for a busy CI box
            assert c.get("/readyz").status_code == 503

            victim.start()  # same port and nodes.conf: it rejoins, empty (no persistence)
            cluster.wait_ok()
            load(cluster, tiny_data)
            deadline = time.monotonic() + 10
            while c.post("/recommend/5", json=body(5)).status_code != 200:
                assert time.monotonic() < deadline, "the API did not follow the cluster back"
                time.sleep(0.05)
            after = c.post("/recommend/5", json=body(5)).json()
            assert after["restaurants"] == before.json()["restaurants"]


def test_failover_to_a_replica_costs_503s_only_and_no_wrong_answers(
    tmp_path: Path, tiny_data: Path, model_dir: Path, log_redis: RedisServer, json_bodies: Any
) -> None:
    with LocalCluster(tmp_path / "cluster", masters=3, replicas=1) as cluster:
        load(cluster, tiny_data)
        users = list(range(0, 40))
        with json_bodies(serve(cluster, model_dir, log_redis)) as c:
            expected = {
                u: c.post(f"/recommend/{u}", json=body(u)).json()["restaurants"] for u in users
            }
            # Replication is asynchronous: wait until every replica holds every key.
            time.sleep(0.5)
            port = master_ports(cluster)[0]
            victim = next(n for n in cluster.nodes if n.port == port)
            assert victim.proc is not None
            os.kill(victim.proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            statuses: list[tuple[float, int]] = []
            recovered_at = None
            while time.monotonic() - killed < 20:
                u = users[len(statuses) % len(users)]
                r = c.post(f"/recommend/{u}", json=body(u))
                statuses.append((time.monotonic() - killed, r.status_code))
                assert r.status_code in (200, 503), r.text
                if r.status_code == 200:
                    assert r.json()["restaurants"] == expected[u], "a wrong answer during failover"
                    if recovered_at is None and any(s == 503 for _, s in statuses):
                        recovered_at = statuses[-1][0]
                    if recovered_at is not None and statuses[-1][0] - recovered_at > 1:
                        break
                time.sleep(0.01)
            assert any(s == 503 for _, s in statuses), "the kill went unnoticed"
            assert recovered_at is not None, "the API never followed the promoted replica"
            last_503 = max(t for t, s in statuses if s == 503)
            assert all(s == 200 for t, s in statuses if t > last_503)
            victim.proc = None
            failed = sum(s == 503 for _, s in statuses)
            print(f"first 503 to last: {last_503:.2f} s after the kill, {failed} 503s")


def test_reads_follow_a_slot_that_moves(tmp_path: Path, tiny_data: Path) -> None:
    """Resharding under a running store: with half of a bucket's keys migrated the nodes answer
    ASK, once the slot has moved they answer MOVED; both reads must return the right rows."""
    import numpy as np

    from mlsys.platform.redis_client import key_slot
    from mlsys.recommender.data.dataset import open_dataset
    from mlsys.recommender.serving.online_store import RESTAURANT_BUCKETS, OnlineStore

    with LocalCluster(tmp_path / "cluster") as cluster:
        load(cluster, tiny_data)
        client = connect(cluster.url, timeout_s=5)
        store = OnlineStore(client)
        ids = list(range(3, 1000, RESTAURANT_BUCKETS))  # bucket 3 only
        expected = open_dataset(tiny_data).restaurant_features()[ids]
        np.testing.assert_array_equal(store.fetch(1, ids).features, expected)

        slot = key_slot("{r3}")
        source = client.nodes_manager.get_node_from_slot(slot)
        target = next(n for n in client.get_primaries() if n.name != source.name)
        src, dst = source.redis_connection, target.redis_connection
        src_id, dst_id = src.execute_command("CLUSTER MYID"), dst.execute_command("CLUSTER MYID")
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 10_000)
        half = keys[: len(keys) // 2]
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *half)
        rows = store.fetch(1, ids)  # some keys now answer ASK
        assert rows.unknown == 0
        np.testing.assert_array_equal(rows.features, expected)

        rest = keys[len(keys) // 2 :]
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *rest)
        for node in client.get_primaries():
            node.redis_connection.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        for _ in range(2):  # MOVED, then the refreshed topology's own fast path
            rows = store.fetch(1, ids)
            assert rows.unknown == 0
            np.testing.assert_array_equal(rows.features, expected)
        assert client.nodes_manager.get_node_from_slot(slot).name == target.name
        close(client)
