"""Bring the whole serving stack up on this machine, and always down again.

Redis (a local redis-server child), the feature load, and `mlsys serve` as a child process:
the demo, the integration tests and perf_test/ all use this one path, so what is measured is
what the demo runs. `stack_memory` sums RSS over the API's process tree and Redis, the number
the 4 GiB budget is about.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlsys.errors import MlsysError
from mlsys.files import JsonIn
from mlsys.platform.redis_server import RedisServer, free_port


@dataclass
class Stack:
    api_url: str
    redis: RedisServer
    api: subprocess.Popen[bytes]
    load_meta: JsonIn
    log_path: Path
    log_redis: RedisServer | None = None  # the impression log's (append-only) Redis


def wait_ready(
    url: str, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 60
) -> None:
    """Poll /readyz until 200; fail early if the server process died."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise MlsysError(f"the API exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise MlsysError(f"the API at {url} was not ready within {timeout_s:.0f} s: {last}")


def settle(pid: int, timeout_s: float = 60, idle_cpu_s: float = 0.05) -> None:
    """Wait until a process tree stops burning CPU (workers still importing torch would skew
    the first measurements: /readyz answers as soon as one worker is up)."""
    import psutil

    def cpu(root: psutil.Process) -> float:
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    root = psutil.Process(pid)
    deadline = time.monotonic() + timeout_s
    before = cpu(root)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu(root)
        if now - before < idle_cpu_s:
            return
        before = now


def start_api(
    model_dir: str | Path,
    redis_url: str,
    *,
    port: int,
    workers: int,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    access_log: bool = True,
    extra_args: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """`mlsys serve` as a child in its own session, its JSON logs going to `log_path`;
    `extra_args` are more `mlsys serve` options (e.g. `--tagger-model DIR`)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(extra_env or {})}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # serve makes a fresh one
    cmd = [
        sys.executable, "-m", "mlsys", "serve",
        "--model", str(model_dir),
        "--redis", redis_url,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    if not access_log:
        cmd.append("--no-access-log")
    cmd.extend(extra_args)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    """SIGTERM the child's process group (uvicorn's workers too); SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def running_stack(
    data_dir: str | Path,
    model_dir: str | Path,
    workdir: str | Path,
    *,
    workers: int = 2,
    port: int | None = None,
    access_log: bool = True,
    progress: bool = True,
    extra_args: Sequence[str] = (),
    log_redis: bool = False,
) -> Iterator[Stack]:
    """Redis + `features load` + `mlsys serve` (`extra_args`: more of its options), and with
    `log_redis` a second, append-only Redis for the impression log; everything started is
    stopped on exit."""
    from mlsys.platform.redis_client import connect
    from mlsys.recommender.serving.materialize import materialize

    work = Path(workdir)
    redis = RedisServer(workdir=work / "redis").start()
    log: RedisServer | None = None
    api: subprocess.Popen[bytes] | None = None
    try:
        if log_redis:
            log = RedisServer(workdir=work / "log-redis", appendonly=True, maxmemory="1gb").start()
            extra_args = [*extra_args, "--log-redis", log.url]
        meta = materialize(data_dir, connect(redis.url, timeout_s=30), progress=progress)
        port = port or free_port()
        log_path = work / "api.log"
        api = start_api(
            model_dir, redis.url, port=port, workers=workers, log_path=log_path,
            access_log=access_log, extra_args=extra_args,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, api)
        settle(api.pid)
        yield Stack(url, redis, api, meta, log_path, log)
    finally:
        if api is not None:
            stop_process(api)
        if log is not None:
            log.stop()
        redis.stop()


def stack_memory(stack: Stack) -> dict[str, float]:
    """RSS in MiB: API process tree, redis-server, total; plus Redis' own used_memory."""
    import psutil

    from mlsys.platform.redis_client import connect, used_memory

    def tree_rss(pid: int) -> tuple[float, float]:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        rss = pss = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                info = p.memory_full_info()
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
        return rss / 2**20, pss / 2**20

    api_rss, api_pss = tree_rss(stack.api.pid)
    assert stack.redis.pid is not None
    redis_rss, redis_pss = tree_rss(stack.redis.pid)
    used = used_memory(connect(stack.redis.url, timeout_s=5)) / 2**20
    return {
        "api_rss_mib": round(api_rss, 1),
        "api_pss_mib": round(api_pss, 1),
        "redis_rss_mib": round(redis_rss, 1),
        "redis_used_memory_mib": round(used, 1),
        "total_rss_mib": round(api_rss + redis_rss, 1),
        "total_pss_mib": round(api_pss + redis_pss, 1),
    }
