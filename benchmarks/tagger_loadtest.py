"""Open-loop load test of POST /tag on the platform server.

    flock /tmp/mlsys-heavy.lock .venv/bin/python benchmarks/tagger_loadtest.py \
        /work/data/garments artifacts/tagger --rate 10 --duration 60 \
        --out artifacts/tagger/loadtest.json

Starts the real server (`mlsys.platform.server.serve`, uvicorn, 2 workers, the tagger
component only), then sends test-set JPEGs as raw bodies at a fixed rate regardless of how
fast answers come back (open loop: a slow server cannot slow the client down and hide its own
queueing), and reports latency percentiles measured at the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from mlsys.tagger.schema import open_garments


def start_server(model_dir: str, port: int, workers: int) -> subprocess.Popen[bytes]:
    code = (
        "from mlsys.platform.server import serve; from mlsys.platform.settings import Settings; "
        f"serve(Settings(tagger_model_dir={str(Path(model_dir).resolve())!r}, "
        "max_body_bytes=10*1024*1024, log_requests=False), "
        f"host='127.0.0.1', port={port}, workers={workers})"
    )
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ})


async def wait_ready(url: str, timeout: float = 60.0) -> None:
    async with httpx.AsyncClient() as client:
        end = time.time() + timeout
        while time.time() < end:
            try:
                if (await client.get(url + "/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.25)
    raise RuntimeError(f"server at {url} not ready after {timeout} s")


async def run(url: str, bodies: list[bytes], rate: float, duration: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(timeout=5.0, limits=httpx.Limits(max_connections=64)) as client:

        async def one(body: bytes) -> None:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                r = await client.post(
                    url + "/tag", content=body, headers={"content-type": "image/jpeg"}
                )
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

        # Warm up both workers before measuring.
        await asyncio.gather(*(one(bodies[i % len(bodies)]) for i in range(8)))
        latencies.clear()
        tasks = []
        start = time.perf_counter()
        n = int(rate * duration)
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(bodies[i % len(bodies)])))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {
        "rate_target": rate,
        "rate_achieved": n / elapsed,
        "requests": n,
        "errors": errors,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "mean_body_kb": float(np.mean([len(b) for b in bodies]) / 1024),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("data_dir")
    ap.add_argument("model_dir")
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    data = open_garments(args.data_dir)
    bodies = [data.image_bytes(u) for u in data.test_uuids[:200]]
    server = start_server(args.model_dir, args.port, args.workers)
    url = f"http://127.0.0.1:{args.port}"
    try:
        asyncio.run(wait_ready(url))
        result = asyncio.run(run(url, bodies, args.rate, args.duration))
    finally:
        server.terminate()
        server.wait(timeout=10)
    result["workers"] = args.workers
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
