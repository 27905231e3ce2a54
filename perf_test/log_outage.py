"""Does the log outlive its store? 100 rps while the log Redis is frozen, then killed, and
while an API worker is killed; then every answered id is looked up in the log.

    flock /tmp/mlsys-bench.lock .venv/bin/python perf_test/log_outage.py \\
        --data /work/data/full --model MODEL_DIR --tagger-model TAGGER_DIR \\
        [--rate 100 --fault-s 60] [--spool-max-mb 1024] [--out docs/reliability]

Starts the stack (feature Redis + `features load`, an append-only log Redis with a
`maxmemory`, `mlsys serve --workers 2 --tagger-model ...`). The open-model generator of
`mlsys loadtest` sends requests.parquet at `--rate` (latency from each request's due time,
5 s timeout), and a side client asks 5 answers a second of its own, clicks one item of each
and sends a photo to /tag every third time. Timeline, in seconds from the first request
(F = --fault-s):

    0 .. 30          healthy
    30 .. 30+F       log Redis frozen (SIGSTOP: connections accepted, nothing answered)
    30+F .. 60+F     healthy again (SIGCONT)
    60+F .. 60+2F    log Redis killed (SIGKILL), then restarted from its AOF on its port
    75+2F            one API worker killed (SIGKILL); the server starts another
    105+2F           end; wait for the spools to ship, read the streams

Prints and writes `<out>/log-outage.json` and `<out>/log-outage.png`: statuses, p50/p95 per
phase, and how many answered impressions, clicks and tag records are missing from the log
(or there more than once). With a small `--spool-max-mb` the spool fills during the kill and
the newest records are dropped and counted (the stated overflow policy): the report then
compares the count of missing records with `mlsys_log_records_total{outcome="dropped"}`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import redis
from PIL import Image

WARM_S = 30.0
RECOVER_S = 30.0
SIDE_RPS = 5.0
SIDE_BODY = {"candidate_restaurant_ids": list(range(0, 100_000, 100)), "latitude": 13.87,
             "longitude": 100.58, "max_dist": 1e7, "size": 10}  # fmt: skip


@dataclass
class Side:
    """The side client's answers, clicks and tags, by the server's ids."""

    answers: list[str] = field(default_factory=list)
    clicks: list[tuple[str, int]] = field(default_factory=list)  # accepted (202)
    tags: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)


def side_client(url: str, side: Side, stop: threading.Event) -> None:
    rng = random.Random(7)
    buf = io.BytesIO()
    Image.new("RGB", (96, 128), (180, 40, 60)).save(buf, format="JPEG")
    photo = buf.getvalue()
    with httpx.Client(base_url=url, timeout=5) as http:
        next_at = time.monotonic()
        i = 0
        while not stop.is_set():
            next_at += 1 / SIDE_RPS
            time.sleep(max(0.0, next_at - time.monotonic()))
            i += 1
            try:
                user = rng.randrange(0, 1000)
                r = http.post(f"/recommend/{user}", json=SIDE_BODY)
                side.statuses[f"recommend {r.status_code}"] += 1
                if r.status_code == 200:
                    answer = r.json()
                    side.answers.append(answer["answer_id"])
                    if answer["restaurants"]:
                        item = rng.choice(answer["restaurants"])["id"]
                        body = {"answer_id": answer["answer_id"], "user_id": user,
                                "restaurant_id": item}  # fmt: skip
                        c = http.post("/feedback", json=body)
                        side.statuses[f"feedback {c.status_code}"] += 1
                        if c.status_code == 202:
                            side.clicks.append((answer["answer_id"], item))
                if i % 3 == 0:
                    t = http.post("/tag", content=photo, headers={"content-type": "image/jpeg"})
                    side.statuses[f"tag {t.status_code}"] += 1
                    if t.status_code == 200:
                        side.tags.append(t.json()["answer_id"])
            except httpx.HTTPError as exc:
                side.statuses[f"error {type(exc).__name__}"] += 1


def faults(stack: Any, fault_s: float, started: threading.Event, events: list[str]) -> None:
    """The timeline above, from the generator's first due time."""
    log = stack.log_redis
    t0 = time.monotonic()

    def at(s: float, what: str) -> None:
        time.sleep(max(0.0, t0 + s - time.monotonic()))
        events.append(f"{time.monotonic() - t0:7.1f} s  {what}")
        print(events[-1], flush=True)

    started.wait()
    at(WARM_S, "log Redis frozen (SIGSTOP)")
    os.kill(log.pid, signal.SIGSTOP)
    at(WARM_S + fault_s, "log Redis continued (SIGCONT)")
    os.kill(log.pid, signal.SIGCONT)
    at(WARM_S + fault_s + RECOVER_S, "log Redis killed (SIGKILL)")
    os.kill(log.pid, signal.SIGKILL)
    log.proc.wait()
    log.proc = None
    at(WARM_S + 2 * fault_s + RECOVER_S, "log Redis restarted from its AOF")
    log.start()
    at(WARM_S + 2 * fault_s + RECOVER_S + 15, "an API worker killed (SIGKILL)")
    children = psutil.Process(stack.api.pid).children(recursive=True)
    victim = next(p for p in children if "spawn_main" in " ".join(p.cmdline()))
    os.kill(victim.pid, signal.SIGKILL)


