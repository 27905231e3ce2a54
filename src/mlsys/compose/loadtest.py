"""Open-model load test: replay requests.parquet at a constant arrival rate.

Request i is due at start + i / rate whether or not earlier requests have finished (an open
model), and its latency is measured from that due time, not from when a connection happened to
be free. A closed-loop client (send, wait, send) slows down with the server and so hides a
stalled server's queueing ("coordinated omission"); here a stall shows up as the latency of
every request due during it.

The client is a minimal HTTP/1.1 keep-alive client on asyncio streams: bodies are encoded once
up front and a request costs the generator a few tens of microseconds, so on a shared 2-core
machine the generator takes as little CPU from the server as possible. A request that finds no
idle connection opens a new one, so concurrency is whatever the arrival rate and the latency
demand. `send_lag` in the report (how late the generator actually sent) tells whether the
generator itself kept up.

`mlsys loadtest URL --requests data/requests.parquet --rate 30 --duration 60` writes
`<out>/<name>.json` and `<out>/<name>.png`; `--sweep` steps the rate up and reports the highest
rate with p95 < 100 ms and no errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from mlsys.errors import MlsysError

P95_LIMIT_S = 0.100
DEFAULT_SWEEP = (50, 100, 200, 300, 400, 500, 600, 700, 800, 1000)


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    base_path: str


def parse_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise MlsysError(f"{url}: expected http://HOST:PORT")
    return Target(parts.hostname, parts.port or 80, parts.path.rstrip("/"))


def http_post(target: Target, path: str, body: bytes, content_type: str) -> bytes:
    """A complete, ready-to-send HTTP/1.1 POST: the generator only writes bytes on the hot path."""
    head = (
        f"POST {target.base_path}{path} HTTP/1.1\r\n"
        f"Host: {target.host}:{target.port}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def load_requests(path: str | Path, target: Target, candidates: bool = True) -> list[bytes]:
    """Each row of requests.parquet as a ready-to-send HTTP request; without `candidates`,
    the same request with no candidate list (the API retrieves the restaurants in reach)."""
    from mlsys.recommender.data.schema import REQUESTS_SCHEMA, open_parquet, read_columns

    p = Path(path)
    pf = open_parquet(p, REQUESTS_SCHEMA)
    table = read_columns(p, pf, list(REQUESTS_SCHEMA)).to_pylist()
    if not table:
        raise MlsysError(f"{p}: no requests")
    out = []
    for row in table:
        fields: tuple[str, ...] = ("latitude", "longitude", "size", "max_dist", "sort_dist")
        if candidates:
            fields = ("candidate_restaurant_ids", *fields)
        body = json.dumps({k: row[k] for k in fields}, separators=(",", ":")).encode()
        out.append(http_post(target, f"/recommend/{row['user_id']}", body, "application/json"))
    return out


# An idle keep-alive connection is not reused after this long (httpx's default): the server
# closes idle ones after 30 s, and a request written as it does fails (seen once in a 60 s
# run at 200 rps, where 23 connections took turns and one sat idle past 30 s).
KEEPALIVE_EXPIRY_S = 5.0


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    async def roundtrip(self, payload: bytes) -> tuple[int, bool, str, int, str]:
        """Send one request, read the whole response; (status, keep-alive, X-Model-Version,
        CRC-32 of the body: whether two answers were the same, without keeping them,
        X-Answer-ID: the server's name for the answer, to find it in the log)."""
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        keep = True
        version = answer = ""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"connection" and value.strip().lower() == b"close":
                keep = False
            elif lname == b"x-model-version":
                version = value.strip().decode("latin-1")
            elif lname == b"x-answer-id":
                answer = value.strip().decode("latin-1")
        body = await self.reader.readexactly(length) if length else b""
        return status, keep, version, zlib.crc32(body), answer

    def close(self) -> None:
        self.writer.close()


@dataclass
class RunResult:
    rate: float
    duration: float
    scheduled: list[float] = field(default_factory=list)  # due time, s from start
    latency: list[float] = field(default_factory=list)  # s from due time to response end
    status: list[str] = field(default_factory=list)  # "200", "503", "timeout", ...
    send_lag: list[float] = field(default_factory=list)  # s the generator sent late
    model_version: list[str] = field(default_factory=list)  # X-Model-Version, "" if none
    body_crc: list[int] = field(default_factory=list)  # CRC-32 of the body, 0 if none
    answer_id: list[str] = field(default_factory=list)  # X-Answer-ID, "" if none
    payload: list[int] = field(default_factory=list)  # which payload was sent
    started_at: float = 0.0  # time.monotonic() of the first due time
    wall: float = 0.0
    connections: int = 0


async def _run(target: Target, payloads: list[bytes], rate: float, duration: float,
               timeout: float) -> RunResult:  # fmt: skip
    loop = asyncio.get_running_loop()
    result = RunResult(rate=rate, duration=duration)
    idle: list[Connection] = []
    n = round(rate * duration)
    tasks: list[asyncio.Task[None]] = []

    async def fire(i: int, due: float) -> None:
        result.send_lag.append(loop.time() - due)
        conn: Connection | None = None
        while idle and conn is None:
            conn = idle.pop()
            if loop.time() - conn.idle_since > KEEPALIVE_EXPIRY_S:
                conn.close()
                conn = None
        status = "error"
        version = answer = ""
        crc = 0
        try:
            if conn is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(target.host, target.port), timeout
                )
                conn = Connection(reader, writer)
                result.connections += 1
            code, keep, version, crc, answer = await asyncio.wait_for(
                conn.roundtrip(payloads[i % len(payloads)]),
                max(0.001, timeout - (loop.time() - due)),
            )
            status = str(code)
            if keep:
                conn.idle_since = loop.time()
                idle.append(conn)
            else:
                conn.close()
        except TimeoutError:
            status = "timeout"
            if conn is not None:
                conn.close()
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            status = "connection_error"
            if conn is not None:
                conn.close()
        result.scheduled.append(due - start)
        result.latency.append(loop.time() - due)
        result.status.append(status)
        result.model_version.append(version)
        result.body_crc.append(crc)
        result.answer_id.append(answer)
        result.payload.append(i % len(payloads))

    start = loop.time() + 0.05
    result.started_at = start  # the loop's clock is time.monotonic()
    for i in range(n):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(i, due)))
    await asyncio.gather(*tasks)
    result.wall = loop.time() - start
    for conn in idle:
        conn.close()
    return result


