"""The model a worker serves, followed by registry alias: swapped in between requests.

`mlsys serve --model models:/ranknet@champion` serves whatever version the alias names, and
keeps following it: MLflow's own server never picks up a new alias target without a restart
(mlflow#4039). Each worker process holds a `LiveModel`:

- at start it resolves the source and loads it (a folder is loaded once and never changes);
- a daemon thread re-resolves the alias every `refresh_s` seconds; when it names another
  version, the thread fetches the files, checks the registry's probe (the version scores the
  recorded input as it did at registration), loads it, and only then replaces `current`
  with one reference assignment. A request reads `current` once and uses that object to the
  end, so it never mixes two versions, and never waits for a load;
- a version that fails to fetch, probe or load is not swapped in: the old one keeps serving,
  the failure is logged and counted (`mlsys_model_swaps_total{outcome="failed"}`), and the
  same version is not retried until the alias moves again.

The loading is the domain's (`load`), the probe too; this module knows neither. The registry
(and so MLflow) is imported only when the source is a `models:/` URI, and never on the
request path. Workers only read the registry: `mlsys serve` opens it first, in the parent,
which creates the schema if it does not exist yet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from mlsys.platform.registry import ModelRef, Probe, parse_model_uri

T = TypeVar("T")
log = logging.getLogger("mlsys.models")


@dataclass(frozen=True)
class Served(Generic[T]):
    """One loaded version: `label` is what X-Model-Version says ("ranknet/3")."""

    label: str
    model: T


class LiveModel(Generic[T]):
    def __init__(
        self,
        source: str,
        load: Callable[[Path], T],
        *,
        kind: str,
        probe: Probe | None = None,
        refresh_s: float = 5.0,
        label_of_folder: Callable[[T], str] | None = None,
    ) -> None:
        self.source = source
        self.kind = kind
        self._load = load
        self._probe = probe
        self.refresh_s = refresh_s
        self.ref: ModelRef | None = parse_model_uri(source)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: str | None = None  # the version that failed last, not retried
        if self.ref is None:
            model = load(Path(source))
            label = label_of_folder(model) if label_of_folder else Path(source).name
            self.current: Served[T] = Served(f"{kind}/{label}", model)
        else:
            from mlsys.platform.registry import Registry

            self._registry = Registry()
            info = self._registry.resolve(self.ref)
            self.current = Served(
                f"{info.name}/{info.version}", load(self._registry.download(info))
            )
        _count(self.kind, self.current.label, "loaded")

    def start(self) -> None:
        """Follow the alias in the background (nothing to follow for a folder or a version)."""
        if self.ref is None or self.ref.alias is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._follow, name=f"follow {self.ref}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check_now(self) -> bool:
        """One round of following: True when a new version was swapped in."""
        assert self.ref is not None
        info = self._registry.resolve(self.ref)
        label = f"{info.name}/{info.version}"
        if label == self.current.label or info.version == self._failed:
            return False
        started = time.perf_counter()
        try:
            if self._probe is not None:
                self._registry.check_probe(info, self._probe)
            model = self._load(self._registry.download(info))
        except Exception as exc:  # any failure of foreign files: keep serving the old one
            self._failed = info.version
            _count(self.kind, label, "failed")
            log.error(
                "model swap failed; still serving the old version",
                extra={"fields": {"model": label, "serving": self.current.label,
                                  "error": f"{type(exc).__name__}: {exc}"}},
            )  # fmt: skip
            return False
        previous, self.current = self.current, Served(label, model)
        self._failed = None
        _count(self.kind, label, "ok", previous.label)
        log.info(
            "model swapped",
            extra={"fields": {"model": label, "previous": previous.label,
                              "load_ms": round((time.perf_counter() - started) * 1e3, 1)}},
        )  # fmt: skip
        return True

    def _follow(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.check_now()
            except Exception as exc:  # registry unreachable: try again next round
                log.warning(
                    "could not resolve the model alias",
                    extra={
                        "fields": {"source": self.source, "error": f"{type(exc).__name__}: {exc}"}
                    },
                )


def _count(kind: str, label: str, outcome: str, previous: str | None = None) -> None:
    from mlsys.platform.metrics import MODEL_INFO, MODEL_SWAPS

    if outcome != "failed":
        if previous is not None:
            MODEL_INFO.labels(kind, previous).set(0)
        MODEL_INFO.labels(kind, label).set(1)
    if outcome != "loaded":
        MODEL_SWAPS.labels(kind, outcome).inc()
