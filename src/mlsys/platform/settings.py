"""Server settings: plain values, carried to worker processes through environment variables.

`uvicorn --workers N` starts each worker as a fresh interpreter that builds the app from an
import string, so the only channel from `mlsys serve` to the workers is the environment. The
same variables configure the container image (see Dockerfile / docker-compose.yml).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mlsys.errors import MlsysError

PREFIX = "MLSYS_"
REDIS_HELP = (
    "the feature store: one Redis node, or any node of a Redis Cluster (default: "
    "$MLSYS_REDIS_URL, else redis://127.0.0.1:6379/0)"
)
LOG_REDIS_HELP = (
    "the log's Redis (default: $MLSYS_LOG_REDIS_URL, else $MLSYS_REDIS_URL, else "
    "redis://127.0.0.1:6379/0)"
)


@dataclass(frozen=True)
class Settings:
    # recommender model: a folder, a bare model.pt, or models:/ranknet@champion (followed
    # every model_refresh_s); None: no /recommend. The tagger's the same way.
    model_dir: str | None = None
    model_refresh_s: float = 5.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = 0.05  # connect and read timeout: Redis down -> 503 within ~this
    max_body_bytes: int = 1 << 20  # 10,000 candidate ids are ~120 KB of JSON
    max_candidates: int = 10_000
    # The funnel (recommender/ranking.py): with more restaurants in reach than this, a cheap
    # first stage keeps this many (at least a request's size) for the full model; 0: off.
    first_stage_k: int = 500
    admin_token: str | None = None  # None disables the admin feature-update endpoints
    tagger_model_dir: str | None = None  # the garment tagger's POST /tag
    log_requests: bool = True  # one JSON line per request on stderr
    # Slow or idle clients (see protocol.py and server.RequestContext). Defaults: a request's
    # headers arrive in one packet, so 10 s is generous; 30 s carries a 10 MB photo at
    # 2.7 Mbit/s, a slow mobile uplink; 1,000 open connections per worker is twice what a
    # 500 rps load with keep-alive holds, and far below the 20,000-descriptor limit here.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1000
    max_header_bytes: int = 64 << 10  # request line + headers; past it: 431
    # The impression and click log (event_log.py) and the rollout state (rollout.py) live in
    # this Redis, run with an append-only file and a maxmemory; None: the feature store's. A
    # stream keeps about log_stream_mb MiB until exported; a click counts when it comes
    # within feedback_window_s of its impression. Each worker spools what it logs to a file
    # in spool_dir (default: a folder of the system's temporary directory named after the log
    # store) before shipping it, at most spool_max_mb MiB not yet shipped (log_writer.py).
    log_redis_url: str | None = None
    log_impressions: bool = True
    log_stream_mb: int = 256
    feedback_window_s: int = 600
    spool_dir: str | None = None
    spool_max_mb: int = 1024
    rollout_refresh_s: float = 1.0
    # Share of logged answers that carry one scored input row and its score, which the drift
    # monitor compares with the model's training reference (about 0.4 KB per answer).
    monitor_sample: float = 1.0

    def to_env(self) -> dict[str, str]:
        """The variables `from_env` reads back; None values are left out."""
        out: dict[str, str] = {}
        for key, value in asdict(self).items():
            if value is None:
                continue
            out[PREFIX + key.upper()] = (
                ("1" if value else "0") if isinstance(value, bool) else str(value)
            )
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            kind = str(f.type)
            try:
                if "bool" in kind:
                    values[f.name] = raw.lower() in ("1", "true", "yes", "on")
                elif "int" in kind:
                    values[f.name] = int(raw)
                elif "float" in kind:
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise MlsysError(f"{PREFIX}{f.name.upper()}={raw!r}: {exc}") from exc
        return cls(**values)  # type: ignore[arg-type]


def redis_url_from_env() -> str:
    """The default of every command's `--redis`: what the server's settings read."""
    return os.environ.get(PREFIX + "REDIS_URL") or Settings.redis_url


def log_redis_url_from_env() -> str:
    """The default of `--redis` for commands on the log and rollout state (MLSYS_LOG_REDIS_URL,
    else the feature store's, as the server falls back)."""
    return os.environ.get(PREFIX + "LOG_REDIS_URL") or redis_url_from_env()


def spool_dir_for(settings: Settings) -> Path:
    """Where a server's workers spool their log records: `settings.spool_dir`, else a folder
    named after the log store's URL, so a spool is only ever replayed into its own store."""
    if settings.spool_dir:
        return Path(settings.spool_dir)
    url = settings.log_redis_url or settings.redis_url
    digest = hashlib.blake2b(url.encode(), digest_size=6).hexdigest()
    return Path(tempfile.gettempdir()) / "mlsys-spool" / digest
