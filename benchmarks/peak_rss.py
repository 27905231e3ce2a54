"""Run a command and report its wall time and peak memory over its whole process tree.

`/usr/bin/time -v` reports the largest single process; a generator or server with worker
processes needs the sum over the tree, sampled while it runs. Forked workers share pages
copy-on-write, which a sum of RSS counts once per process: PSS (proportional set size)
splits shared pages between their users, so the PSS sum is the tree's real footprint.
Both are reported.

    python benchmarks/peak_rss.py -- mlsys generate clicks /tmp/full --scale full
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time

import psutil


def tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over `proc` and its descendants."""
    rss = pss = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a child may exit between listing and reading
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
    return rss, pss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.02, help="sampling period, seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    started = time.perf_counter()
    child = subprocess.Popen(cmd)
    proc = psutil.Process(child.pid)
    peak_rss = peak_pss = 0
    while child.poll() is None:
        with contextlib.suppress(psutil.Error):
            rss, pss = tree_memory(proc)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(args.interval)
    wall = time.perf_counter() - started
    print(
        f"wall_s={wall:.2f} peak_tree_rss_mib={peak_rss / 2**20:.0f} "
        f"peak_tree_pss_mib={peak_pss / 2**20:.0f} exit={child.returncode}",
        file=sys.stderr,
    )
    return child.returncode


if __name__ == "__main__":
    raise SystemExit(main())
