"""File helpers shared by every stage: atomic writes and content hashes.

Atomic writes: a reader (or a resumed run) sees the old file or directory or the new one,
never half of one.

Files (models, checkpoints, metrics) and whole datasets are written under a hidden temporary
name in the same folder and renamed into place only when complete, so Ctrl-C, SIGKILL, a crash
or a full disk leaves the target as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlsys.errors import MlsysError

VERSION_CHARS = 12

# JSON is where values lose their types. What json.loads gives back (a manifest, model.json, a
# report read again) is `JsonIn`: untyped until its reader checks the keys it uses. What we
# write is `JsonOut`: any value json.dumps takes, from which nothing is read unchecked.
JsonIn = dict[str, Any]
JsonOut = Mapping[str, object]


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_version(path: Path) -> str:
    """A model file's identity (first 12 hex digits of its sha256): what logs, /metrics and
    the JSON beside the model report as its version, so metadata that drifted is detected."""
    return sha256_file(path)[:VERSION_CHARS]


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` when the block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp, tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_json(path: Path, payload: JsonOut) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


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
