"""The log's streams into parquet parts, exactly once (`mlsys log export`).

`export` reads each stream through a consumer group and writes parquet parts named by their
last entry id, then acknowledges. Exactly once across restarts: a part is written to a temporary
name and renamed, and only then acknowledged; a restarted export first re-reads its pending
entries and acknowledges, without writing, those at or below the highest id already in a part.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mlsys.platform.event_log import as_text, decode_entry, entry_key, stream_key
from mlsys.platform.redis_client import RedisClient

if TYPE_CHECKING:
    import pyarrow as pa

EXPORT_GROUP = "export"
EXPORT_CONSUMER = "exporter"
PART_GLOB = "part-*.parquet"


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
                ids = [as_text(entry_id) for entry_id, _ in entries]
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

    records = [decode_entry(entry_id, fields) for entry_id, fields in entries]
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
        name = as_text(group["name"])
        pending = client.xpending(key, name)
        if pending["pending"]:
            keep.append(entry_key(as_text(pending["min"])))
        else:
            ms, seq = entry_key(as_text(group["last-delivered-id"]))
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
