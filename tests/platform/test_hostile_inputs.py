"""The serving path as an attacker tries it (issue 14), against a real `mlsys serve` process.

One server for the module: 2 workers, /recommend and /tag, with short timeouts so the slow-client
cases take seconds. Every response body is parsed as strict JSON (`json_bodies`), and the last
test reads the server's log: no request may have ended in a 500.

Time bounds here are guards against the failure modes that were measured (a 27.6 s stall, a
30 s hang), an order of magnitude looser than what the server does; the figures themselves are
measured by perf_test/hostile_bench.py and recorded in docs/serving-report.md.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from mlsys.compose.stack import start_api, stop_process, wait_ready
from mlsys.platform.redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration
TOKEN = "hostile-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 32  # per worker
RSS_BUDGET_MIB = 600  # issue 14: per worker, for the largest accepted and worst rejected image


@dataclass
class Api:
    url: str
    port: int
    proc: Any
    log_path: Path


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_data: Path,
    model_dir: Path,
    tagger_model: Path,
) -> Iterator[Api]:
    from mlsys.platform.redis_client import connect
    from mlsys.recommender.serving.materialize import materialize

    work = tmp_path_factory.mktemp("hostile")
    redis = RedisServer(workdir=work / "redis").start()
    proc = None
    try:
        materialize(tiny_data, connect(redis.url, timeout_s=5), progress=False)
        port = free_port()
        log_path = work / "api.log"
        proc = start_api(
            model_dir,
            redis.url,
            port=port,
            workers=2,
            log_path=log_path,
            extra_env={"MLSYS_ADMIN_TOKEN": TOKEN},
            extra_args=[
                "--tagger-model", str(tagger_model),
                "--header-timeout", str(HEADER_TIMEOUT_S),
                "--body-timeout", str(BODY_TIMEOUT_S),
                "--max-connections", str(MAX_CONNECTIONS),
            ],
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, timeout_s=120)
        yield Api(url=url, port=port, proc=proc, log_path=log_path)
    finally:
        if proc is not None:
            stop_process(proc)
        redis.stop()


@pytest.fixture()
def http(api: Api, json_bodies: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=60) as client:
        yield json_bodies(client)


def recommend_body(ids: list[int], **kw: Any) -> dict[str, Any]:
    return {"candidate_restaurant_ids": ids, "latitude": 13.87, "longitude": 100.58, **kw}


def probe(url: str) -> float:
    """Seconds for one /recommend on a fresh connection (the attack holds the others)."""
    started = time.perf_counter()
    r = httpx.post(f"{url}/recommend/1", json=recommend_body([1, 2, 3]), timeout=30)
    assert r.status_code == 200, r.text
    json.loads(r.content)
    return time.perf_counter() - started


def worker_peak_rss_mib(proc: Any) -> float:
    """The largest peak RSS (VmHWM: since the process started) over the server's workers."""
    import psutil

    peaks = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        status = Path(f"/proc/{child.pid}/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
        peaks.append(kib / 1024)
    assert peaks
    return max(peaks)


# ------------------------------------------------------------------ 1. values beyond float32


def test_a_feature_beyond_float32_is_422_and_the_largest_float32_still_scores(
    http: httpx.Client,
) -> None:
    r = http.put("/admin/features/restaurants/10", json={"features": [1e39] + [0.0] * 9},
                 headers=AUTH)  # fmt: skip
    assert r.status_code == 422 and r.json()["field"] == "features"
    assert "less than or equal to 34028234663852886" in r.json()["message"]  # float32's max
    r = http.put("/admin/features/restaurants/10", json={"latitude": 999}, headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "latitude"
    # the extreme a float32 holds is stored, and a ranking over it is still numbers
    extreme = float(np.finfo(np.float32).max)
    r = http.put("/admin/features/restaurants/10", json={"features": [extreme, -extreme] * 5},
                 headers=AUTH)  # fmt: skip
    assert r.status_code == 200
    out = http.post("/recommend/1", json=recommend_body([10, 11], max_dist=1e7))
    assert out.status_code == 200  # json_bodies has already refused NaN or Infinity
    assert {x["id"] for x in out.json()["restaurants"]} == {10, 11}


# ------------------------------------------------------------------ 2. multipart flood


def _multipart_flood(parts: int) -> tuple[bytes, str]:
    one = b'--flood\r\nContent-Disposition: form-data; name="f"\r\n\r\n\r\n'
    return one * parts + b"--flood--\r\n", "multipart/form-data; boundary=flood"


def test_a_multipart_flood_is_400_fast_and_does_not_stall_other_routes(api: Api) -> None:
    """Before: two 100,000-part bodies got 400 after ~28 s and a /recommend took 27.6 s."""
    body, ctype = _multipart_flood(100_000)
    assert len(body) < 10 * 1024 * 1024

    def attack() -> tuple[int, dict[str, Any], float]:
        started = time.perf_counter()
        r = httpx.post(f"{api.url}/tag", content=body, headers={"content-type": ctype},
                       timeout=60)  # fmt: skip
        return r.status_code, r.json(), time.perf_counter() - started

    with ThreadPoolExecutor(2) as pool:
        attacks = [pool.submit(attack) for _ in range(2)]
        probes = [probe(api.url)]
        while not all(a.done() for a in attacks):
            probes.append(probe(api.url))
        results = [a.result() for a in attacks]
    assert max(probes) < 1.0, probes
    for status, answer, seconds in results:
        assert seconds < 5.0, seconds
        assert status == 400 and answer["field"] == "file", answer
        assert "more than 8 parts" in answer["message"]


# ------------------------------------------------------------------ 3. pixel budget


def _png(width: int, height: int, depth: int = 8, colour: int = 0, rows: bytes = b"") -> bytes:
    """A whole PNG of a flat picture: small on the wire whatever its dimensions."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    samples = {0: 1, 2: 3}[colour] * depth // 8
    raw = (b"\x00" + b"\x80" * (width * samples)) * height
    idat = zlib.compress(raw, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg(width: int, height: int) -> bytes:
    gradient = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)
    pixels = np.broadcast_to(gradient[None, :, None], (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def test_images_small_on_the_wire_but_huge_decoded_are_refused_and_memory_stays_bounded(
    api: Api, http: httpx.Client
) -> None:
    """Before: a 76 KB 1 x 39M PNG took 1.5 GB (200), a 78 KB 16-bit 6,320^2 PNG 1.24 GB, and
    four at once put a worker at 4.4 GB. Now both are refused from the header."""
    thin = _png(1, 39_000_000)
    deep = _png(6320, 6320, depth=16)
    assert len(thin) < 200_000 and len(deep) < 200_000
    started = time.perf_counter()
    r = http.post("/tag", content=thin)
    assert r.status_code == 422 and r.json()["error"] == "unsupported_dimensions"
    assert time.perf_counter() - started < 2.0
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: http.post("/tag", content=deep), range(4)))
    assert all(a.status_code == 413 and a.json()["error"] == "image_too_large" for a in answers)

    # the largest photos accepted: a 40 MP JPEG (decoded at 1/4 scale), an 8 MP RGB PNG;
    # a 12 MP RGB PNG is over the serving budget (64 MiB decoded)
    photo = _jpeg(7300, 5470)
    assert http.post("/tag", content=photo).status_code == 200
    r = http.post("/tag", content=_png(3300, 2500, colour=2))
    assert r.status_code == 200, r.text
    assert http.post("/tag", content=_png(4000, 3000, colour=2)).status_code == 413
    assert worker_peak_rss_mib(api.proc) < RSS_BUDGET_MIB


# ------------------------------------------------------------------ 4. JSON that breaks handlers


@pytest.mark.parametrize("field", ["latitude", "longitude", "max_dist"])
def test_a_400_digit_integer_is_422_naming_the_field(http: httpx.Client, field: str) -> None:
    payload = json.dumps(recommend_body([1], **{field: 10**400}))
    r = http.post("/recommend/1", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == field


@pytest.mark.parametrize(
    ("path", "method"),
    [("/recommend/1", "POST"), ("/admin/features/users/1", "PUT")],
)
@pytest.mark.parametrize("depth", [990, 200_000])
def test_deep_nesting_is_422_not_a_recursion_error(
    http: httpx.Client, path: str, method: str, depth: int
) -> None:
    payload = b'{"candidate_restaurant_ids":' + b"[" * depth + b"]" * depth + b"}"
    if len(payload) > 1 << 20:
        payload = b"[" * ((1 << 20) - 1)  # as deep as the body limit allows, and unclosed
    r = http.request(method, path, content=payload, headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "body", r.text


def test_admin_huge_numbers_are_422(http: httpx.Client) -> None:
    payload = json.dumps({"features": [10**400] * 30})
    r = http.put("/admin/features/users/1", content=payload, headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "features"
    payload = json.dumps({"latitude": 10**400})
    r = http.put("/admin/features/restaurants/1", content=payload, headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "latitude"


# ------------------------------------------------------------------ 5. slow clients


def _read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    sock.settimeout(limit_s)
    started = time.perf_counter()
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data, time.perf_counter() - started


def test_headers_that_never_end_are_cut_off_at_the_header_timeout(api: Api) -> None:
    with socket.create_connection(("127.0.0.1", api.port)) as sock:
        sock.sendall(b"POST /recommend/1 HTTP/1.1\r\nHost: x\r\n")  # ... and nothing more
        data, seconds = _read_until_closed(sock, 10)
    assert data == b"" and seconds < HEADER_TIMEOUT_S + 2.0, seconds
    with socket.create_connection(("127.0.0.1", api.port)) as sock:  # says nothing at all
        data, seconds = _read_until_closed(sock, 10)
    assert data == b"" and seconds < HEADER_TIMEOUT_S + 2.0, seconds


def test_a_body_that_never_ends_is_408_at_the_body_timeout(api: Api) -> None:
    """Before: held until the client quit (30 s), then logged as a 500."""
    with socket.create_connection(("127.0.0.1", api.port)) as sock:
        sock.sendall(
            b"POST /recommend/1 HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b'transfer-encoding: chunked\r\n\r\n5\r\n{"can\r\n'
        )
        data, seconds = _read_until_closed(sock, 15)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data
    assert json.loads(body)["field"] == "body"
    assert BODY_TIMEOUT_S - 0.5 < seconds < BODY_TIMEOUT_S + 3.0, seconds


def test_connections_over_the_cap_are_refused_and_the_server_recovers(api: Api) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(4 * MAX_CONNECTIONS):
            held.append(socket.create_connection(("127.0.0.1", api.port)))
        time.sleep(0.3)
        refused = 0
        for sock in held:
            sock.settimeout(0.05)
            try:
                refused += sock.recv(1) == b""
            except TimeoutError:
                pass  # still open, waiting for its headers
            except ConnectionResetError:
                refused += 1
        # the workers hold at most 2 x cap; the rest are closed at once
        assert refused >= 4 * MAX_CONNECTIONS - 2 * MAX_CONNECTIONS, refused
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert probe(api.url) < 1.0


def test_slow_clients_below_the_cap_do_not_slow_other_requests(api: Api) -> None:
    stop = threading.Event()

    def dribble() -> None:  # one header byte every 0.2 s, until cut off
        with socket.create_connection(("127.0.0.1", api.port)) as sock:
            for byte in b"POST /recommend/1 HTTP/1.1\r\nHost: slow\r\nX-Pad: " + b"a" * 100:
                if stop.is_set():
                    return
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    return  # closed by the header deadline
                time.sleep(0.2)

    threads = [threading.Thread(target=dribble) for _ in range(MAX_CONNECTIONS // 2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        probes = [probe(api.url) for _ in range(10)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert max(probes) < 1.0, probes


# ------------------------------------------------------------------ 6. ids and entity creation


def test_a_user_id_with_a_trailing_newline_is_422(http: httpx.Client) -> None:
    r = http.post("/recommend/1%0A", json=recommend_body([1]))
    assert r.status_code == 422 and r.json()["field"] == "user_id"
    assert http.post("/recommend/u000001", json=recommend_body([1])).status_code == 200


def test_an_admin_update_of_an_unknown_entity_is_404_unless_asked_to_create(
    http: httpx.Client,
) -> None:
    features = {"features": [0.5] * 30}
    r = http.put("/admin/features/users/1000000", json=features, headers=AUTH)
    assert r.status_code == 404 and r.json()["field"] == "user_id"
    assert "create=true" in r.json()["message"]
    unknown = http.post("/recommend/1000000", json=recommend_body([1]))  # not created: cold
    assert unknown.status_code == 200 and unknown.headers["x-cold-start"] == "user"
    r = http.put("/admin/features/users/1000000?create=yes", json=features, headers=AUTH)
    assert r.status_code == 422 and r.json()["field"] == "create"
    r = http.put("/admin/features/users/1000000?create=true", json=features, headers=AUTH)
    assert r.status_code == 200
    created = http.post("/recommend/1000000", json=recommend_body([1]))
    assert created.status_code == 200 and "x-cold-start" not in created.headers


# ------------------------------------------------------------------ every case above, in the log


def _raw(api: Api, request: bytes, chunk: int = 1 << 16) -> bytes:
    """Send bytes as they are (no client library rewrites them); the answer, to EOF."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as s:
        try:
            for start in range(0, len(request), chunk):
                s.sendall(request[start : start + chunk])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        out = b""
        while part := s.recv(65536):
            out += part
    return out


def test_a_trailing_slash_is_404_json_with_no_redirect_to_the_clients_host(api: Api) -> None:
    answer = _raw(api, b"POST /recommend/1140/ HTTP/1.1\r\nHost: evil.example\r\n"
                       b"content-length: 2\r\nconnection: close\r\n\r\n{}")  # fmt: skip
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404") and b"location" not in head.lower()
    assert json.loads(body)["error"] == "not_found"


def test_a_huge_header_is_431_json_before_it_ends(api: Api) -> None:
    started = time.monotonic()
    answer = _raw(api, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 << 20))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and time.monotonic() - started < 5
    assert json.loads(body)["error"] == "headers_too_large"
    assert httpx.get(f"{api.url}/healthz").status_code == 200


def test_a_malformed_request_line_is_400_json(api: Api) -> None:
    head, _, body = _raw(api, b"GARBAGE\x00 / HTTP/9\r\n\r\n").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(body)["field"] == "request"


def test_no_request_above_ended_in_a_500(api: Api) -> None:
    lines = [json.loads(x) for x in api.log_path.read_text().splitlines() if x.startswith("{")]
    statuses = [x["status"] for x in lines if "status" in x]
    assert statuses and 500 not in statuses
    assert not [x for x in lines if x.get("level") == "error"], "an unhandled error was logged"