async def _warmup(target: Target, payloads: list[bytes], count: int) -> None:
    """A few sequential requests so workers have imported and connected before timing."""
    reader, writer = await asyncio.open_connection(target.host, target.port)
    conn = Connection(reader, writer)
    try:
        for i in range(count):
            await asyncio.wait_for(conn.roundtrip(payloads[-1 - i % len(payloads)]), 10)
    finally:
        conn.close()


def summarize(result: RunResult) -> dict[str, Any]:
    lat = np.asarray(result.latency) * 1e3
    statuses = Counter(result.status)
    errors = {k: v for k, v in statuses.items() if k != "200"}
    pct = {
        f"p{q}_ms": round(float(np.percentile(lat, q)), 3) if len(lat) else None
        for q in (50, 90, 95, 99)
    }
    ok = not errors and pct["p95_ms"] is not None and pct["p95_ms"] < P95_LIMIT_S * 1e3
    return {
        "target_rate": result.rate,
        "duration_s": result.duration,
        "requests": len(lat),
        "achieved_rate": round(len(lat) / result.wall, 2) if result.wall else 0.0,
        **pct,
        "max_ms": round(float(lat.max()), 3) if len(lat) else None,
        "mean_ms": round(float(lat.mean()), 3) if len(lat) else None,
        "errors": sum(errors.values()),
        "errors_by_status": dict(sorted(errors.items())),
        "status_counts": dict(sorted(statuses.items())),
        "send_lag_p99_ms": round(float(np.percentile(result.send_lag, 99)) * 1e3, 3)
        if result.send_lag
        else None,
        "connections_opened": result.connections,
        "meets_spec": ok,  # p95 < 100 ms and zero errors
    }


