"""The impression and click log against a real Redis: the feedback check, and an export that
writes every entry exactly once across a crash between writing a part and acknowledging it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis

from mlsys.platform import event_log
from mlsys.platform.event_log import Click, EventLog, Exposure, stream_key
from mlsys.platform.log_export import export, read_parts
from mlsys.platform.redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration
SCHEMA = pa.schema([("stream_id", pa.string()), ("request_id", pa.string()), ("n", pa.int64())])
CLICKS = pa.schema(
    [("stream_id", pa.string()), ("request_id", pa.string()), ("item_id", pa.int64()),
     ("credited", pa.string())]
)  # fmt: skip


@pytest.fixture()
def log_redis(tmp_path: Path) -> Any:
    with RedisServer(workdir=tmp_path / "log", appendonly=True) as server:
        yield redis.Redis.from_url(server.url)


def test_a_click_counts_once_and_only_for_a_shown_item(log_redis: Any, tmp_path: Path) -> None:
    log = EventLog(log_redis, 64, 60, tmp_path / "spool")
    log.impression(
        {"request_id": "r1", "n": 1}, Exposure("r1", 7, "challenger", "e", "m/2", [10, 11, 12])
    )
    assert log.flush()  # the writer ships off the caller's path
    assert log.click("r1", 7, 11) == Click(2, "challenger")
    assert log.click("r1", 7, 11) == "duplicate"
    assert log.click("r1", 8, 12) == "wrong_user"  # the answer names its user
    assert log.click("r1", 7, 99) == "not_in_response"
    assert log.click("nope", 7, 11) == "unknown_request"
    assert log_redis.ttl(event_log.SERVED_PREFIX + "r1") > 0  # the served hash expires
    # interleaving: the click is credited to the team that placed the item
    served = Exposure("r2", 7, "interleaved", "e", "m/1,m/2", [5, 6, 7], teams="bab")
    log.impression({"request_id": "r2", "n": 2}, served)
    assert log.flush()
    assert log.click("r2", 7, 5) == Click(1, "challenger")
    assert log.click("r2", 7, 6) == Click(2, "champion")
    assert log_redis.xlen(stream_key(event_log.CLICKS)) == 3
    assert log_redis.xlen(stream_key(event_log.IMPRESSIONS)) == 2


def test_export_writes_each_entry_once_across_a_crash(
    log_redis: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EventLog(log_redis, 64, 60, tmp_path / "spool")
    for i in range(1000):
        log.impression(
            {"request_id": f"r{i}", "n": i}, Exposure(f"r{i}", i, "champion", "", "m", [i])
        )
    assert log.flush()
    out = tmp_path / "export"
    schemas = {"impressions": SCHEMA, "clicks": CLICKS}

    real_xack = log_redis.xack
    calls = {"n": 0}

    def crash_on_second_ack(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("exporter killed after writing its second part")
        return real_xack(*args)

    monkeypatch.setattr(log_redis, "xack", crash_on_second_ack)
    with pytest.raises(ConnectionError):
        export(log_redis, out, schemas, batch=300)
    monkeypatch.setattr(log_redis, "xack", real_xack)
    assert len(list((out / "impressions").glob("part-*.parquet"))) == 2  # written, one unacked

    assert export(log_redis, out, schemas, batch=300) == {"impressions": 400, "clicks": 0}
    for i in range(1000, 1200):  # more traffic, then a third export
        log.impression(
            {"request_id": f"r{i}", "n": i}, Exposure(f"r{i}", i, "champion", "", "m", [i])
        )
    assert log.flush()
    assert export(log_redis, out, schemas, batch=300)["impressions"] == 200
    assert export(log_redis, out, schemas, batch=300)["impressions"] == 0

    table = read_parts(out / "impressions")
    assert sorted(table.column("n").to_pylist()) == list(range(1200))
    assert len(set(table.column("stream_id").to_pylist())) == 1200
    assert log_redis.xlen(stream_key(event_log.IMPRESSIONS)) == 0  # acknowledged: trimmed


def test_a_second_consumer_group_keeps_its_entries_from_the_trim(
    log_redis: Any, tmp_path: Path
) -> None:
    log = EventLog(log_redis, 64, 60, tmp_path / "spool")
    key = stream_key(event_log.IMPRESSIONS)
    log_redis.xgroup_create(key, "monitor", id="0", mkstream=True)
    for i in range(10):
        log.impression(
            {"request_id": f"r{i}", "n": i}, Exposure(f"r{i}", i, "champion", "", "m", [i])
        )
    assert log.flush()
    export(log_redis, tmp_path / "x", {"impressions": SCHEMA}, batch=4)
    assert log_redis.xlen(key) == 10  # "monitor" has read nothing yet


def _exposure(i: int, user: int = 1) -> Exposure:
    return Exposure(f"r{i}", user, "champion", "", "m", [i, i + 1])


def test_records_ship_in_order_and_outlive_a_store_outage(tmp_path: Path) -> None:
    """While the log's Redis is down, answers keep being spooled; back, the spool drains in
    order, and a click taken during the outage is checked and recorded then."""
    outcomes: Counter[str] = Counter()
    server = RedisServer(workdir=tmp_path / "log", appendonly=True).start()
    client = redis.Redis.from_url(server.url, socket_timeout=0.2)
    log = EventLog(
        client, 64, 60, tmp_path / "spool", on_outcome=lambda o, n: outcomes.update({o: n})
    )
    for i in range(200):
        log.impression({"request_id": f"r{i}", "n": i}, _exposure(i))
        if i % 50 == 0:
            log.shadow({"request_id": f"r{i}", "shadow": True})
    assert log.flush()
    assert [e["n"] for e in entries(client, event_log.IMPRESSIONS)] == list(range(200))
    assert len(entries(client, event_log.SHADOW)) == 4 and outcomes["shipped"] == 204
    server.stop()  # the log's Redis goes away
    for i in range(200, 600):
        log.impression({"request_id": f"r{i}", "n": i}, _exposure(i))
    assert log.pending_click("r250", 1, 251)  # taken while the store was away
    assert not log.flush(timeout_s=0.5) and log.writer.backlog_bytes > 0
    assert outcomes["failed"] > 0 and outcomes["dropped"] == 0
    server.start()  # same port, its append-only file replayed
    assert log.flush(timeout_s=10)
    assert [e["n"] for e in entries(client, event_log.IMPRESSIONS)] == list(range(600))
    (click,) = wait_for(lambda: entries(client, event_log.CLICKS))  # pending ones tick each 1 s
    assert click["request_id"] == "r250" and click["position"] == 2 and click["user_id"] == 1
    log.close()
    assert not list((tmp_path / "spool").iterdir())  # shipped and closed: nothing left
    server.stop()


def test_a_full_spool_drops_the_newest_and_counts_them(tmp_path: Path) -> None:
    outcomes: Counter[str] = Counter()
    dead = redis.Redis(port=free_port(), socket_timeout=0.1, socket_connect_timeout=0.1)
    log = EventLog(dead, 64, 60, tmp_path / "spool", spool_max_bytes=20_000,
                   on_outcome=lambda o, n: outcomes.update({o: n}))  # fmt: skip
    kept = [log.impression({"request_id": f"r{i}", "pad": "x" * 100}, _exposure(i))
            for i in range(300)]  # fmt: skip
    first_dropped = kept.index(False)
    assert 50 < first_dropped < 200 and not any(kept[first_dropped:])  # the newest go
    assert outcomes["dropped"] == 300 - first_dropped
    log.writer.close(timeout_s=0.1)


def test_a_killed_workers_spool_is_shipped_by_the_next_writer(tmp_path: Path) -> None:
    """SIGKILL a process right after it spooled 300 answers that its store never got: a
    writer started later on the same folder finds the dead spool and ships every one."""
    server = RedisServer(workdir=tmp_path / "log", appendonly=True).start()
    script = f"""
