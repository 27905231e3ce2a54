"""Writing whole datasets atomically: a reader sees the old directory or the new one, never half.

Both generators write into a hidden staging sibling and rename it into place only when
everything is written, so Ctrl-C, a crash or a full disk leaves the requested name untouched.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlsys.errors import MlsysError


@contextmanager
def atomic_directory(out: Path, force: bool) -> Iterator[Path]:
    """Yield an empty staging directory that replaces `out` when the block completes.

    Refuses a non-empty `out` unless `force`. On any exception (KeyboardInterrupt included) the
    staging directory is deleted and `out` is left as it was.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise MlsysError(f"{out} already exists and is not empty; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    staging.rename(out)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()


def ignore_sigint() -> None:
    """Pool initializer: the parent handles Ctrl-C (and cleans up); workers just get terminated."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
