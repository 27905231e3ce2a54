"""Online experiments measured (issue 16): what A/B and interleaving find, how fast, and at what
cost to serving. One run, every figure side by side:

    flock /tmp/mlsys-heavy.lock .venv/bin/python perf_test/experiments.py \
        --data /work/data/full --champion MODEL_DIR --challenger MODEL_DIR

1. the log's Redis guarantee: a writer appends to a stream of an append-only redis-server
   (fsync every second, then on every write), the server is SIGKILLed mid-run and restarted
   from its file; acknowledged entries missing afterwards are what a crash lost. Also the
   append rate in each setting;
2. a fresh registry with the two versions (champion, challenger), the stack as the demo runs
   it (full tables, `mlsys serve --workers 2`, impression log on its own append-only Redis);
3. A/B 50/50: `mlsys rollout ab`, simulated users (`mlsys simulate users`) at `--rate` for
   `--ab-duration`; `mlsys experiment report`: the estimate with its always-valid interval
   and the requests it needed to decide;
4. interleaving: the same for `--interleave-duration`;
5. (how many requests each method needs, as a distribution: perf_test/experiment_power.py;
   a live run is one draw of it)
6. impressions against 200 answers, with one worker SIGKILLed mid-run (A/B mode);
7. overhead, side by side: the API without the impression log and rollout (as before this
   issue) and with logging plus shadow scoring of every request, alternated twice (A, B, A,
   B); each at 30 rps for 30 s, then a sweep up the rates to the highest with p95 < 100 ms
   and no errors.

Writes perf_test/results/experiments.json and copies the reports and plots to --docs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--champion", required=True, help="model dir: the task's settings")
    parser.add_argument("--challenger", required=True, help="model dir: the truly better one")
    parser.add_argument("--rate", type=float, default=40.0, help="simulated requests/s")
    parser.add_argument("--ab-duration", type=float, default=150.0)
    parser.add_argument("--interleave-duration", type=float, default=30.0)
    parser.add_argument("--sweep", default="300,325,350,375,400,425,450,475,500")
    parser.add_argument("--sweep-duration", type=float, default=15.0)
    parser.add_argument(
        "--phases", default="aof,experiments,kill,overhead",
        help="comma-separated subset of aof, experiments, kill, overhead",
    )  # fmt: skip
    parser.add_argument("--out", default="perf_test/results")
    parser.add_argument("--docs", default="docs/experiments")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mlsys-experiments-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLSYS_MODEL_CACHE"] = str(work / "cache")
    out, docs = Path(args.out), Path(args.docs)
    out.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cores",
        "rate": args.rate,
    }

    phases_run = set(args.phases.split(","))
    if "aof" in phases_run:
        print("1. the log's crash guarantee", flush=True)
        results["aof"] = {
            mode: crash_loss(work / f"aof-{mode}", mode) for mode in ("everysec", "always")
        }
        for mode, r in results["aof"].items():
            print(f"   appendfsync {mode}: {r}", flush=True)

    cli("models", "register", args.champion, "--name", "ranknet", "--alias", "champion")
    cli("models", "register", args.challenger, "--name", "ranknet", "--alias", "challenger")

    import redis

    from mlsys.compose.loadtest import run_once
    from mlsys.compose.stack import running_stack, start_api, stop_process, wait_ready
    from mlsys.platform.rollout import RolloutStore
    from mlsys.recommender.online.experiment_report import report
    from mlsys.recommender.online.simulate import simulate

    with running_stack(
        args.data, "models:/ranknet@champion", work / "stack", workers=2, access_log=False,
        progress=False, log_redis=True,
    ) as stack:  # fmt: skip
        assert stack.log_redis is not None
        log_url = stack.log_redis.url
        client = redis.Redis.from_url(log_url)

        phases = {}
        for mode, duration, seed in (
            (
                ("ab", args.ab_duration, 1),
                ("interleave", args.interleave_duration, 2),
            )
            if "experiments" in phases_run
            else ()
        ):
            print(f"{3 if mode == 'ab' else 4}. {mode}: {args.rate:g} rps for {duration:g} s",
                  flush=True)  # fmt: skip
            began = time.monotonic()
            cli("rollout", mode, "ranknet", "--redis", log_url)
            applied_s = time_to_apply(stack.api_url, f"({mode} ", began)
            print(f"   both workers applied it {applied_s:.2f} s after the command started",
                  flush=True)  # fmt: skip
            sim = simulate(stack.api_url, args.data, args.rate, duration, seed=seed)
            state = RolloutStore(client).experiment("ranknet")
            rep = report(client, state, out / f"experiment-{mode}").to_json()
            for name in ("report.md", "report.json", "ctr.png"):
                shutil.copy(out / f"experiment-{mode}" / name, docs / f"{mode}-{name}")
            phases[mode] = {"simulated": sim, "report": rep, "applied_after_s": applied_s}
            brief = {
                "simulated": sim["arms"],
                "oracle": sim["oracle_ctr"],
                "decision": rep["decision"],
                "requests_to_decide": rep["requests_to_decide"],
            }
            print(json.dumps(brief), flush=True)
        if phases:
            results["phases"] = phases

        if "kill" in phases_run:
            print("6. impressions vs 200 answers across a killed worker", flush=True)
            cli("rollout", "ab", "ranknet", "--redis", log_url)
            time.sleep(3)
            results["worker_kill"] = impressions_across_a_kill(stack, log_url, work / "export")
            print(json.dumps(results["worker_kill"]), flush=True)
            cli("rollout", "stop", "ranknet", "--redis", log_url)

        print("7. overhead: without the log vs with the log and shadow scoring", flush=True)
        overhead: dict[str, Any] = {}
        api = stack.api
        configs = (
            ("without log or rollout", ["--no-impressions"], None),
            ("log + shadow on every request", [], "shadow"),
        )
        for round_ in (1, 2) if "overhead" in phases_run else ():  # A, B, A, B: drift hits both
            for label, flags, mode in configs:
                stop_process(api)
                port = int(stack.api_url.rsplit(":", 1)[1])
                api = start_api(
                    "models:/ranknet@champion", stack.redis.url, port=port,
                    workers=2, log_path=work / f"api-{label[:4]}-{round_}.log", access_log=False,
                    extra_args=["--log-redis", log_url, *flags],
                )  # fmt: skip
                wait_ready(stack.api_url, api)
                if mode:
                    cli("rollout", mode, "ranknet", "--redis", log_url)
                time.sleep(5)
                requests = Path(args.data) / "requests.parquet"
                _, at30 = run_once(stack.api_url, requests, 30, 30)
                steps = []
                best = None
                for rate in [float(r) for r in args.sweep.split(",")]:
                    _, step = run_once(stack.api_url, requests, rate, args.sweep_duration)
                    steps.append(step)
                    print(f"   {label} #{round_}: {rate:g} rps p95 {step['p95_ms']} ms "
                          f"errors {step['errors']}", flush=True)  # fmt: skip
                    if not step["meets_spec"]:
                        break
                    best = rate
                    time.sleep(1)
                overhead.setdefault(label, []).append(
                    {"at_30rps": at30, "best_rate": best, "steps": steps}
                )
                print(f"   {label} #{round_}: 30 rps p95 {at30['p95_ms']} ms; best {best} rps",
                      flush=True)  # fmt: skip
                if mode:
                    cli("rollout", "stop", "ranknet", "--redis", log_url)
        stop_process(api)
        if overhead:
            results["overhead"] = overhead

    name = "experiments" if len(phases_run) == 4 else "experiments-" + "-".join(sorted(phases_run))
    (out / f"{name}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    shutil.copy(out / f"{name}.json", docs / f"{name}.json")
    print(f"wrote {out / name}.json", flush=True)
    return 0


def cli(*words: str) -> None:
    subprocess.run([sys.executable, "-m", "mlsys", *words], check=True, stdout=subprocess.DEVNULL)


def crash_loss(workdir: Path, fsync: str, seconds: float = 3.0) -> dict[str, Any]:
    """Append as fast as one client can, SIGKILL the server at `seconds`, restart it from its
    file, count acknowledged entries that are gone."""
    import redis

    from mlsys.platform.redis_server import RedisServer

    server = RedisServer(workdir=workdir, appendonly=True, appendfsync=fsync).start()
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    acked: list[int] = []
    started = time.monotonic()

    def writer() -> None:
        i = 0
        while True:
            try:
                client.xadd("s", {"i": i})
            except (redis.ConnectionError, redis.TimeoutError):
                return
            acked.append(i)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(seconds)
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGKILL)
    thread.join()
    elapsed = time.monotonic() - started
    server.proc.wait()
    server.proc = None
    server.start()
    kept = {int(f[b"i"]) for _, f in redis.Redis.from_url(server.url).xrange("s")}
    server.stop()
    lost = sum(1 for i in acked if i not in kept)
    return {"acknowledged": len(acked), "lost": lost, "appends_per_s": round(len(acked) / elapsed)}


def impressions_across_a_kill(stack: Any, log_url: str, export_dir: Path) -> dict[str, Any]:
    import httpx

    from mlsys.cli import main as mlsys
    from mlsys.platform.log_export import read_parts

    mlsys(["log", "export", str(export_dir / "before"), "--redis", log_url])
    body = json.dumps({"candidate_restaurant_ids": list(range(0, 100_000, 97)),
                       "latitude": 13.87, "longitude": 100.58}).encode()  # fmt: skip
    statuses: dict[str, int] = {}
    stop = threading.Event()

    def traffic(worker: int) -> None:
        i = 0
        with httpx.Client(base_url=stack.api_url, timeout=10) as http:
            while not stop.is_set():
                rid = f"kill-{worker}-{i}"
                try:
                    headers = {"x-request-id": rid, "content-type": "application/json"}
                    r = http.post(f"/recommend/{i}", content=body, headers=headers)
                    statuses[rid] = r.status_code
                except httpx.HTTPError:
                    statuses[rid] = 0
                i += 1
                time.sleep(0.02)

    threads = [threading.Thread(target=traffic, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(5)
    before = worker_pids(stack.api.pid)
    os.kill(before[0], signal.SIGKILL)
    time.sleep(10)
    stop.set()
    for t in threads:
        t.join()
    mlsys(["log", "export", str(export_dir / "after"), "--redis", log_url])
    logged = {r for r in read_parts(export_dir / "after" / "impressions").column("request_id")
              .to_pylist() if r.startswith("kill-")}  # fmt: skip
    answered = {r for r, s in statuses.items() if s == 200}
    failed = {r for r, s in statuses.items() if s != 200}
    return {
        "requests": len(statuses),
        "answered_200": len(answered),
        "failed": len(failed),
        "impressions_exported": len(logged),
        "answered_without_impression": len(answered - logged),
        "impression_without_answer": len(logged - answered),
        "worker_pids_before": before,
        "worker_pids_after": worker_pids(stack.api.pid),
    }


def time_to_apply(url: str, marker: str, began: float, workers: int = 2) -> float:
    """Seconds from `began` until /readyz of every worker shows the new state (a connection
    per request, so the kernel spreads them over the workers)."""
    import httpx

    seen: set[int] = set()
    with httpx.Client(base_url=url, timeout=5,
                      limits=httpx.Limits(max_keepalive_connections=0)) as http:  # fmt: skip
        while len(seen) < workers:
            ready = http.get("/readyz").json()
            if marker in ready["models"]["recommender"]:
                seen.add(ready["pid"])
            time.sleep(0.01)
    return time.monotonic() - began


def worker_pids(parent: int) -> list[int]:
    """uvicorn's live workers under `mlsys serve` (multiprocessing's resource tracker is a
    child too, and not a worker)."""
    import psutil

    pids = []
    for p in psutil.Process(parent).children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(p.cmdline()):
                pids.append(p.pid)
        except psutil.Error:
            continue
    return sorted(pids)


if __name__ == "__main__":
    raise SystemExit(main())
