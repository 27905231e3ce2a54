"""The online store on one Redis node against a 3-master Redis Cluster, side by side in one run:
memory per key, load time, latency at 30 rps, the highest rate with p95 < 100 ms, and a master
killed under 50 rps with replicas (503s, their window, wrong answers).

    flock /tmp/mlsys-heavy.lock .venv/bin/python perf_test/cluster.py \
        --data /work/data/full --model /work/runs/exp/champion --out docs/scale-out

Every configuration runs the same API (`mlsys serve --workers 2`) with the impression log on
a Redis node of its own (append-only), so only the feature store differs. On this 2-core
machine the three masters, the API's workers and the load generator share the cores: the
cluster's figures here are a floor, not what three machines would give.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mlsys.compose.loadtest import load_requests, parse_url, run_once
from mlsys.compose.stack import settle, start_api, stop_process, wait_ready
from mlsys.platform.redis_client import close, connect, used_memory
from mlsys.platform.redis_server import LocalCluster, RedisServer, free_port
from mlsys.recommender.serving.materialize import materialize
from mlsys.recommender.serving.online_store import restaurant_key, user_key

SWEEP = (100, 200, 300, 400, 500, 600, 700)


def memory(url: str, data: str) -> dict[str, Any]:
    """Bytes per key: used_memory before and after a load, and Redis' MEMORY USAGE of a sample
    of each kind of key (the part of the delta each kind takes)."""
    client = connect(url, timeout_s=30)
    empty = used_memory(client)
    started = time.perf_counter()
    meta = materialize(data, client, progress=False)
    load_s = time.perf_counter() - started
    used = used_memory(client)
    ns = meta["namespace"]
    users, rests = meta["counts"]["users"], meta["counts"]["restaurants"]
    rng = np.random.default_rng(0)
    per_user = np.median([client.memory_usage(user_key(ns, int(u)), samples=0)
                          for u in rng.integers(users, size=500)])  # fmt: skip
    per_rest = np.median([client.memory_usage(restaurant_key(ns, int(r)), samples=0)
                          for r in rng.integers(rests, size=500)])  # fmt: skip
    delta = used - empty
    # The delta also holds the keyspace's own tables; share it out in proportion.
    user_share = users * per_user / (users * per_user + rests * per_rest)
    close(client)
    return {
        "users": users,
        "restaurants": rests,
        "load_s": round(load_s, 1),
        "used_memory_delta_mib": round(delta / 2**20, 1),
        "memory_usage_user_bytes": int(per_user),
        "memory_usage_restaurant_bytes": int(per_rest),
        "bytes_per_user_in_delta": round(delta * user_share / users, 1),
        "bytes_per_restaurant_in_delta": round(delta * (1 - user_share) / rests, 1),
    }


@contextmanager
def api(model: str, store_url: str, log_url: str, work: Path, name: str) -> Any:
    port = free_port()
    proc = start_api(model, store_url, port=port, workers=2, log_path=work / f"{name}.log",
                     access_log=False, extra_args=["--log-redis", log_url])  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        settle(proc.pid)
        yield url
    finally:
        stop_process(proc)


def latency(model: str, stores: dict[str, str], log_url: str, work: Path, requests: str,
            duration: float) -> dict[str, Any]:  # fmt: skip
    """30 rps A, B, A, B (the order alternates so drift of the VM hits both), then a sweep of
    each until p95 >= 100 ms or an error."""
    out: dict[str, Any] = {name: {"p95_30rps_ms": [], "sweep": []} for name in stores}
    payloads: list[bytes] | None = None
    for _ in range(2):
        for name, url in stores.items():
            with api(model, url, log_url, work, name) as base:
                payloads = payloads or load_requests(requests, parse_url(base))
                _, summary = run_once(base, requests, 30, duration, payloads=payloads)
                out[name]["p95_30rps_ms"].append(summary["p95_ms"])
                out[name].setdefault("errors_30rps", 0)
                out[name]["errors_30rps"] += summary["errors"]
                print(f"{name:8s} 30 rps: p95 {summary['p95_ms']:.2f} ms, "
                      f"{summary['errors']} errors", flush=True)  # fmt: skip
    for name, url in stores.items():
        with api(model, url, log_url, work, name) as base:
            best = None
            for rate in SWEEP:
                _, summary = run_once(base, requests, rate, duration / 2, payloads=payloads)
                out[name]["sweep"].append({k: summary[k] for k in (
                    "target_rate", "achieved_rate", "p50_ms", "p95_ms", "errors")})  # fmt: skip
                print(
                    f"{name:8s} {rate} rps: achieved {summary['achieved_rate']:.0f}, "
                    f"p95 {summary['p95_ms']:.1f} ms, {summary['errors']} errors",
                    flush=True,
                )
                if not summary["meets_spec"]:
                    break
                best = rate
                time.sleep(1)
            out[name]["best_rate"] = best
    return out


def failover(model: str, data: str, log_url: str, work: Path, requests: str) -> dict[str, Any]:
    """3 masters with a replica each; 50 rps for 40 s; SIGKILL one master 10 s in."""
    with LocalCluster(work / "failover", masters=3, replicas=1) as cluster:
        client = connect(cluster.url, timeout_s=30)
        materialize(data, client, progress=False)
        victim_port = int(client.get_primaries()[1].port)
        close(client)
        time.sleep(2)  # replication is asynchronous: let the replicas catch up
        with api(model, cluster.url, log_url, work, "failover") as base:
            payloads = load_requests(requests, parse_url(base))[:2000]
            reference, _ = run_once(base, requests, 200, 10, payloads=payloads)
            expected = dict(zip(reference.payload, reference.body_crc, strict=True))
            victim = next(n for n in cluster.nodes if n.port == victim_port)
            assert victim.proc is not None
            kill: dict[str, float] = {}

            def kill_later() -> None:
                time.sleep(10 + 1.0)  # run_once warms up first (~20 requests)
                assert victim.proc is not None
                os.kill(victim.proc.pid, signal.SIGKILL)
                kill["at"] = time.monotonic()

            killer = threading.Thread(target=kill_later)
            killer.start()
            result, summary = run_once(base, requests, 50, 40, payloads=payloads)
            killer.join()
            victim.proc = None
    at = kill["at"] - result.started_at
    t = np.asarray(result.scheduled)
    failed = [i for i, s in enumerate(result.status) if s != "200"]
    wrong = sum(1 for i, s in enumerate(result.status)
                if s == "200" and result.body_crc[i] != expected[result.payload[i]])  # fmt: skip
    lat = np.asarray(result.latency) * 1e3
    recovered = t > (t[failed[-1]] + 1 if failed else at)
    return {
        "node_timeout_ms": cluster.node_timeout_ms,
        "killed_at_s": round(at, 2),
        "requests": summary["requests"],
        "statuses": dict(Counter(result.status)),
        "first_failure_after_kill_s": round(float(t[failed[0]] - at), 2) if failed else None,
        "last_failure_after_kill_s": round(float(t[failed[-1]] - at), 2) if failed else None,
        "wrong_answers": wrong,
        "p95_before_kill_ms": round(float(np.percentile(lat[t < at], 95)), 2),
        "p95_after_recovery_ms": round(float(np.percentile(lat[recovered], 95)), 2),
        "failed_latency_max_ms": round(float(lat[failed].max()), 1) if failed else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default="docs/scale-out")
    ap.add_argument("--duration", type=float, default=30.0)
    args = ap.parse_args()
    requests = str(Path(args.data) / "requests.parquet")
    report: dict[str, Any] = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "machine": f"{os.cpu_count()} cores", "args": vars(args)}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (
            RedisServer(workdir=work / "log", appendonly=True) as log,
            RedisServer(workdir=work / "node") as node,
            LocalCluster(work / "cluster", masters=3) as cluster,
        ):
            report["memory"] = {"node": memory(node.url, args.data),
                                "cluster": memory(cluster.url, args.data)}  # fmt: skip
            print(json.dumps(report["memory"], indent=2), flush=True)
            stores = {"node": node.url, "cluster": cluster.url}
            report["latency"] = latency(args.model, stores, log.url, work, requests, args.duration)
        with RedisServer(workdir=work / "log2", appendonly=True) as log:
            report["failover"] = failover(args.model, args.data, log.url, work, requests)
        print(json.dumps(report["failover"], indent=2), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'cluster.json'}")


if __name__ == "__main__":
    main()
