"""Drift monitoring of served models, from the log: a version's windows judged in one go
(`judge_drift`, for `mlsys monitor drift` and the pipeline's trigger) or as they arrive
(`Watcher`, for `mlsys monitor run`, exported as Prometheus gauges). Their CLI is
`compose/cli/monitor.py`.

Both read the impression and click log (the log's Redis, and exported parts) and judge each
model version's windows against the reference profile registered with that version
(`reference.parquet`, fetched from the registry by the version in the log), or the one in a
given model folder for a model served from a folder. The statistics are the domains' drift
monitors (`recommender/online/drift_monitor.py`, `tagger/online/drift_monitor.py`) on
`platform/drift.py`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlsys.errors import MlsysError
from mlsys.platform.drift import severity
from mlsys.platform.drift_report import Columns, Group, WindowVerdict
from mlsys.platform.event_log import LogRecord
from mlsys.platform.redis_client import RedisClient

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from mlsys.recommender.online.drift_monitor import Window


def served_by(name: str, record: LogRecord, *keys: str) -> bool:
    """Whether a logged record names a version of model `name` ("ranknet/3") under any of
    `keys`."""
    return any(str(record.get(key, "")).startswith(name + "/") for key in keys)


def reference_dir(label: str, override: str | None) -> Path:
    """The model folder of a logged version label ("ranknet/3"): the registry's files."""
    if override is not None:
        return Path(override)
    from mlsys.platform.registry import Registry, RegistryError

    name, _, version = label.rpartition("/")
    if not name or not version.isdigit():
        raise MlsysError(
            f"{label!r} is not a registered version; pass --reference with its model folder"
        )
    registry = Registry()
    try:
        return registry.download(registry.version(name, version))
    except RegistryError as exc:
        raise MlsysError(f"{label}: {exc}; pass --reference with its model folder") from exc


def write_reference(model_dir: str | Path, data_dir: str | Path) -> Path:
    """A model folder's reference profile (training writes it too), by the model's kind."""
    folder = Path(model_dir)
    if (folder / "tagger.json").is_file():
        from mlsys.tagger.training.reference import write_reference as write_tagger_reference

        return write_tagger_reference(folder, data_dir)
    if (folder / "model.pt").is_file():
        from mlsys.recommender.data.dataset import open_dataset
        from mlsys.recommender.data.stream import FeatureTables
        from mlsys.recommender.serving.served_model import load_model
        from mlsys.recommender.training.reference import write_reference as write_ranknet_reference

        dataset = open_dataset(data_dir)
        tables = FeatureTables.load(dataset)
        return write_ranknet_reference(folder, dataset, tables, load_model(folder).scorer)
    raise MlsysError(f"{folder}: neither a RankNet (model.pt) nor a tagger (tagger.json)")


@dataclass(frozen=True)
class JudgedTraffic:
    """One version's logged traffic, cut into windows and judged against its reference."""

    version: str
    window: int  # answers per window
    reference: Columns
    windows: list[WindowVerdict]
    live: dict[int, Columns]  # each window's columns, for the report's histograms


def judge_drift(
    client: RedisClient,
    name: str,
    *,
    window: int | None = None,
    settle: float | None = None,
    log_dir: str | None = None,
    version: str | None = None,
    reference: str | None = None,
) -> JudgedTraffic:
    """The windows of `name`'s latest answering version (or `version`): a tagger's when its
    answers are in the tag stream, else a recommender's."""
    judged = tagger_windows(client, name, window=window, version=version, reference=reference)
    if judged is None:
        judged = recommender_windows(client, name, window=window, settle=settle,
                                     log_dir=log_dir, version=version,
                                     reference=reference)  # fmt: skip
    if judged is None:
        raise MlsysError(f"no monitored answers of {name} in the log")
    return judged


