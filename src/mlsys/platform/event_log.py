"""The impression and click log: Redis Streams written by the API, exported to parquet once.

Streams (each entry one field, `json`, holding the record):

- `mlsys:log:impressions`: one entry per 200 answer, handed to the worker's writer
  (`log_writer.py`) before the answer is sent and shipped by it off the request path, in
  batches: one Lua script per batch appends the entries and writes each request's served hash
  (`mlsys:served:REQUEST_ID`: the shown items in order, arm, experiment, teams; expires after
  `feedback_window_s`), which is what `POST /feedback` checks a click against;
- `mlsys:log:clicks`: one entry per accepted click, appended by a Lua script that checks the
  item was in that response and was not clicked before, and credits the arm (for interleaving,
  the team that put the item there), atomically;
- `mlsys:log:shadow`: the challenger's ranking in shadow mode, computed after the answer has
  gone out (so it never sits on the critical path) and shipped by the same writer, in the
  same scripts; joined to its impression by request id.

The writer is what keeps the log off the request path: an answer waits for a deque append,
not for the log's Redis (which may be slow, frozen or down: the writer retries, in order,
while its buffer holds). Its loss bound is what it holds when its worker dies (see
`log_writer.py`). A click that arrives before its answer's impression was shipped (within
milliseconds of the answer) is retried by the API once the writer has had time to ship.

Each stream is capped (`XADD MAXLEN ~`) so the log's memory is bounded even if nobody
exports; the export trims what every consumer group has acknowledged.

The log's Redis runs with an append-only file (`RedisServer(appendonly=True)`): see
docs/experiments-report.md for what a crash loses.

`export` reads each stream through a consumer group and writes parquet parts named by their
last entry id, then acknowledges. Exactly once across restarts: a part is written to a temporary
name and renamed, and only then acknowledged; a restarted export first re-reads its pending
entries and acknowledges, without writing, those at or below the highest id already in a part.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from mlsys.files import JsonOut
from mlsys.platform.log_writer import LogWriter
from mlsys.platform.redis_client import RedisClient

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("mlsys.event_log")

# The boundary of JSON in: one decoded log entry, as the API wrote it (its fields per stream are
# the parquet schemas of `recommender/serving/impressions.py`) or as a parquet row reads back.
LogRecord = dict[str, Any]
# pyarrow ships no types: its tables and schemas are untyped to mypy (named here for readers).

STREAM_PREFIX = "mlsys:log:"
IMPRESSIONS = "impressions"
CLICKS = "clicks"
SHADOW = "shadow"
TAGS = "tags"  # the garment tagger's answers, for its drift monitor
SERVED_PREFIX = "mlsys:served:"
ERRORS_PREFIX = "mlsys:errors:"  # hash per experiment: arm -> failed requests
EXPORT_GROUP = "export"
EXPORT_CONSUMER = "exporter"
PART_GLOB = "part-*.parquet"

# A batch. KEYS: impressions stream, shadow stream, then one served hash per impression.
# ARGV: stream cap, window s, impressions n, then per impression: record, arm, experiment,
# teams, user, model, items as ",1,2,3," (positions are the order); then shadow records.
_BATCH_SCRIPT = """
local cap, window, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 0, n - 1 do
  local a, served = 4 + i * 7, KEYS[3 + i]
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', cap, '*', 'json', ARGV[a])
  redis.call('DEL', served)
  redis.call('HSET', served, 'arm', ARGV[a + 1], 'experiment', ARGV[a + 2], 'teams',
    ARGV[a + 3], 'user_id', ARGV[a + 4], 'model', ARGV[a + 5], 'items', ARGV[a + 6])
  redis.call('EXPIRE', served, window)
end
for i = 4 + n * 7, #ARGV do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', cap, '*', 'json', ARGV[i])
end
"""

# KEYS: served hash, clicks stream. ARGV: request id, item id, time ms, stream cap.
# Returns {position, credited arm}, or {-1} unknown request, {-2} item not in it, {-3} duplicate.
_CLICK_SCRIPT = """
local meta = redis.call('HMGET', KEYS[1], 'items', 'arm', 'experiment', 'teams', 'user_id',
  'model')
if not meta[1] then return {-1} end
local at = string.find(meta[1], ',' .. ARGV[2] .. ',', 1, true)
if not at then return {-2} end
local _, pos = string.gsub(string.sub(meta[1], 1, at), ',', '')
if redis.call('HSETNX', KEYS[1], 'c:' .. ARGV[2], '1') == 0 then return {-3} end
local credited = meta[2]
local teams = meta[4]
if teams and string.len(teams) > 0 then
  if string.sub(teams, pos, pos) == 'a' then credited = 'champion' else credited = 'challenger' end