def plot_run(result: RunResult, summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = np.asarray(result.latency) * 1e3
    t = np.asarray(result.scheduled)
    bad = np.asarray([s != "200" for s in result.status], dtype=bool)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    ax1.scatter(t[~bad], lat[~bad], s=3, alpha=0.5, label="200")
    if bad.any():
        ax1.scatter(t[bad], lat[bad], s=8, color="red", label="error")
    for q, style in ((50, ":"), (95, "--"), (99, "-.")):
        ax1.axhline(summary[f"p{q}_ms"], color="gray", linestyle=style, label=f"p{q}")
    ax1.set_yscale("log")
    ax1.set_xlabel("due time (s)")
    ax1.set_ylabel("latency from due time (ms)")
    ax1.set_title(f"{summary['target_rate']:g} rps for {summary['duration_s']:g} s")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.hist(lat, bins=np.logspace(np.log10(max(lat.min(), 0.1)), np.log10(lat.max() + 1), 60))
    ax2.set_xscale("log")
    ax2.set_xlabel("latency (ms)")
    ax2.set_ylabel("requests")
    ax2.set_title(
        f"p50 {summary['p50_ms']:.1f}  p95 {summary['p95_ms']:.1f}  "
        f"p99 {summary['p99_ms']:.1f}  max {summary['max_ms']:.1f} ms"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(steps: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [s["target_rate"] for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for q in (50, 95, 99):
        ax.plot(rates, [s[f"p{q}_ms"] for s in steps], marker="o", label=f"p{q}")
    ax.axhline(P95_LIMIT_S * 1e3, color="red", linestyle="--", label="100 ms")
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.legend()
    ax.set_title("latency vs arrival rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_once(url: str, requests_path: str | Path, rate: float, duration: float,
             timeout: float = 5.0, warmup: int = 20,
             payloads: list[bytes] | None = None) -> tuple[RunResult, dict[str, Any]]:  # fmt: skip
    if rate <= 0 or duration <= 0:
        raise MlsysError("--rate and --duration must be positive")
    target = parse_url(url)
    payloads = payloads if payloads is not None else load_requests(requests_path, target)
    try:
        asyncio.run(_warmup(target, payloads, warmup))
    except (OSError, TimeoutError) as exc:
        raise MlsysError(f"{url}: cannot reach the API: {exc}") from exc
    result = asyncio.run(_run(target, payloads, rate, duration, timeout))
    return result, summarize(result)


def _print(summary: dict[str, Any]) -> None:
    print(
        f"rate {summary['target_rate']:g} rps -> achieved {summary['achieved_rate']:.1f} rps, "
        f"{summary['requests']} requests | p50 {summary['p50_ms']:.2f}  p90 {summary['p90_ms']:.2f}"
        f"  p95 {summary['p95_ms']:.2f}  p99 {summary['p99_ms']:.2f}  max {summary['max_ms']:.2f}"
        f" ms | errors {summary['errors']} {summary['errors_by_status'] or ''}",
        flush=True,
    )


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = parse_url(args.url)
    payloads = load_requests(args.requests, target, candidates=not args.no_candidates)
    common = {"url": args.url, "requests_file": str(args.requests), "timeout_s": args.timeout,
              "candidate_lists": not args.no_candidates,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    if not args.sweep:
        result, summary = run_once(args.url, args.requests, args.rate, args.duration,
                                   args.timeout, payloads=payloads)  # fmt: skip
        name = args.name or f"loadtest-{args.rate:g}rps"
        (out / f"{name}.json").write_text(json.dumps({**common, **summary}, indent=2) + "\n")
        plot_run(result, summary, out / f"{name}.png")
        _print(summary)
        print(f"wrote {out / name}.json and .png")
        return 0 if summary["errors"] == 0 else 1

    rates = [float(r) for r in args.rates.split(",")] if args.rates else list(DEFAULT_SWEEP)
    steps: list[dict[str, Any]] = []
    best: float | None = None
    name = args.name or "sweep"
    for rate in rates:
        result, summary = run_once(args.url, args.requests, rate, args.duration, args.timeout,
                                   payloads=payloads)  # fmt: skip
        steps.append(summary)
        _print(summary)
        plot_run(result, summary, out / f"{name}-{rate:g}rps.png")
        if not summary["meets_spec"]:
            break
        best = rate
        time.sleep(1.0)  # let queues drain between steps
    report = {**common, "criterion": "p95 < 100 ms and zero errors", "best_rate": best,
              "steps": steps}  # fmt: skip
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_sweep(steps, out / f"{name}.png")
    print(f"highest rate with p95 < 100 ms and no errors: {best} rps")
    print(f"wrote {out / name}.json and .png")
    return 0