import os, signal, redis
from mlsys.platform.event_log import EventLog, Exposure
dead = redis.Redis(port={free_port()}, socket_timeout=0.1, socket_connect_timeout=0.1)
log = EventLog(dead, 64, 60, {str(tmp_path / "spool")!r})
for i in range(300):
    exposure = Exposure(f"k{{i}}", 1, "champion", "", "m", [i])
    log.impression({{"request_id": f"k{{i}}", "n": i}}, exposure)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(list((tmp_path / "spool").glob("*.spool"))) == 1
    client = redis.Redis.from_url(server.url)
    heir = EventLog(client, 64, 60, tmp_path / "spool")
    deadline = time.monotonic() + 10
    while len(entries(client, event_log.IMPRESSIONS)) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e["n"] for e in entries(client, event_log.IMPRESSIONS)] == list(range(300))
    assert heir.writer.stats.recovered == 300
    heir.close()
    assert not list((tmp_path / "spool").glob("*.spool"))
    server.stop()


def entries(client: Any, name: str) -> list[dict[str, Any]]:
    return list(event_log.read_stream(client, name))


def wait_for(read: Any, timeout_s: float = 10.0) -> Any:
    """`read()` once it returns something (None-ish until the deadline: then its last value)."""
    deadline = time.monotonic() + timeout_s
    while not (got := read()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def test_a_pending_click_waits_for_an_answer_still_in_another_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an outage, worker A may check a held click before worker B has shipped the
    answer it names: A keeps it in line (about once a second) until B's impression is in,
    then records it; a click on an id no worker ever answered is judged unknown after
    PENDING_CLICK_S of the store saying so, and counted."""
    monkeypatch.setattr(event_log, "PENDING_CLICK_S", 6.0)
    outcomes: Counter[str] = Counter()
    server = RedisServer(workdir=tmp_path / "log", appendonly=True).start()
    try:
        client = redis.Redis.from_url(server.url, socket_timeout=0.5)
        dead = redis.Redis(port=free_port(), socket_timeout=0.1, socket_connect_timeout=0.1)
        a = EventLog(
            client, 64, 60, tmp_path / "a", on_outcome=lambda o, n: outcomes.update({o: n})
        )
        b = EventLog(dead, 64, 60, tmp_path / "b")  # its store is still away
        assert b.impression(
            {"request_id": "late", "n": 1}, Exposure("late", 1, "champion", "", "m", [7, 8])
        )
        assert a.pending_click("late", 1, 8) and a.pending_click("never-answered", 1, 8)
        time.sleep(2.5)  # A has checked both, twice: unknown so far
        assert not entries(client, event_log.CLICKS) and outcomes["click_unknown_request"] == 0
        b._batch = client.register_script(event_log._BATCH_SCRIPT)  # B's store is back
        (click,) = wait_for(lambda: entries(client, event_log.CLICKS))
        assert click["request_id"] == "late" and click["item_id"] == 8
        assert wait_for(lambda: outcomes["click_unknown_request"], timeout_s=12) == 1
        assert outcomes["click_recorded"] == 1
        a.close()
        b.close()
    finally:
        server.stop()


def test_failed_requests_are_counted_per_arm(log_redis: Any, tmp_path: Path) -> None:
    """The canary guardrail's error rate reads these counts."""
    log = EventLog(log_redis, 64, 60, tmp_path / "spool")
    for arm in ("challenger", "challenger", "champion"):
        log.error("exp-1", arm)
    assert event_log.read_errors(log_redis, "exp-1") == {"challenger": 2, "champion": 1}
    assert event_log.read_errors(log_redis, "other") == {}


def test_a_batch_offered_again_lands_once(log_redis: Any, tmp_path: Path) -> None:
    """A batch whose reply was lost (a frozen store executes it on waking, after the writer
    timed out) is offered again, possibly with more lines: each record lands once."""
    import orjson

    from mlsys.platform.log_writer import Batch

    log = EventLog(log_redis, 64, 60, tmp_path / "spool")
    log_redis.delete(stream_key(event_log.TAGS))
    lines = [b"t\t" + orjson.dumps({"request_id": f"t{i}"}) for i in range(5)]
    offsets = [sum(len(line) + 1 for line in lines[:i]) for i in range(6)]

    def batch(n: int) -> Batch:
        return Batch("tags-1-2", lines[:n], offsets[:n], offsets[n])

    log._ship(batch(3))
    log._ship(batch(3))  # the same batch again: nothing new
    log._ship(batch(5))  # again, with two more lines: only those
    assert [e["request_id"] for e in entries(log_redis, event_log.TAGS)] == [
        f"t{i}" for i in range(5)
    ]
    log.close()
