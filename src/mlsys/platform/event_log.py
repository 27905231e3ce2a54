"""The impression and click log: Redis Streams written by the API, exported to parquet once.

Streams (each entry one field, `json`, holding the record):

- `mlsys:log:impressions`: one entry per 200 answer, spooled by the worker's writer
  (`log_writer.py`) before the answer is sent and shipped by it off the request path, in
  batches: one Lua script per batch appends the entries and writes each answer's served hash
  (`mlsys:served:ANSWER_ID`: user, shown items in order, arm, experiment, teams; expires
  after `feedback_window_s`), which is what `POST /feedback` checks a click against. The
  records' `request_id` is the server-minted answer id (`answer_ids.py`); the client's
  `X-Request-ID` is only `correlation_id`;
- `mlsys:log:clicks`: one entry per accepted click, appended by a Lua script that checks the
  answer was given to that user, the item was in it and was not clicked before, and credits
  the arm (for interleaving, the team that put the item there), atomically;
- `mlsys:log:shadow`: the challenger's ranking in shadow mode, computed after the answer has
  gone out (so it never sits on the critical path) and shipped by the same writer, in the
  same scripts; joined to its impression by answer id;
- `mlsys:log:tags`: one entry per 200 `/tag` answer (drift features, model version).

Two writers per worker, each with its own spool file: the records' (ticking every 20 ms) and
the pending clicks' (once a second). An answer waits for one `write` to the spool, never for
the log's Redis, which may be slow, frozen or down: the writer retries in order and ships
what the spool holds once the store answers again; a worker killed with -9 leaves its spool
to the next worker of the same log, which ships it. Shipping is exactly once: each batch's
script also keeps, per spool, the byte offset shipped so far (`mlsys:log:shipped:SPOOL`) and
skips records below it, so a batch whose reply was lost (a frozen store executing it on
waking) and is offered again lands once.

A click that cannot be checked now (the store is unreachable, or its answer may still be in
a spool) is accepted as pending: spooled on the clicks' writer and checked once a second
until recorded, refused (counted per outcome), or, when the store has said "no such answer"
for PENDING_CLICK_S, counted as `click_unknown_request`.

Each stream is capped in bytes (`$MLSYS_LOG_STREAM_MB` per stream, turned into an `XADD MAXLEN ~`
by the measured bytes per entry) and the log's Redis has a `maxmemory`, so the log's memory
is bounded even if nobody exports; the export trims what every consumer group has
acknowledged.

The log's Redis runs with an append-only file (`RedisServer(appendonly=True)`, fsync every
second): see docs/experiments-report.md and docs/reliability.md for what a crash loses.

`log_export.py` drains the streams into parquet, exactly once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from mlsys.files import JsonOut
from mlsys.platform.log_writer import Batch, LogWriter
from mlsys.platform.redis_client import RedisClient

if TYPE_CHECKING:
    pass

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
SHIPPED_PREFIX = "mlsys:log:shipped:"  # per spool: the end offset of its last applied batch
ERRORS_PREFIX = "mlsys:errors:"  # hash per experiment: arm -> failed requests

# A batch of one spool, applied exactly once. KEYS: impressions, shadow and tags streams, the
# spool's marker (the end offset of its last applied batch), then one served hash per
# impression. ARGV: the three streams' caps, window s, impressions n, shadows n, the batch's end
# offset, then per impression: its offset in the spool, record, arm, experiment, teams, user,
# model, items as ",1,2,3," (positions are the order); then offset and record per shadow, then
# per tag record. A record below the marker landed before (a batch whose reply was lost).
_BATCH_SCRIPT = """
local window, n, shadows, batch_end = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]),
  tonumber(ARGV[7])
local done = tonumber(redis.call('GET', KEYS[4]) or '-1')
if done >= batch_end then return 0 end
for i = 0, n - 1 do
  local a, served = 8 + i * 8, KEYS[5 + i]
  if tonumber(ARGV[a]) >= done then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'json', ARGV[a + 1])
    redis.call('DEL', served)
    redis.call('HSET', served, 'arm', ARGV[a + 2], 'experiment', ARGV[a + 3], 'teams',
      ARGV[a + 4], 'user_id', ARGV[a + 5], 'model', ARGV[a + 6], 'items', ARGV[a + 7])
    redis.call('EXPIRE', served, window)
  end
end
local first = 8 + n * 8
for i = first, first + 2 * shadows - 1, 2 do
  if tonumber(ARGV[i]) >= done then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'json', ARGV[i + 1])
  end
end
for i = first + 2 * shadows, #ARGV, 2 do
  if tonumber(ARGV[i]) >= done then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'json', ARGV[i + 1])
  end
