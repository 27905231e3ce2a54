"""The impression and click log against a real Redis: the feedback check, and an export that
writes every entry exactly once across a crash between writing a part and acknowledging it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis

from mlsys.platform import event_log
from mlsys.platform.event_log import Click, EventLog, Exposure, export, read_parts, stream_key
from mlsys.platform.redis_server import RedisServer

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


def test_a_click_counts_once_and_only_for_a_shown_item(log_redis: Any) -> None:
    log = EventLog(log_redis, max_len=1000, feedback_window_s=60)
    log.impression(
        {"request_id": "r1", "n": 1}, Exposure("r1", 7, "challenger", "e", "m/2", [10, 11, 12])
    )
    assert log.flush()  # the writer ships off the caller's path
    assert log.click("r1", 11) == Click(2, "challenger")
    assert log.click("r1", 11) == "duplicate"
    assert log.click("r1", 99) == "not_in_response"
    assert log.click("nope", 11) == "unknown_request"
    assert log_redis.ttl(event_log.SERVED_PREFIX + "r1") > 0  # the served hash expires
    # interleaving: the click is credited to the team that placed the item
    served = Exposure("r2", 7, "interleaved", "e", "m/1,m/2", [5, 6, 7], teams="bab")
    log.impression({"request_id": "r2", "n": 2}, served)
    assert log.flush()
    assert log.click("r2", 5) == Click(1, "challenger")
    assert log.click("r2", 6) == Click(2, "champion")
    assert log_redis.xlen(stream_key(event_log.CLICKS)) == 3
    assert log_redis.xlen(stream_key(event_log.IMPRESSIONS)) == 2


def test_export_writes_each_entry_once_across_a_crash(
    log_redis: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EventLog(log_redis, max_len=100_000, feedback_window_s=60)
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
    log = EventLog(log_redis, max_len=100_000, feedback_window_s=60)
    key = stream_key(event_log.IMPRESSIONS)
    log_redis.xgroup_create(key, "monitor", id="0", mkstream=True)
    for i in range(10):
        log.impression(
            {"request_id": f"r{i}", "n": i}, Exposure(f"r{i}", i, "champion", "", "m", [i])
        )
    assert log.flush()
    export(log_redis, tmp_path / "x", {"impressions": SCHEMA}, batch=4)
    assert log_redis.xlen(key) == 10  # "monitor" has read nothing yet


def test_records_ship_in_order_in_batches_and_survive_a_store_outage(tmp_path: Path) -> None:
    """Impressions and shadows go through the writer: in order, several per round trip under
    a burst; while the log's Redis is down nothing is lost (the writer retries in order), and
    past its buffer the newest are dropped and counted."""
    outcomes: dict[str, int] = {}
    server = RedisServer(workdir=tmp_path / "log", appendonly=True).start()
    client = redis.Redis.from_url(server.url, socket_timeout=0.2)

    def count(outcome: str, n: int) -> None:
        outcomes[outcome] = outcomes.get(outcome, 0) + n

    log = EventLog(client, max_len=100_000, feedback_window_s=60, max_records=300, on_ship=count)
    for i in range(200):
        log.impression(
            {"request_id": f"r{i}", "n": i}, Exposure(f"r{i}", 1, "champion", "", "m", [i])
        )
        if i % 50 == 0:
            log.shadow({"request_id": f"r{i}", "shadow": True})
    assert log.flush()
    entries = log_entries(client, event_log.IMPRESSIONS)
    assert [e["n"] for e in entries] == list(range(200))
    assert len(log_entries(client, event_log.SHADOW)) == 4
    assert outcomes["shipped"] == 204 and log.writer.stats.shipped == 204
    server.stop()  # the log's Redis goes away: answers keep being logged into the buffer
    for i in range(200, 600):
        log.impression(
            {"request_id": f"r{i}", "n": i}, Exposure(f"r{i}", 1, "champion", "", "m", [i])
        )
    assert not log.flush(timeout_s=0.5) and log.writer.buffered == 300
    assert outcomes["dropped"] == 100 and outcomes["failed"] > 0  # the newest 100 went
    server.start()  # same port, its append-only file replayed
    assert log.flush(timeout_s=10)  # back: the buffer drains, in order
    assert [e["n"] for e in log_entries(client, event_log.IMPRESSIONS)] == list(range(500))
    log.close()
    server.stop()


def log_entries(client: Any, name: str) -> list[dict[str, Any]]:
    return list(event_log.read_stream(client, name))


def test_failed_requests_are_counted_per_arm(log_redis: Any) -> None:
    """The canary guardrail's error rate reads these counts."""
    log = EventLog(log_redis, max_len=1000, feedback_window_s=60)
    for arm in ("challenger", "challenger", "champion"):
        log.error("exp-1", arm)
    assert event_log.read_errors(log_redis, "exp-1") == {"challenger": 2, "champion": 1}
    assert event_log.read_errors(log_redis, "other") == {}
