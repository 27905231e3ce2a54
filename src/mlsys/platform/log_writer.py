"""Ship log records off the request path: a bounded buffer in the worker, drained by one
background thread in batches.

A request appends its record (`put`: a lock, a deque append, no I/O) and answers; every
`linger_s` (or at once when `max_batch` are waiting) the thread takes what waits, up to
`max_batch`, and hands it to `ship` (one round trip, e.g. a Redis pipeline). At 30 rps a
batch is one record, shipped within a few milliseconds; under load a batch carries many
records in one round trip, which is where the CPU goes down.

Failures: when `ship` raises (the log's store is down or frozen), the batch stays at the
front, and the thread retries with a growing pause (`retry_s` doubling to `max_retry_s`), in
order, so nothing is reordered or lost while the buffer holds. The buffer is bounded by
`max_records`; a record that finds it full is dropped and counted (the newest go, so the log
stays a prefix of what was answered). What a worker that dies holds is lost: at most its
buffer (`buffered`), normally under one `linger_s` of records.

`stats` counts what was put, shipped, dropped and retried; the API exports them in /metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger("mlsys.log_writer")

T = TypeVar("T")


@dataclass
class WriterStats:
    put: int = 0
    shipped: int = 0
    dropped: int = 0
    failed_batches: int = 0


class LogWriter(Generic[T]):
    def __init__(
        self,
        ship: Callable[[list[T]], None],
        *,
        name: str = "log",
        max_records: int = 100_000,
        max_batch: int = 256,
        linger_s: float = 0.005,
        retry_s: float = 0.05,
        max_retry_s: float = 1.0,
    ) -> None:
        if max_records < 1 or max_batch < 1 or linger_s < 0 or retry_s <= 0:
            raise ValueError("max_records and max_batch >= 1, linger_s >= 0, retry_s > 0")
        self._ship = ship
        self.name = name
        self.max_records = max_records
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.stats = WriterStats()
        self._queue: deque[T] = deque()
        self._inflight = 0  # records taken by the thread and not yet shipped
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"{name} writer", daemon=True)
        self._thread.start()

    @property
    def buffered(self) -> int:
        """Records answered but not yet in the store."""
        with self._cond:
            return len(self._queue) + self._inflight

    def put(self, record: T) -> bool:
        """Queue a record; False when the buffer is full and it was dropped."""
        with self._cond:
            self.stats.put += 1
            if len(self._queue) + self._inflight >= self.max_records:
                self.stats.dropped += 1
                return False
            self._queue.append(record)
            if len(self._queue) >= self.max_batch:
                self._cond.notify()  # a full batch goes at once; otherwise the next tick takes it
            return True

    def flush(self, timeout_s: float = 1.0) -> bool:
        """Wait until everything put so far is shipped (True) or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._cond.notify()
            while self._queue or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.01))
        return True

    def close(self, timeout_s: float = 2.0) -> None:
        """Ship what is left (within `timeout_s`) and stop the thread."""
        self.flush(timeout_s)
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout_s)

    def _take(self) -> list[T] | None:
        with self._cond:
            # A tick every `linger_s`, not a wake-up per record: at a few hundred answers a
            # second, waking the thread for each one cost more CPU than shipping it.
            self._cond.wait(self.linger_s)
            while not self._queue and not self._closing:
                self._cond.wait(self.linger_s)
            if not self._queue:
                return None
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            self._inflight = len(batch)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            pause = self.retry_s
            while True:
                try:
                    self._ship(batch)
                    break
                except Exception as exc:  # the store is down: keep the batch, try again
                    self.stats.failed_batches += 1
                    if (
                        self.stats.failed_batches in (1, 10, 100)
                        or self.stats.failed_batches % 1000 == 0
                    ):
                        log.warning(
                            "log records not shipped; retrying",
                            extra={"fields": {"writer": self.name, "buffered": self.buffered,
                                              "error": f"{type(exc).__name__}: {exc}"}},
                        )  # fmt: skip
                    with self._cond:
                        if self._closing:
                            self._inflight = 0
                            return
                        self._cond.wait(pause)
                    pause = min(pause * 2, self.max_retry_s)
            with self._cond:
                self.stats.shipped += len(batch)
                self._inflight = 0
                self._cond.notify_all()