end
local record = cjson.encode({request_id = ARGV[1], item_id = tonumber(ARGV[2]),
  position = pos, arm = meta[2], credited = credited, experiment = meta[3],
  user_id = tonumber(meta[5]), model = meta[6], ts_ms = tonumber(ARGV[3])})
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'json', record)
return {pos, credited}
"""

CLICK_OUTCOMES = {-1: "unknown_request", -2: "not_in_response", -3: "duplicate"}


def stream_key(name: str) -> str:
    return STREAM_PREFIX + name


@dataclass(frozen=True)
class Exposure:
    """What a response showed, for the feedback check: items in order (position = index + 1),
    and for interleaving which team put each there ("a": champion, "b": challenger)."""

    request_id: str
    user_id: int
    arm: str
    experiment: str
    model: str
    items: Sequence[int]
    teams: str = ""


@dataclass(frozen=True)
class Click:
    position: int  # 1-based, in the answer
    credited: str  # the arm the click counts for (interleaving: the team that placed it)


class EventLog:
    """The API's side of the log: impressions and shadow rankings through the writer, clicks
    and errors directly (their caller needs the answer)."""

    def __init__(
        self,
        client: RedisClient,
        max_len: int,
        feedback_window_s: int,
        *,
        max_records: int = 100_000,
        linger_s: float = 0.02,
        on_ship: Callable[[str, int], None] | None = None,
    ) -> None:
        self.client = client
        self.max_len = max_len
        self.feedback_window_s = feedback_window_s
        self.linger_s = linger_s
        self._click = client.register_script(_CLICK_SCRIPT)
        self._batch = client.register_script(_BATCH_SCRIPT)
        self._on_ship = on_ship or (lambda outcome, n: None)
        self.writer: LogWriter[tuple[JsonOut, Exposure | None]] = LogWriter(
            self._ship, name="impressions", max_records=max_records, linger_s=linger_s
        )

    def impression(self, record: JsonOut, exposure: Exposure) -> bool:
        """Queue the answer's impression and served hash; False when the writer's buffer is
        full and it was dropped (counted)."""
        return self._put(record, exposure)

    def shadow(self, record: JsonOut) -> bool:
        """Queue a challenger's shadow ranking."""
        return self._put(record, None)

    def _put(self, record: JsonOut, exposure: Exposure | None) -> bool:
        kept = self.writer.put((record, exposure))
        if not kept:
            self._on_ship("dropped", 1)
        return kept

    def flush(self, timeout_s: float = 1.0) -> bool:
        """Wait until what was queued is in the log (True) or `timeout_s` passes."""
        return self.writer.flush(timeout_s)

    def close(self, timeout_s: float = 2.0) -> None:
        self.writer.close(timeout_s)

    def _ship(self, batch: list[tuple[JsonOut, Exposure | None]]) -> None:
        """One script for the whole batch: one round trip, one command for Redis to run."""
        served, args, shadows = [], [], []
        for record, exposure in batch:
            if exposure is None:
                shadows.append(_dumps(record))
                continue
            served.append(SERVED_PREFIX + exposure.request_id)
            items = "," + ",".join(map(str, exposure.items)) + ","
            args += [_dumps(record), exposure.arm, exposure.experiment, exposure.teams,
                     exposure.user_id, exposure.model, items]  # fmt: skip
        try:
            self._batch(
                keys=[stream_key(IMPRESSIONS), stream_key(SHADOW), *served],
                args=[self.max_len, self.feedback_window_s, len(served), *args, *shadows],
            )
        except Exception:
            self._on_ship("failed", len(batch))
            raise
        self._on_ship("shipped", len(batch))

    def click(self, request_id: str, item_id: int) -> Click | str:
        """The recorded click, or why it was refused (a CLICK_OUTCOMES value)."""
        result = self._click(
            keys=[SERVED_PREFIX + request_id, stream_key(CLICKS)],
            args=[request_id, item_id, int(time.time() * 1000), self.max_len],
        )
        position = int(result[0])
        if position < 0:
            return CLICK_OUTCOMES[position]
        return Click(position, _text(result[1]))

    def error(self, experiment: str, arm: str) -> None:
        """A request of an experiment's arm that failed (guardrail: error rate per arm)."""
        self.client.hincrby(ERRORS_PREFIX + experiment, arm, 1)


def append(client: RedisClient, name: str, record: JsonOut, max_len: int) -> None:
    """One record on a stream of its own, capped near `max_len` (the tagger's answers: no
    feedback and no experiment, so none of the impression script's bookkeeping)."""
    client.xadd(stream_key(name), {"json": _dumps(record)}, maxlen=max_len, approximate=True)


def _dumps(record: JsonOut) -> bytes:
    return orjson.dumps(record)


