"""Ship log records off the request path, through a spool file that outlives the store and
the worker.

A request appends its record to this worker's spool (`put`: one `write` of one line to a file
opened unbuffered, under a lock; no network) and answers. Once `write` returns, the line is
in the operating system's page cache: a worker killed with SIGKILL loses nothing it answered
(a power loss can lose what the kernel had not written back yet, up to Linux's 30 s dirty
expiry by default; no fsync per record). Every `linger_s` one thread reads what was appended
since the last shipped offset, hands up to `max_batch` lines to `ship` (one round trip, e.g.
one Redis script), and only then advances the offset, which it keeps in a file beside the
spool. When `ship` raises (the log's Redis is down or frozen), nothing advances: the same
lines are offered again, in order, with a growing pause, for as long as the outage lasts. A
batch can have landed although `ship` raised (its reply was lost to a timeout); each `Batch`
says which spool and byte offsets its lines come from, so the store can skip what it already
has: exactly once.

Bounded by bytes: when the lines not yet shipped reach `max_bytes`, a new record is refused
(`put` returns False) and counted as dropped: the newest go, so the log stays a prefix of
what was answered. Memory holds one batch; the backlog lives on disk.

Spools of dead workers (their lock is free) are found at start and every few seconds, shipped
from their offset, and deleted; a fully shipped spool past `rotate_bytes` is replaced by a
new one, so disk use follows the backlog, not the uptime.

One spool per worker and purpose: `<folder>/<name>-<pid>-<ns>.spool` and its `.shipped`
offset. The folder belongs to one log store (the server derives it from the store's URL), so
a spool is never replayed into another store.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("mlsys.log_writer")

SUFFIX = ".spool"
OFFSET_SUFFIX = ".shipped"
ORPHAN_SCAN_S = 5.0


@dataclass(frozen=True)
class Batch:
    """Lines of one spool, from byte `offsets[0]` to `end`. A store that remembers, per spool,
    the `end` of the last batch it applied can skip lines it already has (offsets below it):
    a batch whose reply was lost (a timeout, a frozen store) is offered again, and must not
    land twice."""

    spool: str  # the spool's name: unique per worker and file
    lines: list[bytes]
    offsets: list[int]  # where each line starts in the spool
    end: int


@dataclass
class WriterStats:
    put: int = 0
    spooled: int = 0
    shipped: int = 0
    dropped: int = 0
    failed_batches: int = 0
    recovered: int = 0  # lines shipped from dead workers' spools


class SpoolFile:
    """One spool and its shipped offset; locked while its writer lives."""

    def __init__(self, path: Path, handle: BinaryIO) -> None:
        self.path = path
        self.handle = handle
        self.offset_path = path.with_suffix(OFFSET_SUFFIX)
        self._offset_fd: int | None = None  # opened by the first write_offset

    @classmethod
    def create(cls, folder: Path, name: str) -> SpoolFile:
        path = folder / f"{name}-{os.getpid()}-{time.time_ns()}{SUFFIX}"
        # Locked before it has the name other writers look for: none can take it for a dead
        # worker's in the instant between opening and locking.
        fresh = path.with_suffix(".new")
        handle = fresh.open("a+b", buffering=0)  # appends; pread reads back
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(fresh, path)
        return cls(path, handle)

    @classmethod
    def claim(cls, path: Path) -> SpoolFile | None:
        """A spool whose writer is gone (its lock is free), locked for us; else None."""
        try:
            handle = path.open("rb+", buffering=0)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return cls(path, handle)

    def size(self) -> int:
        return os.fstat(self.handle.fileno()).st_size

    def read_offset(self) -> int:
        try:
            return int(self.offset_path.read_bytes().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def write_offset(self, offset: int) -> None:
        """One `pwrite` of a fixed-width number in place (a temporary file and a rename per
        batch cost a worker 5% of its CPU at 250 rps). The offset only saves work: were it
        stale or torn (a power loss), the store's marker still skips what it already has."""
        if self._offset_fd is None:
            self._offset_fd = os.open(self.offset_path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.pwrite(self._offset_fd, b"%020d" % offset, 0)

    def batch(self, offset: int, max_lines: int, max_bytes: int) -> Batch:
        """Complete lines from `offset` (a torn last line, from a kill mid-write, waits)."""
        chunk = os.pread(self.handle.fileno(), max_bytes, offset)
        last = chunk.rfind(b"\n")
        lines = chunk[: last + 1].split(b"\n")[:-1][:max_lines]
        offsets = []
        at = offset
        for line in lines:
            offsets.append(at)
            at += len(line) + 1
        return Batch(self.path.stem, lines, offsets, at)

    def close(self) -> None:
        """Release the files (and the lock: another writer may now adopt the spool)."""
        if self._offset_fd is not None:
            os.close(self._offset_fd)
            self._offset_fd = None
        self.handle.close()

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.offset_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.close()


class LogWriter:
    def __init__(
        self,
        ship: Callable[[Batch], None],
        folder: str | Path,
        *,
        name: str = "log",
        max_bytes: int = 1 << 30,
        max_batch: int = 512,
        linger_s: float = 0.02,
        retry_s: float = 0.05,
        max_retry_s: float = 1.0,
        rotate_bytes: int = 64 << 20,
        on_outcome: Callable[[str, int], None] | None = None,
        on_backlog: Callable[[int], None] | None = None,
    ) -> None:
        if max_bytes < 1 or max_batch < 1 or linger_s <= 0 or retry_s <= 0:
            raise ValueError("max_bytes and max_batch >= 1, linger_s and retry_s > 0")
        self._ship = ship
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.max_bytes = max_bytes
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.rotate_bytes = rotate_bytes
        self._on_outcome = on_outcome or (lambda outcome, n: None)
        self._on_backlog = on_backlog or (lambda backlog_bytes: None)
        self.stats = WriterStats()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._spool: SpoolFile | None = None  # made by the first put
        # Whether the store took this writer's last batch: the API asks before it waits on
        # the store itself (a frozen store would hold each such request for its timeout).
        self.store_reachable = True
        self._written = 0  # bytes appended to the current spool
        self._shipped = 0  # bytes of it shipped
        self._next_scan = 0.0
        self._thread = threading.Thread(target=self._run, name=f"{name} writer", daemon=True)
        self._thread.start()

    @property
    def backlog_bytes(self) -> int:
        """Bytes answered but not yet in the store (this worker's spool)."""
        with self._lock:
            return self._written - self._shipped

    def put(self, line: bytes) -> bool:
        """Append one record (no newline in it); False when the backlog is full and it was
        dropped."""
        with self._lock:
            self.stats.put += 1
            if self._written - self._shipped + len(line) + 1 > self.max_bytes:
                self.stats.dropped += 1
                self._on_outcome("dropped", 1)
                return False
            if self._spool is None:
                self._spool = SpoolFile.create(self.folder, self.name)
            self._spool.handle.write(line + b"\n")
            self._written += len(line) + 1
            self.stats.spooled += 1  # counted on /metrics by the writer's next tick
            return True

    def flush(self, timeout_s: float = 1.0) -> bool:
        """Wait until everything put before this call is shipped (True) or `timeout_s`
        passes. Only that: under steady traffic there is always a newer record, and waiting
        for those held a click for the whole timeout."""
        deadline = time.monotonic() + timeout_s
        with self._wake:
            self._wake.notify_all()
            spool, target = self._spool, self._written
            # A new spool means the old one was shipped to its end (rotation) or let go.
            while self._spool is spool and spool is not None and self._shipped < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.01))
        return True

    def close(self, timeout_s: float = 2.0) -> None:
        """Ship what is left (within `timeout_s`) and delete the spool if it is empty; one
        still holding lines stays on disk for the next writer of this folder. A `put` after
        this starts a new spool (an app's lifespan can end and start again in one process)."""
        self.flush(timeout_s)
        with self._lock:
            if self._spool is not None:
                if self._shipped < self._written:
                    self._spool.close()  # kept, unlocked, for the next writer
                else:
                    self._spool.remove()
                self._spool = None
                self._written = self._shipped = 0

    def _run(self) -> None:
        pause = self.retry_s
        reported = 0  # spooled records already counted
        while True:
            with self._wake:
                self._wake.wait(self.linger_s)
            try:
                self._ship_own()
                if time.monotonic() >= self._next_scan:
                    self._next_scan = time.monotonic() + ORPHAN_SCAN_S
                    self._ship_orphans()
                pause = self.retry_s
            except Exception as exc:  # the store is down: nothing advanced; try again
                self.store_reachable = False
                self.stats.failed_batches += 1
                self._on_outcome("failed", 1)
                failures = self.stats.failed_batches
                if failures in (1, 10, 100) or failures % 1000 == 0:
                    log.warning(
                        "log records not shipped; retrying",
                        extra={"fields": {"writer": self.name, "backlog_bytes": self.backlog_bytes,
                                          "error": f"{type(exc).__name__}: {exc}"}},
                    )  # fmt: skip
                with self._wake:
                    self._wake.wait(pause)
                pause = min(pause * 2, self.max_retry_s)
            finally:
                spooled = self.stats.spooled  # counted here, not on the request path
                if spooled > reported:
                    self._on_outcome("spooled", spooled - reported)
                    reported = spooled
                self._on_backlog(self.backlog_bytes)

    def _ship_own(self) -> None:
        """What was put before this tick (a line put back by `ship` waits for the next)."""
        with self._lock:
            spool, until = self._spool, self._written
        while True:
            with self._lock:
                start, end = self._shipped, min(self._written, until)
            if spool is None or spool is not self._spool or start >= end:
                break
            batch = spool.batch(start, self.max_batch, min(end - start, 4 << 20))
            if not batch.lines:
                break
            self._ship(batch)
            self.store_reachable = True
            spool.write_offset(batch.end)
            with self._wake:
                self._shipped = batch.end
                self._wake.notify_all()
            self.stats.shipped += len(batch.lines)
            self._on_outcome("shipped", len(batch.lines))
        self._rotate()

    def _rotate(self) -> None:
        with self._lock:
            old = self._spool
            if old is None or self._shipped < self._written or self._written < self.rotate_bytes:
                return
            self._spool = None  # the next put starts a new one
            self._written = self._shipped = 0
        old.remove()

    def _ship_orphans(self) -> None:
        """Spools whose writer died: shipped from their offset, then deleted."""
        own = None if self._spool is None else self._spool.path
        for path in sorted(self.folder.glob(f"{self.name}-[0-9]*{SUFFIX}")):
            if path == own:
                continue
            orphan = SpoolFile.claim(path)
            if orphan is None:
                continue
            try:
                offset, size = orphan.read_offset(), orphan.size()
                while offset < size:
                    batch = orphan.batch(offset, self.max_batch, 4 << 20)
                    if not batch.lines:
                        break  # a torn last line: the rest of a record never written
                    self._ship(batch)
                    orphan.write_offset(batch.end)
                    offset = batch.end
                    self.stats.recovered += len(batch.lines)
                    self._on_outcome("recovered", len(batch.lines))
                orphan.remove()
            except Exception:
                orphan.close()  # the lock goes with it; a later scan tries again
                raise
