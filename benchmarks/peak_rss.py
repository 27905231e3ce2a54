"""Run a command and report its wall time and the peak RSS of its whole process tree.

`/usr/bin/time -v` reports the largest single process; a generator or server with worker
processes needs the sum over the tree, sampled while it runs.

    python benchmarks/peak_rss.py -- mlsys generate clicks /tmp/full --scale full
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time

import psutil


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a child may exit between listing and reading
            total += p.memory_info().rss
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.02, help="sampling period, seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    started = time.perf_counter()
    child = subprocess.Popen(cmd)
    proc = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, tree_rss(proc))
        time.sleep(args.interval)
    wall = time.perf_counter() - started
    print(
        f"wall_s={wall:.2f} peak_tree_rss_mib={peak / 2**20:.0f} exit={child.returncode}",
        file=sys.stderr,
    )
    return child.returncode


if __name__ == "__main__":
    raise SystemExit(main())