def tagger_windows(
    client: RedisClient,
    name: str,
    *,
    window: int | None = None,
    version: str | None = None,
    reference: str | None = None,
) -> JudgedTraffic | None:
    from mlsys.platform.event_log import TAGS, read_stream
    from mlsys.tagger.online import drift_monitor as tagger

    tags = [r for r in read_stream(client, TAGS) if served_by(name, r, "model")]
    if not tags:
        return None
    version = version or str(tags[-1]["model"])
    size = window or tagger.WINDOW
    profile = tagger.load_reference(reference_dir(version, reference))
    judged = tagger.TagMonitor.for_reference(version, profile, size).add(tags)
    return JudgedTraffic(version, size, profile, [w for w, _ in judged],
                         {w.index: columns for w, columns in judged})  # fmt: skip


def recommender_windows(
    client: RedisClient,
    name: str,
    *,
    window: int | None = None,
    settle: float | None = None,
    log_dir: str | None = None,
    version: str | None = None,
    reference: str | None = None,
) -> JudgedTraffic | None:
    """The latest version of `name` that served monitored answers (or `version`), judged;
    None when no version did."""
    from mlsys.platform.event_log import CLICKS, IMPRESSIONS
    from mlsys.recommender.online.drift_monitor import (
        SETTLE_S,
        WINDOW,
        Monitor,
        WindowBuilder,
        load_reference,
        scan,
    )
    from mlsys.recommender.online.experiment import load_log

    size = window or WINDOW
    settle = SETTLE_S if settle is None else settle
    impressions = load_log(client, IMPRESSIONS, log_dir)
    clicks = load_log(client, CLICKS, log_dir)
    mine = [r for r in impressions if served_by(name, r, "sample_model")]
    version = version or (str(mine[-1]["sample_model"]) if mine else None)
    if version is None:
        return None
    builder = WindowBuilder(size)
    builder.add(impressions, clicks)
    wins = [w for w in builder.complete(time.time() * 1000, settle) if w.version == version]
    profile = load_reference(reference_dir(version, reference))
    judged = scan(Monitor.for_reference(version, profile, size), wins)
    return JudgedTraffic(version, size, profile, judged, {w.index: w.inputs for w in wins})


