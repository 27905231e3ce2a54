"""`mlsys bench serve`: this tree's API against another revision's (or another configuration
of this one), side by side in one run, on the same data, model and machine.

The machine is shared and noisy, so absolute figures drift from run to run while a ratio
measured pair by pair holds: both APIs run at once (each with its own feature Redis and log
Redis, loaded by its own code), and at every rate the two take turns, the order alternating,
under the same open-model generator (`loadtest.py`). Per run it records the latency
percentiles, the errors, and the CPU time the API's process tree and its Redis servers spent
per answered request (steadier than tail latency near saturation). A variant's capacity is
the highest rate, going up, at which p95 < 100 ms with no error; the sweep of a variant stops
at its first miss.

A revision is checked out with `git worktree add` into the work folder and run from its own
`src/` with this environment's packages, so it must run on today's pinned dependencies.
Flags may name `{log_redis}`: the URL of a fresh append-only Redis for that variant's log.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlsys.errors import MlsysError
from mlsys.platform.redis_server import RedisServer, free_port

THIS_TREE = "."
DEFAULT_FLAGS = "--log-redis {log_redis}"


@dataclass(frozen=True)
class Variant:
    label: str
    revision: str  # a git revision, or "." for this working tree
    flags: str  # more `mlsys serve` options


@dataclass
class Run:
    rate: float
    achieved: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    answered: int
    cpu_ms_per_answer: float

    @property
    def meets_spec(self) -> bool:
        return self.p95_ms < 100.0 and self.errors == 0


@dataclass
class Sweep:
    variant: Variant
    runs: list[Run] = field(default_factory=list)

    @property
    def capacity(self) -> float | None:
        best = None
        for run in self.runs:
            if not run.meets_spec:
                break
            best = run.rate
        return best

    @property
    def stopped(self) -> bool:
        return any(not r.meets_spec for r in self.runs)


def repo_root() -> Path:
    """The git work tree this package is imported from (src/mlsys/compose -> root)."""
    return Path(__file__).resolve().parents[3]


def source_of(variant: Variant, workdir: Path) -> Path:
    """The `src/` folder that runs `variant`: this tree's, or a worktree of its revision."""
    root = repo_root()
    if variant.revision == THIS_TREE:
        return root / "src"
    tree = workdir / f"tree-{variant.label}"
    if not tree.exists():
        done = subprocess.run(
            ["git", "-C", str(root), "worktree", "add", "--detach", str(tree), variant.revision],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise MlsysError(f"revision {variant.revision!r}: {done.stderr.strip()}")
    return tree / "src"


@dataclass
class Server:
    variant: Variant
    url: str
    api: subprocess.Popen[bytes]
    redis: RedisServer
    log_redis: RedisServer

    def pids(self) -> list[int]:
        return [self.api.pid, *(r.pid for r in (self.redis, self.log_redis) if r.pid)]


@contextlib.contextmanager
def started(
    variant: Variant, data_dir: Path, model_dir: Path, workdir: Path, workers: int
) -> Iterator[Server]:
    """The variant's own Redis pair, its features loaded by its own code, and its API."""
    from mlsys.compose.stack import settle, stop_process, wait_ready

    src = source_of(variant, workdir)
    env = {"PYTHONPATH": str(src)}
    folder = workdir / variant.label
    redis = RedisServer(workdir=folder / "redis").start()
    log_redis = RedisServer(workdir=folder / "log-redis", appendonly=True, maxmemory="1gb").start()
    api: subprocess.Popen[bytes] | None = None
    try:
        _mlsys(env, "features", "load", str(data_dir), "--redis", redis.url)
        port = free_port()
        flags = shlex.split(variant.flags.format(log_redis=log_redis.url))
        log = (folder / "api.log").open("ab")
        api = subprocess.Popen(
            [sys.executable, "-m", "mlsys", "serve", "--model", str(model_dir), "--redis",
             redis.url, "--port", str(port), "--workers", str(workers), *flags],
            stdout=log, stderr=subprocess.STDOUT, env=_env(env), start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, api, timeout_s=120)
        settle(api.pid)
        yield Server(variant, url, api, redis, log_redis)
    finally:
        if api is not None:
            stop_process(api)
        log_redis.stop()
        redis.stop()


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    env = {**os.environ, **extra}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # serve makes a fresh one
    return env


def _mlsys(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "mlsys", *args], env=_env(env),
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise MlsysError(f"mlsys {' '.join(args[:2])}: {done.stderr.strip()[-500:]}")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and all their children."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
    return total


def measure(server: Server, payloads: list[bytes], rate: float, duration: float) -> Run:
    from mlsys.compose.loadtest import run_once

    before = cpu_seconds(server.pids())
    _, summary = run_once(server.url, "", rate, duration, payloads=payloads)
    spent = cpu_seconds(server.pids()) - before
    answered = int(summary["requests"]) - int(summary["errors"])
    return Run(
        rate=rate, achieved=float(summary["achieved_rate"]), p50_ms=float(summary["p50_ms"]),
        p95_ms=float(summary["p95_ms"]), p99_ms=float(summary["p99_ms"]),
        errors=int(summary["errors"]), answered=answered,
        cpu_ms_per_answer=spent * 1e3 / max(answered, 1),
    )  # fmt: skip


def bench_serve(
    data_dir: str | Path,
    model_dir: str | Path,
    variants: list[Variant],
    rates: list[float],
    duration: float,
    workdir: str | Path,
    *,
    workers: int = 2,
    say: Callable[[str], None] = print,
) -> list[Sweep]:
    """Every variant at every rate, taking turns (see the module docstring)."""
    from mlsys.compose.loadtest import load_requests, parse_url

    if len({v.label for v in variants}) != len(variants):
        raise MlsysError("variants need distinct labels")
    if not rates or any(r <= 0 for r in rates) or duration <= 0:
        raise MlsysError("--rates and --duration must be positive")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    data, model = Path(data_dir).resolve(), Path(model_dir).resolve()
    sweeps = [Sweep(v) for v in variants]
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(started(v, data, model, work, workers)) for v in variants]
        payloads = {
            s.variant.label: load_requests(data / "requests.parquet", parse_url(s.url))
            for s in servers
        }
        for i, rate in enumerate(rates):
            order = list(zip(servers, sweeps, strict=True))
            if i % 2:
                order.reverse()
            for server, sweep in order:
                if sweep.stopped:
                    continue
                run = measure(server, payloads[server.variant.label], rate, duration)
                sweep.runs.append(run)
                say(f"{server.variant.label:>12}  {rate:6g} rps: p50 {run.p50_ms:7.1f}  p95 "
                     f"{run.p95_ms:7.1f}  p99 {run.p99_ms:7.1f} ms  errors {run.errors:5d}  "
                     f"cpu {run.cpu_ms_per_answer:5.2f} ms/answer")  # fmt: skip
                time.sleep(1.0)
            if all(s.stopped for s in sweeps):
                break
    return sweeps


