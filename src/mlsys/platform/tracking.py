"""Experiment tracking on MLflow: what a training run logs, and where.

`MLFLOW_TRACKING_URI` chooses the store, as for any MLflow client; without it, a sqlite file
`mlflow.db` in the working directory (MLflow's own default). Artifacts go beside a sqlite
store, in `mlruns/<experiment>/`, whatever the working directory. `tracked_run(...)` yields
a `Run` that training code calls the same way whether tracking is on or off (`--no-track`),
so a training loop has one line per thing it logs and no branches.

MLflow costs ~2 s to import and creates or migrates its schema on first use, so it is
imported here, lazily, and nowhere on the request path or in `mlsys --help`. Creating the
schema is one process's job: the first command to open a new store does it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import subprocess
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

DEFAULT_DB = "mlflow.db"
# Versions recorded with every run: what a result may depend on.
LIBRARIES = (
    "mlsys",
    "torch",
    "numpy",
    "pyarrow",
    "onnx",
    "onnxruntime",
    "scikit-learn",
    "mlflow-skinny",
)


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else sqlite:///<cwd>/mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DEFAULT_DB).resolve()}"


def artifact_location(experiment: str, uri: str | None = None) -> str | None:
    """Artifacts next to a sqlite store (`<db folder>/mlruns/<experiment>`); MLflow's own
    default is `./mlruns` under whatever the working directory was. Other stores decide."""
    uri = uri or tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns" / experiment).as_uri()


def client(uri: str | None = None) -> Any:
    """An MlflowClient for `uri` (default `tracking_uri()`), tracking and registry alike."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A tracking server that refuses or hangs is an error within seconds, not after MLflow's
    # default 7 retries with backoff (a refused URI hung a command for minutes).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow import MlflowClient

    # After the import, which configures mlflow's logger: schema creation narrates at INFO.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def code_version() -> str:
    """The git commit of the source tree (with -dirty), else the installed package version."""
    src = Path(__file__).resolve().parents[3]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "-C", str(src), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
        return out.stdout.strip()
    return metadata.version("mlsys")


def environment_tags() -> dict[str, str]:
    tags = {"mlsys.code_version": code_version(), "mlsys.python": platform.python_version()}
    for lib in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[f"mlsys.lib.{lib}"] = metadata.version(lib)
    return tags


class Run:
    """One MLflow run, or nothing at all when `client` is None (tracking off)."""

    def __init__(self, client: Any | None, run_id: str | None) -> None:
        self.client = client
        self.run_id = run_id

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.client is not None:
            from mlflow.entities import Param

            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            self.client.log_batch(self.run_id, params=items)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.client is not None:
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, value)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        if self.client is not None:
            self.client.log_artifacts(self.run_id, str(folder), artifact_path)


@contextlib.contextmanager
def tracked_run(
    experiment: str,
    *,
    enabled: bool = True,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    uri: str | None = None,
) -> Iterator[Run]:
    """A run in `experiment` (created if new) that ends FINISHED, or FAILED on an exception;
    in the store at `uri` (default `tracking_uri()`)."""
    if not enabled:
        yield Run(None, None)
        return
    mlflow = client(uri)
    found = mlflow.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id
        if found
        else mlflow.create_experiment(experiment, artifact_location(experiment, uri))
    )
    info = mlflow.create_run(
        experiment_id, run_name=run_name, tags={**environment_tags(), **(tags or {})}
    ).info
    try:
        yield Run(mlflow, info.run_id)
    except BaseException:
        mlflow.set_terminated(info.run_id, "FAILED")
        raise
    mlflow.set_terminated(info.run_id, "FINISHED")
