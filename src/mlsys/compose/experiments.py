"""Online experiments from the outside: start, ramp and stop a rollout, export the log, report
an experiment (their CLI in `compose/cli/experiments.py`).

Every function that reaches the running system takes the log's Redis (`log_client`): the log
and the rollout state live there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlsys.platform.redis_client import RedisClient
from mlsys.platform.rollout import Guardrails, Mode, RolloutState, RolloutStore
from mlsys.recommender.online.experiment_results import Decision, ExperimentReport


def log_client(url: str, timeout_s: float = 5.0) -> RedisClient:
    """The log's Redis, asked once (PING): a bad URL or a store that does not answer is one
    line naming it, before a command changes anything."""
    import redis

    from mlsys.errors import MlsysError
    from mlsys.platform.redis_client import connect

    try:
        client = connect(url, timeout_s=timeout_s)
        client.ping()
    except (redis.RedisError, ValueError, OSError) as exc:
        raise MlsysError(f"--redis {url}: {type(exc).__name__}: {exc}") from None
    return client


@dataclass(frozen=True)
class Started:
    state: RolloutState
    champion_version: str
    challenger_version: str


def start_rollout(
    client: RedisClient,
    name: str,
    mode: Mode,
    challenger: str = "challenger",
    percent: float | None = None,
    guardrails: Guardrails | None = None,
) -> Started:
    """Set `name`'s rollout (both aliases must resolve in the registry); a ramp of the same
    mode and challenger keeps the experiment."""
    from mlsys.platform.registry import ModelRef, Registry, check_alias

    check_alias(challenger)
    registry = Registry()
    champion = registry.resolve(ModelRef(name, alias="champion"))
    other = registry.resolve(ModelRef(name, alias=challenger))
    state = RolloutStore(client).start(name, mode, challenger, percent, guardrails)
    return Started(state, champion.version, other.version)


def export_log(client: RedisClient, out: str | Path, batch: int = 50_000, trim: bool = True
               ) -> dict[str, int]:  # fmt: skip
    """The log's streams to OUT/NAME/part-*.parquet; rows written per stream."""
    from mlsys.platform.log_export import export
    from mlsys.recommender.serving.impressions import schemas

    return export(client, out, schemas(), batch=batch, trim=trim)


@dataclass(frozen=True)
class Reported:
    report: ExperimentReport
    out: Path
    stopped: bool  # `enforce` stopped the rollout


def report_experiment(
    client: RedisClient,
    name: str,
    experiment: str | None = None,
    out: str | Path | None = None,
    *,
    log_dir: str | Path | None = None,
    n_opt: float | None = None,
    enforce: bool = False,
) -> Reported:
    """Analyse `name`'s experiment (default: current or last) into OUT; with `enforce`, stop
    the rollout when a guardrail failed."""
    from mlsys.recommender.online.experiment_report import report

    store = RolloutStore(client)
    state = store.experiment(name, experiment)
    folder = Path(out or f"experiments/{state.experiment}")
    result = report(client, state, folder, log_dir=log_dir, n_opt=n_opt)
    # `enforce` acts on the experiment reported, and only while it is the one running.
    current = store.get(name)
    stopped = (
        enforce
        and result.decision is Decision.GUARDRAIL
        and current is not None
        and current.experiment == state.experiment
    )
    if stopped:
        store.stop(name)
    return Reported(result, folder, stopped)


def stop_rollout(client: RedisClient, name: str) -> RolloutState | None:
    """End `name`'s rollout (a registered model's only: a typo must not write history)."""
    from mlsys.platform.registry import Registry

    Registry().require(name)
    return RolloutStore(client).stop(name)
