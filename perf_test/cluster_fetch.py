"""Why the cluster read is written the way it is: one request's 1,000 restaurant rows read
four ways from a local 3-master cluster, and one MGET from one node, side by side in one run.

    flock /tmp/mlsys-heavy.lock .venv/bin/python perf_test/cluster_fetch.py

1. redis-py's cluster pipeline, one GET per key;
2. redis-py's cluster pipeline, one MGET per hash-tag bucket (16 buckets);
3. `OnlineStore.fetch` on the cluster: the same 16 MGETs, one packed batch per node
   (`platform.redis_client.on_nodes`), plus the pointer and the user;
4. `OnlineStore.fetch` on one node: MULTI; GET pointer; GET user; MGET; EXEC.

100,000 restaurants and 1,000 users are loaded; 200 requests of 1,000 random candidates;
medians in ms.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mlsys.platform.redis_client import close, connect
from mlsys.platform.redis_server import LocalCluster, RedisServer
from mlsys.recommender.serving.online_store import (
    POINTER_KEY,
    RESTAURANT_BUCKETS,
    RESTAURANT_DTYPE,
    USER_DTYPE,
    OnlineStore,
    restaurant_key,
    restaurant_prefix,
    user_key,
)

RESTAURANTS, USERS, REQUESTS = 100_000, 1_000, 200


def fill(client: Any) -> None:
    """Namespace f1 with random rows, written the way `materialize` writes them."""
    from mlsys.recommender.serving.materialize import _write

    rng = np.random.default_rng(0)
    users = np.zeros(USERS, USER_DTYPE)
    users["features"] = rng.normal(size=(USERS, 30))
    rests = np.zeros(RESTAURANTS, RESTAURANT_DTYPE)
    rests["features"] = rng.normal(size=(RESTAURANTS, 10))
    _write(client, partial(user_key, "f1"), users, 10_000, None)
    _write(client, partial(restaurant_key, "f1"), rests, 10_000, None)
    client.set(POINTER_KEY, "f1")


def median_ms(read: Callable[[list[int]], Any], requests: list[list[int]]) -> float:
    times = []
    for ids in requests:
        t = time.perf_counter()
        read(ids)
        times.append(time.perf_counter() - t)
    return round(float(np.median(times)) * 1e3, 2)


def main() -> None:
    rng = np.random.default_rng(1)
    requests = [rng.choice(RESTAURANTS, 1000, replace=False).tolist() for _ in range(REQUESTS)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(Path(tmp) / "cluster") as cluster,
        RedisServer() as node,
    ):
        rc, one = connect(cluster.url, timeout_s=5), connect(node.url, timeout_s=5)
        fill(rc)
        fill(one)

        def get_per_key(ids: list[int]) -> Any:
            pipe = rc.pipeline(transaction=False)
            for i in ids:
                pipe.get(restaurant_key("f1", i))
            return pipe.execute()

        def mget_per_bucket(ids: list[int]) -> Any:
            pipe = rc.pipeline(transaction=False)
            arr = np.asarray(ids)
            for b in range(RESTAURANT_BUCKETS):
                chosen = arr[arr % RESTAURANT_BUCKETS == b].tolist()
                prefix = restaurant_prefix("f1", b)
                pipe.execute_command("MGET", *(prefix + str(i) for i in chosen))
            return pipe.execute()

        cluster_store, node_store = OnlineStore(rc), OnlineStore(one)
        arms: dict[str, Callable[[list[int]], Any]] = {
            "cluster pipeline, a GET per key": get_per_key,
            "cluster pipeline, an MGET per bucket": mget_per_bucket,
            "OnlineStore.fetch, cluster (a batch per node)": lambda ids: cluster_store.fetch(
                7, ids
            ),
            "OnlineStore.fetch, one node (MULTI + MGET)": lambda ids: node_store.fetch(7, ids),
        }
        for name, read in arms.items():
            read(requests[0])  # connect
            print(f"{name:48s} {median_ms(read, requests):6.2f} ms", flush=True)
        close(rc)
        close(one)


if __name__ == "__main__":
    main()
