"""How many torch threads a training or evaluation step uses by default.

Shared by `train.py` and `evaluate.py` (training also evaluates, so the two must not import
each other for it).
"""

from __future__ import annotations

import os


def default_threads() -> int:
    """Torch threads for a step: the cores we may use, less one for the input thread and one
    for whatever else runs (Redis, the API, a load generator), at least one.

    A step is small (batch 1024 through 40x256x128), so a second thread gains little on a
    quiet machine, and loses a lot on a shared one: OpenMP's threads meet at a barrier after
    every op, and when one of them waits for a busy core the whole step waits. Measured on 2
    cores, 5M rows (benchmarks/train_threads.py, docs/training-report.md): one busy core made
    a 2-thread epoch 4.4x slower and a 1-thread epoch barely slower.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - 2)