class Watcher:
    """The state of `mlsys monitor run`: where it is in each stream, the windows being built,
    a calibrated monitor per version (recommender or tagger, by the stream its answers are
    in), and the gauges it sets."""

    def __init__(
        self,
        name: str,
        window: int | None,
        settle_s: float | None,
        reference: str | None,
        registry: CollectorRegistry,
    ) -> None:
        from collections import deque

        from prometheus_client import Counter, Gauge

        from mlsys.recommender.online.drift_monitor import SETTLE_S, WINDOW, Monitor, WindowBuilder
        from mlsys.tagger.online.drift_monitor import TagMonitor

        self.name, self.window, self.reference = name, window, reference
        self.settle_s = SETTLE_S if settle_s is None else settle_s
        self.builder = WindowBuilder(window or WINDOW)
        self.monitors: dict[str, Monitor] = {}
        self.tag_monitors: dict[str, TagMonitor] = {}
        self.after: dict[str, str | None] = {}
        self.recent: deque[tuple[int, str, str]] = deque(
            maxlen=5 * (window or WINDOW)
        )  # ts, arm, id
        self.clicks: dict[str, int] = {}
        labels = ("model", "version")
        self.feature = Gauge("mlsys_feature_drift", "Latest window: an input's drift severity "
                             "(statistic over its calibrated threshold; >1 is drift)",
                             (*labels, "feature"), registry=registry)  # fmt: skip
        self.prediction = Gauge("mlsys_prediction_drift", "Latest window: drift severity "
                                "of a model output", (*labels, "output"),
                                registry=registry)  # fmt: skip
        self.outcome = Gauge("mlsys_outcome_drift", "Latest window: drift severity of clicks "
                             "per answer (ctr) and the clicked restaurants' scores",
                             (*labels, "outcome"), registry=registry)  # fmt: skip
        self.detected = Gauge("mlsys_drift_detected", "1 when the latest window drifted",
                              labels, registry=registry)  # fmt: skip
        self.windows = Counter("mlsys_monitor_windows", "Windows judged, by verdict",
                               (*labels, "verdict"), registry=registry)  # fmt: skip
        self.ctr = Gauge("mlsys_ctr", "Clicks per answer over the latest settled answers, by arm",
                         ("model", "arm"), registry=registry)  # fmt: skip
        self.last_run = Gauge("mlsys_monitor_last_run_timestamp_seconds",
                              "When the monitor last read the log", registry=registry)  # fmt: skip

    def tick(self, client: RedisClient) -> list[str]:
        """Read what is new, judge the windows that completed; one line per window."""
        from mlsys.platform.event_log import CLICKS, IMPRESSIONS, TAGS, read_stream

        new = {}
        for stream in (IMPRESSIONS, CLICKS, TAGS):
            new[stream] = list(read_stream(client, stream, after=self.after.get(stream)))
            if new[stream]:
                self.after[stream] = new[stream][-1]["stream_id"]
        mine = [r for r in new[IMPRESSIONS] if served_by(self.name, r, "model", "champion")]
        self.builder.add(mine, new[CLICKS])
        self._tally_ctr(mine, new[CLICKS])
        lines = [self._recommender(w) for w in self.builder.complete(time.time() * 1000,
                                                                     self.settle_s)]  # fmt: skip
        tags = [r for r in new[TAGS] if served_by(self.name, r, "model")]
        lines += self._tagger(tags)
        self.last_run.set_to_current_time()
        return lines

    def _recommender(self, w: Window) -> str:
        from mlsys.recommender.online.drift_monitor import Monitor, load_reference, scan

        monitor = self.monitors.get(w.version)
        if monitor is None:
            reference = load_reference(reference_dir(w.version, self.reference))
            monitor = Monitor.for_reference(w.version, reference, self.builder.size)
            self.monitors[w.version] = monitor
        return self._publish(w.version, scan(monitor, [w])[0])

    def _tagger(self, records: list[LogRecord]) -> list[str]:
        from mlsys.tagger.online import drift_monitor as tagger

        lines = []
        for version in dict.fromkeys(r["model"] for r in records):
            monitor = self.tag_monitors.get(version)
            if monitor is None:
                reference = tagger.load_reference(reference_dir(version, self.reference))
                size = self.window or tagger.WINDOW
                monitor = tagger.TagMonitor.for_reference(version, reference, size)
                self.tag_monitors[version] = monitor
            for judged, _ in monitor.add(records):
                lines.append(self._publish(version, judged))
        return lines

    def _publish(self, version: str, judged: WindowVerdict) -> str:
        labels = (self.name, version)
        gauges = {Group.INPUTS: self.feature, Group.PREDICTION: self.prediction,
                  Group.OUTCOME: self.outcome}  # fmt: skip
        for key, c in judged.columns.items():
            gauges[judged.roles.group(key)].labels(*labels, key).set(round(severity(c), 4))
        self.detected.labels(*labels).set(1 if judged.drifted else 0)
        self.windows.labels(*labels, "drift" if judged.drifted else "ok").inc()
        flagged = judged.features + judged.prediction_drift + judged.outcome_drift
        return json.dumps({"version": version, "window": judged.index, "last": judged.last,
                           "drifted": flagged})  # fmt: skip

    def _tally_ctr(self, impressions: list[LogRecord], clicks: list[LogRecord]) -> None:
        for r in impressions:
            if len(self.recent) == self.recent.maxlen:
                self.clicks.pop(self.recent[0][2], None)
            self.recent.append((int(r["ts_ms"]), r["arm"], r["request_id"]))
            self.clicks.setdefault(r["request_id"], 0)
        for c in clicks:
            if c["request_id"] in self.clicks:
                self.clicks[c["request_id"]] += 1
        settled = time.time() * 1000 - self.settle_s * 1000
        answers: dict[str, list[int]] = {}
        for ts, arm, request_id in self.recent:
            if ts <= settled:
                answers.setdefault(arm, []).append(self.clicks.get(request_id, 0))
        for arm, counts in answers.items():
            self.ctr.labels(self.name, arm).set(sum(counts) / len(counts))
