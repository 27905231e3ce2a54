"""How fast does the API answer while Redis is hung or gone, and does it recover by itself?

    .venv/bin/python perf_test/outage.py --data /work/data/full --model MODEL_DIR

Starts the stack (redis-server + features load + `mlsys serve --workers 2`), then over HTTP:
20 requests with Redis healthy, 20 with Redis frozen (SIGSTOP: connections accepted, no
answers), 20 after SIGCONT, 20 with Redis stopped (connections refused), then restarts Redis
on the same port, reloads the features and sends 20 more; prints status counts and latency.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from collections import Counter

import httpx
import numpy as np


def burst(http: httpx.Client, label: str, n: int = 20) -> None:
    body = {"candidate_restaurant_ids": list(range(0, 100_000, 100)), "latitude": 13.87,
            "longitude": 100.58}  # fmt: skip
    lat, codes = [], Counter[int]()
    for i in range(n):
        t = time.perf_counter()
        r = http.post(f"/recommend/{i}", json=body)
        lat.append((time.perf_counter() - t) * 1e3)
        codes[r.status_code] += 1
    print(f"{label:28s} statuses {dict(codes)}  median {np.median(lat):6.1f} ms  "
          f"max {max(lat):6.1f} ms", flush=True)  # fmt: skip


def main() -> None:
    from mlsys.compose.stack import running_stack
    from mlsys.platform.redis_client import connect
    from mlsys.recommender.serving.materialize import materialize

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory() as work,
        running_stack(args.data, args.model, work, workers=2, progress=False) as stack,
        httpx.Client(base_url=stack.api_url, timeout=10) as http,
    ):
        redis = stack.redis
        assert redis.pid is not None
        burst(http, "redis healthy")
        os.kill(redis.pid, signal.SIGSTOP)
        burst(http, "redis frozen (SIGSTOP)")
        os.kill(redis.pid, signal.SIGCONT)
        burst(http, "redis resumed (SIGCONT)")
        redis.stop()
        burst(http, "redis stopped")
        print(f"/readyz while stopped: {http.get('/readyz').status_code}")
        redis.start()
        burst(http, "redis restarted, empty")
        materialize(args.data, connect(redis.url, timeout_s=30), progress=False)
        burst(http, "features reloaded")
        print(f"/readyz after reload: {http.get('/readyz').status_code}")


if __name__ == "__main__":
    main()