end
redis.call('SET', KEYS[4], batch_end, 'EX', 604800)
return 1
"""

# KEYS: served hash, clicks stream. ARGV: answer id, item id, time ms, stream cap, user id.
# Returns {position, credited arm}, or {-1} unknown answer, {-2} item not in it,
# {-3} duplicate, {-4} another user's answer.
_CLICK_SCRIPT = """
local meta = redis.call('HMGET', KEYS[1], 'items', 'arm', 'experiment', 'teams', 'user_id',
  'model')
if not meta[1] then return {-1} end
if meta[5] ~= ARGV[5] then return {-4} end
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

# A pending click whose answer the store does not know is tried again until the store has said
# so for this long: every live worker's spool ships within a second of the store's return, a
# dead worker's within log_writer.ORPHAN_SCAN_S.
PENDING_CLICK_S = 30.0
PENDING_TICK_S = 1.0

# What one entry takes in Redis, measured (an impression with its scored sample ~1,050 B):
# a stream's cap in entries is its share of bytes over this.
ENTRY_BYTES = {"impressions": 1100, "clicks": 300, "shadow": 700, "tags": 500}


def stream_cap(name: str, stream_mb: int) -> int:
    """Entries a stream keeps (XADD MAXLEN ~) so that it holds about `stream_mb` MiB."""
    return max(1000, stream_mb * (1 << 20) // ENTRY_BYTES[name])


CLICK_OUTCOMES = {-1: "unknown_request", -2: "not_in_response", -3: "duplicate", -4: "wrong_user"}


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
    """The API's side of the log: impressions, shadow rankings and tag records through this
    worker's spool (`log_writer.py`), shipped in batches; clicks checked against the store at
    once while it answers, else spooled as pending and checked when it is back.

    Pending clicks have a spool and writer of their own, ticking once a second: a click whose
    answer the store does not know yet goes back in line there, so it is tried again about
    once a second (for PENDING_CLICK_S) without holding up the impressions."""

    def __init__(
        self,
        client: RedisClient,
        stream_mb: int,
        feedback_window_s: int,
        spool_dir: str | Path,
        *,
        name: str = "log",
        spool_max_bytes: int = 1 << 30,
        linger_s: float = 0.02,
        on_outcome: Callable[[str, int], None] | None = None,
        on_backlog: Callable[[int], None] | None = None,
    ) -> None:
        self.client = client
        self.caps = {s: stream_cap(s, stream_mb) for s in ENTRY_BYTES}
        self.feedback_window_s = feedback_window_s
        self.linger_s = linger_s
        self._click = client.register_script(_CLICK_SCRIPT)
        self._batch = client.register_script(_BATCH_SCRIPT)
        self._on_outcome = on_outcome or (lambda outcome, n: None)
        report = on_backlog or (lambda backlog_bytes: None)
        self.writer = LogWriter(
            self._ship, spool_dir, name=name, max_bytes=spool_max_bytes, linger_s=linger_s,
            on_outcome=self._on_outcome, on_backlog=lambda b: report(b + self.clicks_backlog),
        )  # fmt: skip
        self.clicks = LogWriter(
            self._ship, spool_dir, name=f"{name}-clicks", max_bytes=spool_max_bytes,
            linger_s=PENDING_TICK_S, on_outcome=self._on_outcome,
        )  # fmt: skip

    @property
    def clicks_backlog(self) -> int:
        clicks = getattr(self, "clicks", None)  # the records' writer may tick before it exists
        return 0 if clicks is None else clicks.backlog_bytes

    def impression(self, record: JsonOut, exposure: Exposure) -> bool:
        """Spool the answer's impression and served hash; False when the spool is full and
        it was dropped (counted)."""
        e = exposure
        items = "," + ",".join(map(str, e.items)) + ","
        meta = orjson.dumps([e.arm, e.experiment, e.teams, e.user_id, e.model, items,
                             e.request_id])  # fmt: skip
        return self._put(self.writer, b"i\t" + meta + b"\t" + orjson.dumps(record))

    def shadow(self, record: JsonOut) -> bool:
        """Spool a challenger's shadow ranking."""
        return self._put(self.writer, b"s\t" + orjson.dumps(record))

    def tag(self, record: JsonOut) -> bool:
        """Spool a tagger answer's record (its drift features)."""
        return self._put(self.writer, b"t\t" + orjson.dumps(record))

    def pending_click(self, answer_id: str, user_id: int, item_id: int) -> bool:
        """A click that could not be checked now (the store is unreachable): spooled, and
        checked and recorded by the writer once the store is back."""
        click = [answer_id, user_id, item_id, int(time.time() * 1000)]
        return self._put(self.clicks, b"c\t" + orjson.dumps(click))

    def _put(self, writer: LogWriter, line: bytes) -> bool:
        """One spool line: the kind, a tab, then JSON (orjson escapes tabs and newlines in
        strings), so shipping passes a record's bytes on without parsing them again."""
        try:
            return writer.put(line)
        except OSError as exc:  # the spool's disk: counted like a full spool, never raised
            log.error("spool write failed", extra={"fields": {"error": str(exc)}})
            self._on_outcome("dropped", 1)
            return False

    def flush(self, timeout_s: float = 1.0) -> bool:
        """Wait until what was spooled is in the log (True) or `timeout_s` passes."""
        return self.writer.flush(timeout_s)

    def close(self, timeout_s: float = 2.0) -> None:
        """Ship what is left; clicks still waiting for their answer stay in their spool,
        for the next worker of this log."""
        self.writer.close(timeout_s)
        self.clicks.close(min(timeout_s, 2 * PENDING_TICK_S))

    def _ship(self, batch: Batch) -> None:
        """One script for the batch's impressions, shadows and tags; the pending clicks
        through the click script, one by one, after them (their impressions may be in this
        very batch)."""
        served: list[str] = []
        impressions: list[object] = []
        shadows: list[object] = []
        tags: list[object] = []
        clicks: list[list[object]] = []
        for offset, line in zip(batch.offsets, batch.lines, strict=True):
            kind, _, rest = line.partition(b"\t")
            if kind == b"i":
                meta, _, record = rest.partition(b"\t")
                arm, experiment, teams, user_id, model, items, answer_id = orjson.loads(meta)
                served.append(SERVED_PREFIX + answer_id)
                impressions += [offset, record, arm, experiment, teams, user_id, model, items]
            elif kind == b"s":
                shadows += [offset, rest]
            elif kind == b"t":
                tags += [offset, rest]
            elif kind == b"c":
                clicks.append(orjson.loads(rest))
        if served or shadows or tags:
            marker = SHIPPED_PREFIX + batch.spool
            self._batch(
                keys=[stream_key(IMPRESSIONS), stream_key(SHADOW), stream_key(TAGS), marker,
                      *served],
                args=[self.caps[IMPRESSIONS], self.caps[SHADOW], self.caps[TAGS],
                      self.feedback_window_s, len(served), len(shadows) // 2, batch.end,
                      *impressions, *shadows, *tags],
            )  # fmt: skip
        for answer_id, user_id, item_id, ts_ms, *unknown_since in clicks:
            outcome = self.click(str(answer_id), int(str(user_id)), int(str(item_id)),
                                 ts_ms=int(str(ts_ms)))  # fmt: skip
            if outcome == "unknown_request":
                # Its impression may still be in another worker's spool, shipping now that
                # the store is back: in line again until the store has said "unknown" for
                # PENDING_CLICK_S (measured from its first answer, not from the click).
                now_ms = int(time.time() * 1000)
                since = int(str(unknown_since[0])) if unknown_since else now_ms
                if now_ms - since < PENDING_CLICK_S * 1000:
                    again = [answer_id, user_id, item_id, ts_ms, since]
                    self._put(self.clicks, b"c\t" + orjson.dumps(again))
                    continue
            if isinstance(outcome, str):
                self._on_outcome(f"click_{outcome}", 1)
            else:
                self._on_outcome("click_recorded", 1)

    def click(
        self, answer_id: str, user_id: int, item_id: int, *, ts_ms: int | None = None
    ) -> Click | str:
        """The recorded click, or why it was refused (a CLICK_OUTCOMES value)."""
        result = self._click(
            keys=[SERVED_PREFIX + answer_id, stream_key(CLICKS)],
            args=[answer_id, item_id, int(time.time() * 1000) if ts_ms is None else ts_ms,
                  self.caps[CLICKS], user_id],
        )  # fmt: skip
        position = int(result[0])
        if position < 0:
            return CLICK_OUTCOMES[position]
        return Click(position, as_text(result[1]))

    def error(self, experiment: str, arm: str) -> None:
        """A request of an experiment's arm that failed (guardrail: error rate per arm)."""
        self.client.hincrby(ERRORS_PREFIX + experiment, arm, 1)


def read_errors(client: RedisClient, experiment: str) -> dict[str, int]:
    raw = client.hgetall(ERRORS_PREFIX + experiment)
    return {as_text(k): int(v) for k, v in raw.items()}


def read_stream(
    client: RedisClient, name: str, count: int = 10_000, after: str | None = None
) -> Iterator[LogRecord]:
    """Every record still in a stream (after entry id `after`, if given), oldest first,
    without a consumer group (the reports and the monitor)."""
    start = "-" if after is None else "(" + after
    while True:
        entries = client.xrange(stream_key(name), min=start, count=count)
        for entry_id, fields in entries:
            yield decode_entry(as_text(entry_id), fields)
        if len(entries) < count:
            return
        start = "(" + as_text(entries[-1][0])


def decode_entry(entry_id: str, fields: Mapping[bytes | str, bytes | str]) -> LogRecord:
    """An entry's record, with its stream id (clients may or may not decode field names)."""
    record: LogRecord = json.loads(fields[b"json"] if b"json" in fields else fields["json"])
    record["stream_id"] = entry_id
    return record


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id ("ms-seq") as a tuple that sorts in stream order."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
