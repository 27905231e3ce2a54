"""The impression and click log: Redis Streams written by the API, exported to parquet once.

Streams (each entry one field, `json`, holding the record):

- `mlsys:log:impressions`: one entry per 200 answer, appended *before* the answer is sent, by
  one Lua script that also writes the request's served hash (`mlsys:served:REQUEST_ID`: the
  shown items in order, arm, experiment, teams; expires after `feedback_window_s`), which is
  what `POST /feedback` checks a click against;
- `mlsys:log:clicks`: one entry per accepted click, appended by a Lua script that checks the
  item was in that response and was not clicked before, and credits the arm (for interleaving,
  the team that put the item there), atomically;
- `mlsys:log:shadow`: the challenger's ranking in shadow mode, computed after the answer has
  gone out (so it never sits on the critical path), buffered, and written with the next
  impression's script (or on its own within a second); joined to its impression by request
  id.

Both sides of the "log, then answer" order were considered: logging after the answer loses the
impressions of any request whose worker dies in between; logging first can at worst leave one
impression whose answer never arrived, for a request the client saw fail (the measurement in
docs/experiments-report.md counts both). Each stream is capped (`XADD MAXLEN ~`) so the log's
memory is bounded even if nobody exports; the export trims what every consumer group has
acknowledged.

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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsys.files import JsonOut
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

# KEYS: impressions stream, served hash, shadow stream. ARGV: record, stream cap, window s, arm,
# experiment, teams, user, model, items as ",1,2,3," (positions are the order), then any
# buffered shadow records.
_IMPRESSION_SCRIPT = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'json', ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'arm', ARGV[4], 'experiment', ARGV[5], 'teams', ARGV[6],
  'user_id', ARGV[7], 'model', ARGV[8], 'items', ARGV[9])
redis.call('EXPIRE', KEYS[2], ARGV[3])
for i = 10, #ARGV do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'json', ARGV[i])
end
"""
SHADOW_FLUSH_S = 1.0
SHADOW_FLUSH_COUNT = 64

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
    """The API's side of the log: append impressions, clicks, shadow rankings and errors."""

    def __init__(self, client: RedisClient, max_len: int, feedback_window_s: int) -> None:
        self.client = client
        self.max_len = max_len
        self.feedback_window_s = feedback_window_s
        self._click = client.register_script(_CLICK_SCRIPT)
        self._impression = client.register_script(_IMPRESSION_SCRIPT)
        self._shadows: list[str] = []  # shadow records waiting for a ride (see `shadow`)
        self._shadows_since = 0.0

    def impression(self, record: JsonOut, exposure: Exposure) -> None:
        """One round trip, one script: the impression entry, the served hash (what was shown,
        as one ",id,id," string, and its expiry), and the shadow records waiting. A script,
        not a MULTI pipeline: the client encodes and sends one command instead of five, on the
        request's path."""
        items = "," + ",".join(map(str, exposure.items)) + ","
        shadows, self._shadows = self._shadows, []
        self._impression(
            keys=[stream_key(IMPRESSIONS), SERVED_PREFIX + exposure.request_id, stream_key(SHADOW)],
            args=[_dumps(record), self.max_len, self.feedback_window_s, exposure.arm,
                  exposure.experiment, exposure.teams, exposure.user_id, exposure.model, items,
                  *shadows],
        )  # fmt: skip

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

    def shadow(self, record: JsonOut) -> bool:
        """Buffer a shadow record: it rides along with the next impression (no round trip of
        its own), or goes on its own once it has waited SHADOW_FLUSH_S or SHADOW_FLUSH_COUNT
        are waiting. A worker that dies loses what it buffered (at most a second of shadow
        records, never an impression). True when records are left waiting: the caller then
        schedules `flush_shadows` in SHADOW_FLUSH_S."""
        if not self._shadows:
            self._shadows_since = time.monotonic()
        self._shadows.append(_dumps(record))
        if (
            len(self._shadows) >= SHADOW_FLUSH_COUNT
            or time.monotonic() - self._shadows_since >= SHADOW_FLUSH_S
        ):
            self.flush_shadows()
        return bool(self._shadows)

    def flush_shadows(self) -> None:
        shadows, self._shadows = self._shadows, []
        if shadows:
            pipe = self.client.pipeline(transaction=False)
            for record in shadows:
                pipe.xadd(stream_key(SHADOW), {"json": record}, maxlen=self.max_len)
            pipe.execute()

    def error(self, experiment: str, arm: str) -> None:
        """A request of an experiment's arm that failed (guardrail: error rate per arm)."""
        self.client.hincrby(ERRORS_PREFIX + experiment, arm, 1)


def append(client: RedisClient, name: str, record: JsonOut, max_len: int) -> None:
    """One record on a stream of its own, capped near `max_len` (the tagger's answers: no
    feedback and no experiment, so none of the impression script's bookkeeping)."""
    client.xadd(stream_key(name), {"json": _dumps(record)}, maxlen=max_len, approximate=True)


def _dumps(record: JsonOut) -> str:
    return json.dumps(record, separators=(",", ":"))


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