def read_errors(client: RedisClient, experiment: str) -> dict[str, int]:
    raw = client.hgetall(ERRORS_PREFIX + experiment)
    return {_text(k): int(v) for k, v in raw.items()}


def read_stream(
    client: RedisClient, name: str, count: int = 10_000, after: str | None = None
) -> Iterator[LogRecord]:
    """Every record still in a stream (after entry id `after`, if given), oldest first,
    without a consumer group (the reports and the monitor)."""
    start = "-" if after is None else "(" + after
    while True:
        entries = client.xrange(stream_key(name), min=start, count=count)
        for entry_id, fields in entries:
            yield _record(_text(entry_id), fields)
        if len(entries) < count:
            return
        start = "(" + _text(entries[-1][0])


# ---- export -------------------------------------------------------------------------------


def _record(entry_id: str, fields: Mapping[bytes | str, bytes | str]) -> LogRecord:
    """An entry's record, with its stream id (clients may or may not decode field names)."""
    record: LogRecord = json.loads(fields[b"json"] if b"json" in fields else fields["json"])
    record["stream_id"] = entry_id
    return record


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id ("ms-seq") as a tuple that sorts in stream order."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _part_name(first: str, last: str) -> str:
    """Zero-padded so that file names sort in entry order."""
    (a, b), (c, d) = entry_key(first), entry_key(last)
    return f"part-{a:015d}-{b:06d}-{c:015d}-{d:06d}.parquet"


def watermark(folder: Path) -> tuple[int, int]:
    """The highest entry id already written to a part in `folder` ((0, 0) when none)."""
    best = (0, 0)
    for part in folder.glob(PART_GLOB):
        fields = part.stem.split("-")
        best = max(best, (int(fields[3]), int(fields[4])))
    return best


def export(
    client: RedisClient,
    out_dir: str | Path,
    schemas: Mapping[str, pa.Schema],
    batch: int = 50_000,
    trim: bool = True,
) -> dict[str, int]:
    """Drain each stream in `schemas` (name -> pyarrow schema) into OUT_DIR/NAME/part-*.parquet
    through the `export` consumer group; returns the rows written per stream."""
    import redis

    written: dict[str, int] = {}
    for name, schema in schemas.items():
        key = stream_key(name)
        folder = Path(out_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".tmp-*"):
            stale.unlink()  # a part interrupted before its rename: its entries are pending
        try:
            client.xgroup_create(key, EXPORT_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        done = watermark(folder)
        rows = 0
        for start in ("0", ">"):  # first what this exporter read but did not acknowledge
            while True:
                reply = client.xreadgroup(EXPORT_GROUP, EXPORT_CONSUMER, {key: start}, count=batch)
                entries = reply[0][1] if reply else []
                if not entries:
                    break
                ids = [_text(entry_id) for entry_id, _ in entries]
                fresh = [(i, f) for i, (_, f) in zip(ids, entries, strict=True)
                         if entry_key(i) > done]  # fmt: skip
                if fresh:
                    _write_part(folder, fresh, schema)
                    rows += len(fresh)
                    done = entry_key(fresh[-1][0])
                client.xack(key, EXPORT_GROUP, *ids)
                if len(entries) < batch:  # caught up (under load: up to about now)
                    break
        if trim:
            _trim_acknowledged(client, key)
        written[name] = rows
    return written


def _write_part(
    folder: Path, entries: list[tuple[str, Mapping[bytes | str, bytes | str]]], schema: pa.Schema
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [_record(entry_id, fields) for entry_id, fields in entries]
    table = pa.Table.from_pylist(records, schema=schema)
    final = folder / _part_name(entries[0][0], entries[-1][0])
    tmp = folder / f".tmp-{final.name}"
    pq.write_table(table, tmp)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _trim_acknowledged(client: RedisClient, key: str) -> None:
    """Drop the entries every consumer group has acknowledged: the oldest entry still pending
    in a group, or after its last delivered one, is the new start."""
    groups = client.xinfo_groups(key)
    keep: list[tuple[int, int]] = []
    for group in groups:
        name = _text(group["name"])
        pending = client.xpending(key, name)
        if pending["pending"]:
            keep.append(entry_key(_text(pending["min"])))
        else:
            ms, seq = entry_key(_text(group["last-delivered-id"]))
            keep.append((ms, seq + 1))
    if keep:
        ms, seq = min(keep)
        client.xtrim(key, minid=f"{ms}-{seq}", approximate=False)


def read_parts(folder: str | Path) -> pa.Table | None:
    """An exported stream folder as one pyarrow table (empty folder: None)."""
    import pyarrow.parquet as pq

    parts = sorted(Path(folder).glob(PART_GLOB))
    if not parts:
        return None
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(p) for p in parts])