def phase_of(t: float, fault_s: float) -> str:
    edges = [(WARM_S, "healthy"), (WARM_S + fault_s, "frozen"),
             (WARM_S + fault_s + RECOVER_S, "recovered"),
             (WARM_S + 2 * fault_s + RECOVER_S, "killed"),
             (WARM_S + 2 * fault_s + RECOVER_S + 15, "restarted"),
             (WARM_S + 2 * fault_s + RECOVER_S + 45, "worker killed")]  # fmt: skip
    return next((name for edge, name in edges if t < edge), "end")


def in_log(client: Any) -> tuple[Counter[str], Counter[tuple[str, int]], Counter[str]]:
    from mlsys.platform import event_log

    impressions = Counter(r["request_id"] for r in event_log.read_stream(client, "impressions"))
    clicks = Counter((r["request_id"], int(r["item_id"]))
                     for r in event_log.read_stream(client, "clicks"))  # fmt: skip
    tags = Counter(r["request_id"] for r in event_log.read_stream(client, "tags"))
    return impressions, clicks, tags


def counted(metrics: str, prefix: str) -> dict[str, float]:
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
            if line.startswith(prefix)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tagger-model", required=True)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--fault-s", type=float, default=60.0)
    parser.add_argument("--spool-max-mb", type=int, default=1024)
    parser.add_argument("--out", default="docs/reliability")
    parser.add_argument("--name", default="log-outage")
    args = parser.parse_args()

    from mlsys.compose import loadtest
    from mlsys.compose.stack import running_stack

    duration = WARM_S + 2 * args.fault_s + RECOVER_S + 45 + 30
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rate": args.rate, "fault_s": args.fault_s, "spool_max_mb": args.spool_max_mb,
        "machine": f"{os.cpu_count()} cores", "load_before": os.getloadavg(),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        os.environ["MLSYS_SPOOL_DIR"] = str(Path(work) / "spool")
        os.environ["MLSYS_SPOOL_MAX_MB"] = str(args.spool_max_mb)
        with running_stack(args.data, args.model, work, workers=2, access_log=False,
                           progress=False, log_redis=True,
                           extra_args=["--tagger-model", args.tagger_model]) as stack:  # fmt: skip
            target = loadtest.parse_url(stack.api_url)
            payloads = loadtest.load_requests(Path(args.data) / "requests.parquet", target)
            asyncio.run(loadtest._warmup(target, payloads, 20))
            side, stop, started, events = Side(), threading.Event(), threading.Event(), []
            threads = [threading.Thread(target=side_client, args=(stack.api_url, side, stop)),
                       threading.Thread(target=faults, args=(stack, args.fault_s, started,
                                                             events))]  # fmt: skip
            for t in threads:
                t.start()
            print(f"{args.rate:.0f} rps for {duration:.0f} s at {stack.api_url}", flush=True)
            started.set()
            run = asyncio.run(loadtest._run(target, payloads, args.rate, duration, 5.0))
            stop.set()
            for t in threads:
                t.join()

            client = redis.Redis.from_url(stack.log_redis.url)
            answered = [a for a, s in zip(run.answer_id, run.status, strict=True) if s == "200"]
            answered += side.answers
            waited = time.monotonic()
            while True:  # the spools ship within seconds; held clicks within PENDING_CLICK_S
                impressions, clicks, tags = in_log(client)
                missing = (sum(impressions[a] == 0 for a in answered)
                           + sum(clicks[c] == 0 for c in side.clicks)
                           + sum(tags[t] == 0 for t in side.tags))  # fmt: skip
                if missing == 0 or time.monotonic() - waited > 60:
                    break
                time.sleep(1)
            result["log_complete_after_s"] = round(time.monotonic() - waited, 1)
            metrics = httpx.get(f"{stack.api_url}/metrics").text
            result["used_memory_log_redis_mb"] = round(
                int(client.info("memory")["used_memory"]) / 2**20, 1
            )

    phases: dict[str, list[float]] = {}
    statuses: dict[str, Counter[str]] = {}
    for t, lat, status in zip(run.scheduled, run.latency, run.status, strict=True):
        name = phase_of(t, args.fault_s)
        phases.setdefault(name, []).append(lat * 1e3)
        statuses.setdefault(name, Counter())[status] += 1
    result["events"] = events
    result["phases"] = {
        name: {"requests": len(lat), "statuses": dict(statuses[name]),
               "p50_ms": round(float(np.percentile(lat, 50)), 1),
               "p95_ms": round(float(np.percentile(lat, 95)), 1),
               "max_ms": round(float(np.max(lat)), 1)}
        for name, lat in phases.items()
    }  # fmt: skip
    result["side_client"] = dict(side.statuses)
    result["log"] = {
        "answers": len(answered),
        "impressions_missing": sum(impressions[a] == 0 for a in answered),
        "impressions_twice": sum(impressions[a] > 1 for a in answered),
        "clicks_accepted": len(side.clicks),
        "clicks_missing": sum(clicks[c] == 0 for c in side.clicks),
        "clicks_twice": sum(clicks[c] > 1 for c in side.clicks),
        "tags": len(side.tags),
        "tags_missing": sum(tags[t] == 0 for t in side.tags),
        "tags_twice": sum(tags[t] > 1 for t in side.tags),
    }
    result["metrics"] = {**counted(metrics, "mlsys_log_records_total"),
                         **counted(metrics, "mlsys_feedback_total")}  # fmt: skip
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=1), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(run, args.fault_s, out / f"{args.name}.png", result)
    return 0


