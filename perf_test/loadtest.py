"""Thin runner for the load test, for people who look in perf_test/ first.

    python perf_test/loadtest.py http://127.0.0.1:8000 --requests data/requests.parquet \
        --rate 30 --duration 60

is exactly `mlsys loadtest ...` (implementation: src/mlsys/compose/loadtest.py).
"""

from __future__ import annotations

import sys

from mlsys.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["loadtest", *sys.argv[1:]]))
