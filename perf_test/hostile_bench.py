"""The "hostile inputs" figures of docs/serving-report.md (issue 14), in one run:

    flock /tmp/mlsys-heavy.lock .venv/bin/python perf_test/hostile_bench.py \
        --data /work/data/full --model MODEL_DIR --tagger-model TAGGER_DIR

Starts the stack as the demo does (redis-server, full tables loaded, `mlsys serve --workers 2
--tagger-model ...`, default timeouts and caps), then:

1. a /recommend probe (rows of requests.parquet, ~1,000 candidates, one keep-alive client,
   10 per second) on its own, then while each attack runs in separate processes:
   - multipart: 2 clients posting 100,000-part bodies (6 MB) to /tag back to back;
   - slow clients: 500 connections dribbling header bytes, and 100 sending a chunked body
     that never ends, each reopened when the server cuts it off;
2. a connection flood past the cap (3,000 idle connections): how many the server refused,
   and a probe right after;
3. images: each case sent alone (the 16-bit one 4x at once), the workers' peak RSS (VmHWM,
   reset through /proc/PID/clear_refs before each case) and the answer's status and time.

Prints a table and writes perf_test/results/hostile.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing as mp
import os
import socket
import statistics
import struct
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

# ------------------------------------------------------------------ attackers (own processes)


def multipart_attacker(url: str, seconds: float, results: Any) -> None:
    one = b'--flood\r\nContent-Disposition: form-data; name="f"\r\n\r\n\r\n'
    body = one * 100_000 + b"--flood--\r\n"
    headers = {"content-type": "multipart/form-data; boundary=flood"}
    end = time.monotonic() + seconds
    with httpx.Client(timeout=120) as client:
        while time.monotonic() < end:
            t = time.perf_counter()
            r = client.post(f"{url}/tag", content=body, headers=headers)
            results.put((r.status_code, time.perf_counter() - t))
    results.put(None)  # done: the parent drains up to here before joining


def slow_client_attacker(port: int, seconds: float, headers_n: int, bodies_n: int) -> None:
    async def dribble_headers() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                for byte in b"POST /recommend/1 HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 10_000:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.5)
                    if time.monotonic() > end:
                        break
                writer.close()
            except OSError:
                await asyncio.sleep(0.1)  # cut off by the header deadline: open another

    async def endless_body() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(
                    b"POST /recommend/1 HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                    b"transfer-encoding: chunked\r\n\r\n1\r\n{\r\n"
                )
                await writer.drain()
                await asyncio.wait_for(reader.read(), timeout=max(0.1, end - time.monotonic()))
                writer.close()
            except (OSError, TimeoutError):
                await asyncio.sleep(0.1)

    async def main() -> None:
        await asyncio.gather(
            *(dribble_headers() for _ in range(headers_n)),
            *(endless_body() for _ in range(bodies_n)),
        )

    asyncio.run(main())


# ------------------------------------------------------------------ probes and measurements


def probe_series(url: str, bodies: list[tuple[int, bytes]], seconds: float) -> dict[str, Any]:
    """10 /recommend per second on one keep-alive client: latency percentiles and errors."""
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + seconds
    i = 0
    with httpx.Client(base_url=url, timeout=10) as client:
        while time.monotonic() < end:
            user, body = bodies[i % len(bodies)]
            i += 1
            t = time.perf_counter()
            try:
                r = client.post(f"/recommend/{user}", content=body,
                                headers={"content-type": "application/json"})  # fmt: skip
                json.loads(r.content)
                ok = r.status_code == 200
            except (httpx.HTTPError, ValueError):
                ok = False
            latencies.append((time.perf_counter() - t) * 1e3)
            errors += not ok
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - t)))
    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p95_ms": round(float(np.percentile(latencies, 95)), 2),
        "max_ms": round(max(latencies), 2),
    }


def workers(api_pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(api_pid).children(recursive=True)]


def reset_peaks(pids: list[int]) -> None:
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := current RSS


def peak_rss_mib(pids: list[int]) -> float:
    peaks = []
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        peaks.append(next(int(x.split()[1]) for x in status if x.startswith("VmHWM")) / 1024)
    return round(max(peaks), 1)


def png(width: int, height: int, depth: int = 8, colour: int = 0) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    samples = {0: 1, 2: 3}[colour] * depth // 8
    raw = (b"\x00" + b"\x80" * (width * samples)) * height
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))  # fmt: skip


def jpeg(width: int, height: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 64, width // 64, 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def image_cases() -> list[tuple[str, bytes, int]]:
    """(case, bytes, concurrent copies)."""
    return [
        ("garment photo, 256x256 JPEG", jpeg(256, 256), 1),
        ("12 MP phone photo, 4000x3000 JPEG", jpeg(4000, 3000), 1),
        ("largest accepted JPEG, 7300x5470 (40 MP)", jpeg(7300, 5470), 1),
        ("largest accepted RGB PNG, 3300x2500 (8.25 MP)", png(3300, 2500, colour=2), 1),
        ("rejected: 12 MP RGB PNG, 4000x3000", png(4000, 3000, colour=2), 1),
        ("rejected: 1 x 39,000,000 PNG", png(1, 39_000_000), 1),
        ("rejected: 16-bit 6320x6320 PNG, 4 at once", png(6320, 6320, depth=16), 4),
        ("rejected: 40 MP RGB PNG", png(7300, 5470, colour=2), 1),
    ]


def images(url: str, pids: list[int]) -> list[dict[str, Any]]:
    rows = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, data, copies in image_cases():
            time.sleep(0.5)
            reset_peaks(pids)
            t = time.perf_counter()
            with ThreadPoolExecutor(copies) as pool:
                answers = list(pool.map(lambda body: client.post("/tag", content=body),
                                        [data] * copies))  # fmt: skip
            seconds = time.perf_counter() - t
            rows.append(
                {
                    "case": name,
                    "bytes": len(data),
                    "status": sorted({a.status_code for a in answers}),
                    "error": answers[0].json().get("error"),
                    "seconds": round(seconds, 3),
                    "worker_peak_rss_mib": peak_rss_mib(pids),
                }
            )
            print(f"  {rows[-1]}", flush=True)
    return rows


def connection_flood(port: int, count: int) -> dict[str, Any]:
    socks: list[socket.socket] = []
    failed_to_open = 0
    for _ in range(count):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            failed_to_open += 1
    time.sleep(0.5)
    refused = 0
    for s in socks:
        s.settimeout(0.01)
        try:
            refused += s.recv(1) == b""
        except TimeoutError:
            pass
        except OSError:
            refused += 1
    for s in socks:
        s.close()
    return {"opened": len(socks), "closed_by_server": refused, "failed_to_open": failed_to_open}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tagger-model", required=True)
    parser.add_argument("--seconds", type=float, default=20.0, help="per attack")
    parser.add_argument("--out", default="perf_test/results")
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from mlsys.compose.stack import running_stack

    rows = pq.read_table(Path(args.data) / "requests.parquet").slice(0, 500).to_pylist()
    bodies = [(r["user_id"], json.dumps({k: r[k] for k in r if k != "user_id"}).encode())
              for r in rows]  # fmt: skip
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with (
        tempfile.TemporaryDirectory() as work,
        running_stack(
            args.data,
            args.model,
            work,
            workers=2,
            access_log=False,
            progress=False,
            extra_args=["--tagger-model", args.tagger_model],
        ) as stack,
    ):
        url = stack.api_url
        port = int(url.rsplit(":", 1)[1])
        pids = workers(stack.api.pid)
        print(f"stack up at {url}; workers {pids}", flush=True)
        result["probe_alone"] = probe_series(url, bodies, args.seconds)
        print(f"probe alone: {result['probe_alone']}", flush=True)

        answers: Any = mp.Queue()
        attackers = [
            mp.Process(target=multipart_attacker, args=(url, args.seconds, answers))
            for _ in range(2)
        ]
        for a in attackers:
            a.start()
        result["probe_during_multipart"] = probe_series(url, bodies, args.seconds)
        # Drain before joining: a child does not exit while its queued items are unread.
        floods: list[tuple[int, float]] = []
        finished = 0
        while finished < len(attackers):
            item = answers.get()
            if item is None:
                finished += 1
            else:
                floods.append(item)
        for a in attackers:
            a.join()
        result["multipart_answers"] = {
            "count": len(floods),
            "statuses": sorted({s for s, _ in floods}),
            "median_s": round(statistics.median(t for _, t in floods), 3) if floods else None,
        }
        print(f"probe during multipart: {result['probe_during_multipart']}; "
              f"attack answers {result['multipart_answers']}", flush=True)  # fmt: skip

        slow = mp.Process(target=slow_client_attacker, args=(port, args.seconds + 2, 500, 100))
        slow.start()
        time.sleep(2)  # let the connections open
        result["probe_during_slow_clients"] = probe_series(url, bodies, args.seconds)
        slow.join()
        print(f"probe during slow clients: {result['probe_during_slow_clients']}", flush=True)

        result["connection_flood"] = connection_flood(port, 3000)
        result["probe_after_flood"] = probe_series(url, bodies, 3)
        print(f"flood: {result['connection_flood']}; after: {result['probe_after_flood']}")

        print("images:", flush=True)
        result["images"] = images(url, pids)
        metrics = httpx.get(f"{url}/metrics").text
        result["connections_dropped"] = {
            line.split('"')[1]: float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("mlsys_connections_dropped_total{")
        }
        result["cpu_count"] = os.cpu_count()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hostile.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'hostile.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
