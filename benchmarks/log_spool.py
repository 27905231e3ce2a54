"""What does spooling one log record cost a request, and what would a queue library cost?

    .venv/bin/python benchmarks/log_spool.py [--records 20000]

The request path hands each answer's impression (about 1.2 KB of JSON) to the worker's log
writer. Side by side in one run, CPU microseconds per record:

- encoding the envelope: json, orjson, msgspec (msgspec only if installed);
- putting it: our `LogWriter.put` (one `write` of one line to the worker's spool file, a
  shipping thread running beside it), persist-queue's `SQLiteAckQueue` and file `Queue`, and
  diskcache's `Deque` (each only if installed; `pip install persist-queue diskcache`).

Every store is durable against a killed process in the same sense (the record is in the
kernel's page cache when `put` returns; none fsyncs per record by default).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from mlsys.platform.log_writer import Batch, LogWriter


def impression() -> list[object]:
    """The envelope the API spools for one answer (event_log.EventLog.impression)."""
    record = {
        "request_id": "AZMz1kT4mQx3f0bJ9cW2aQ", "correlation_id": "", "user_id": 1140,
        "ts_ms": 1764950400000, "model": "ranknet/7", "arm": "champion", "experiment": "",
        "latitude": 13.87, "longitude": 100.58, "max_dist": 5000.0, "candidates": 1000,
        "restaurants": [{"id": 100 * i, "score": 0.5 - i / 100, "position": i + 1,
                         "displacement": 0.0} for i in range(10)],
        "sample": [round(0.1 * i, 6) for i in range(40)], "sample_model": "ranknet/7",
    }  # fmt: skip
    return ["i", record, ["champion", "", "", 1140, "ranknet/7", ",0,100,200,", "AZMz1kT"]]


def per_record(n: int, put: Callable[[int], object]) -> float:
    """CPU microseconds per call (this process: the caller's and any helper thread's)."""
    started = time.process_time()
    for i in range(n):
        put(i)
    return (time.process_time() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    n = parser.parse_args().records
    envelope = impression()
    line = orjson.dumps(envelope)
    print(f"one impression envelope: {len(line)} bytes; {n:,} records each\n")

    rows: list[tuple[str, float]] = [
        ("encode: json.dumps", per_record(n, lambda i: json.dumps(envelope).encode())),
        ("encode: orjson.dumps", per_record(n, lambda i: orjson.dumps(envelope))),
    ]
    try:
        import msgspec

        encoder = msgspec.json.Encoder()
        rows.append(("encode: msgspec", per_record(n, lambda i: encoder.encode(envelope))))
    except ImportError:
        print("msgspec not installed: skipped")

    with tempfile.TemporaryDirectory() as work:
        shipped: list[int] = []

        def ship(batch: Batch) -> None:
            shipped.append(len(batch.lines))

        writer = LogWriter(ship, Path(work) / "spool", name="bench")
        rows.append(
            ("put: LogWriter (spool line + shipper)", per_record(n, lambda i: writer.put(line)))
        )
        writer.close(timeout_s=10)
        assert sum(shipped) == n, "every record shipped"

        try:
            import persistqueue

            q = persistqueue.SQLiteAckQueue(str(Path(work) / "sqlite"), multithreading=True)
            rows.append(("put: persist-queue SQLiteAckQueue", per_record(n, lambda i: q.put(line))))
            fq = persistqueue.Queue(str(Path(work) / "fileq"), tempdir=work)
            rows.append(("put: persist-queue file Queue", per_record(n, lambda i: fq.put(line))))
        except ImportError:
            print("persist-queue not installed: skipped")
        try:
            import diskcache

            deque = diskcache.Deque(directory=str(Path(work) / "deque"))
            rows.append(("put: diskcache Deque", per_record(n, lambda i: deque.append(line))))
        except ImportError:
            print("diskcache not installed: skipped")

    print(f"{'what':42s} {'CPU us per record':>18s}")
    for what, us in rows:
        print(f"{what:42s} {us:18.1f}")


if __name__ == "__main__":
    main()