def table(sweeps: list[Sweep]) -> str:
    """Side by side: per rate each variant's p95 and CPU per answer; then the capacities and
    their ratio to the first variant's."""
    rates = sorted({r.rate for s in sweeps for r in s.runs})
    head = "| rate |" + "".join(f" {s.variant.label} p95 ms | {s.variant.label} CPU ms/answer |"
                                for s in sweeps)  # fmt: skip
    lines = [head, "|---|" + "---|---|" * len(sweeps)]
    for rate in rates:
        cells = []
        for s in sweeps:
            run = next((r for r in s.runs if r.rate == rate), None)
            if run is None:
                cells += ["-", "-"]
            else:
                miss = (
                    "" if run.meets_spec else f" ({run.errors} errors)" if run.errors else " (miss)"
                )
                cells += [f"{run.p95_ms:.1f}{miss}", f"{run.cpu_ms_per_answer:.2f}"]
        lines.append(f"| {rate:g} | " + " | ".join(cells) + " |")
    base = sweeps[0].capacity
    lines.append("")
    for s in sweeps:
        ratio = "" if not base or not s.capacity else f" ({s.capacity / base:.2f}x the first)"
        lines.append(f"capacity {s.variant.label} ({s.variant.revision} {s.variant.flags}): "
                     f"{s.capacity or 'below the first rate'} rps{ratio}")  # fmt: skip
    return "\n".join(lines)