def plot(run: Any, fault_s: float, path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(run.scheduled)
    lat = np.asarray(run.latency) * 1e3
    ok = np.asarray([s == "200" for s in run.status])
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.scatter(t[ok], lat[ok], s=2, alpha=0.4, label="200")
    if (~ok).any():
        ax.scatter(t[~ok], lat[~ok], s=8, color="red", label="not 200")
    spans = [(WARM_S, WARM_S + fault_s, "log Redis frozen"),
             (WARM_S + fault_s + RECOVER_S, WARM_S + 2 * fault_s + RECOVER_S,
              "log Redis killed")]  # fmt: skip
    for a, b, label in spans:
        ax.axvspan(a, b, color="orange", alpha=0.15)
        ax.text((a + b) / 2, 0.97, label, transform=ax.get_xaxis_transform(), ha="center",
                va="top")  # fmt: skip
    kill = WARM_S + 2 * fault_s + RECOVER_S + 15
    ax.axvline(kill, color="red", linestyle="--", linewidth=1)
    ax.text(kill, 0.90, " worker kill -9", transform=ax.get_xaxis_transform())
    ax.set_yscale("log")
    ax.set_xlabel("s from the first request")
    ax.set_ylabel("latency from due time (ms)")
    lost = result["log"]
    ax.set_title(f"{result['rate']:.0f} rps, 2 workers: answered {lost['answers']}, missing "
                 f"from the log: {lost['impressions_missing']} impressions, "
                 f"{lost['clicks_missing']} clicks, {lost['tags_missing']} tags")  # fmt: skip
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
