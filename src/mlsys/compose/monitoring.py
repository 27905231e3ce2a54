"""CLI of drift monitoring: `mlsys monitor drift NAME` (a report) and `mlsys monitor run NAME`
(windows judged as they arrive, exported as Prometheus gauges).

Both read the impression and click log (`--redis`, and exported parts with `--log DIR`) and
judge each model version's windows against the reference profile registered with that
version (`reference.parquet`, fetched from the registry by the version in the log), or the one
in `--reference DIR` for a model served from a folder. The statistics are the recommender's
`monitor.py` on `platform/drift.py`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsys.compose.experiments import LOG_REDIS_HELP
from mlsys.platform.settings import log_redis_url_from_env

if TYPE_CHECKING:
    from mlsys.cli import Verbs

MONITOR_PORT = 9108


def add_commands(verbs: Verbs) -> None:
    # The defaults live with each domain's monitor (recommender/monitor.py, tagger/monitor.py)
    # and are resolved in the handlers: importing those here would load numpy and torch for
    # `mlsys --help`.
    parsers = {}
    for noun, handler, text in (
        ("drift", _drift, "judge a model's logged traffic against its training reference"),
        ("run", _run, "judge windows as they arrive; export Prometheus gauges"),
    ):
        p = parsers[noun] = verbs.add("monitor", noun, handler, text)
        p.add_argument("name", metavar="NAME", help="registered model name, e.g. ranknet")
        p.add_argument("--redis", default=log_redis_url_from_env(), metavar="URL",
                       help=LOG_REDIS_HELP)  # fmt: skip
        p.add_argument("--window", type=int, default=None, metavar="N",
                       help="answers per window (default: 500 for a recommender, 200 for a "
                       "tagger)")  # fmt: skip
        p.add_argument("--settle", type=float, default=None, metavar="S",
                       help="judge a recommender window once its last answer is S seconds "
                       "old, so that its clicks are in (default 60)")  # fmt: skip
        p.add_argument("--reference", default=None, metavar="DIR",
                       help="the model folder whose reference.parquet to use (default: the "
                       "registered version's)")  # fmt: skip
    p = parsers["drift"]
    p.add_argument("--version", default=None,
                   help="the version to judge, as in X-Model-Version (default: the latest "
                   "answering one)")  # fmt: skip
    p.add_argument("--log", default=None, metavar="DIR",
                   help="also read the parquet parts of `mlsys log export DIR`")  # fmt: skip
    p.add_argument("--out", default=None, metavar="DIR",
                   help="report folder (default monitoring/VERSION)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = verbs.add("monitor", "reference", _reference,
                  "write a model folder's reference profile (training does it too)")  # fmt: skip
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("data_dir", metavar="DATA_DIR", help="the data the model was trained on")

    p = parsers["run"]
    p.add_argument("--port", type=int, default=MONITOR_PORT, help="Prometheus scrape port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--every", type=float, default=10.0, metavar="S", help="seconds between reads")
    p.add_argument("--once", action="store_true", help="one pass, print the gauges, exit")


def served_by(name: str, record: dict[str, Any], *keys: str) -> bool:
    """Whether a logged record names a version of model `name` ("ranknet/3") under any of
    `keys`."""
    return any(str(record.get(key, "")).startswith(name + "/") for key in keys)


def reference_dir(label: str, override: str | None) -> Path:
    """The model folder of a logged version label ("ranknet/3"): the registry's files."""
    if override is not None:
        return Path(override)
    from mlsys.errors import MlsysError
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


def _reference(args: argparse.Namespace) -> int:
    from mlsys.errors import MlsysError

    folder = Path(args.model_dir)
    started = time.perf_counter()
    if (folder / "tagger.json").is_file():
        from mlsys.tagger.monitor import write_reference

        path = write_reference(folder, args.data_dir)
    elif (folder / "model.pt").is_file():
        from mlsys.recommender.data import open_dataset
        from mlsys.recommender.reference import write_reference as write_ranknet_reference
        from mlsys.recommender.service import load_model
        from mlsys.recommender.stream import FeatureTables

        dataset = open_dataset(args.data_dir)
        tables = FeatureTables.load(dataset)
        path = write_ranknet_reference(folder, dataset, tables, load_model(folder).scorer)
    else:
        raise MlsysError(f"{folder}: neither a RankNet (model.pt) nor a tagger (tagger.json)")
    print(f"wrote {path} in {time.perf_counter() - started:.1f} s")
    return 0


def _drift(args: argparse.Namespace) -> int:
    from mlsys.compose.experiments import log_client
    from mlsys.errors import MlsysError
    from mlsys.platform.drift_report import summary, write_report
    from mlsys.platform.event_log import TAGS, read_stream

    client = log_client(args.redis)
    tags = [r for r in read_stream(client, TAGS) if served_by(args.name, r, "model")]
    if tags:  # a tagger's answers
        from mlsys.tagger import monitor as tagger

        version = args.version or tags[-1]["model"]
        size = args.window or tagger.WINDOW
        reference = tagger.load_reference(reference_dir(version, args.reference))
        judged = tagger.TagMonitor.for_reference(version, reference, size).add(tags)
        windows = [w for w, _ in judged]
        live = {w["index"]: columns for w, columns in judged}
    else:
        version, size, reference, windows, live = _recommender_windows(args, client)
    if version is None:
        raise MlsysError(f"no monitored answers of {args.name} in the log")
    result = summary(args.name, version, size, windows)
    out = Path(args.out or f"monitoring/{version.replace('/', '-')}")
    write_report(result, reference, live, out)
    if args.json:
        print(json.dumps(result))
        return 0
    print((out / "report.md").read_text().split("\n\nLatest window")[0])
    print(f"written to {out}/report.json, report.md, drift.png")
    return 0


def _recommender_windows(args: argparse.Namespace, client: Any) -> tuple[Any, ...]:
    return recommender_windows(client, args.name, window=args.window, settle=args.settle,
                               log_dir=args.log, version=args.version,
                               reference=args.reference)  # fmt: skip


def recommender_windows(
    client: Any,
    name: str,
    *,
    window: int | None = None,
    settle: float | None = None,
    log_dir: str | None = None,
    version: str | None = None,
    reference: str | None = None,
) -> tuple[Any, ...]:
    """(version, window size, reference columns, judged windows, live columns per window) of
    the latest version of `name` that served monitored answers (or `version`)."""
    from mlsys.platform.event_log import CLICKS, IMPRESSIONS
    from mlsys.recommender.experiment import load_log
    from mlsys.recommender.monitor import (
        SETTLE_S,
        WINDOW,
        Monitor,
        WindowBuilder,
        load_reference,
        scan,
    )

    size = window or WINDOW
    settle = SETTLE_S if settle is None else settle
    impressions = load_log(client, IMPRESSIONS, log_dir)
    clicks = load_log(client, CLICKS, log_dir)
    mine = [r for r in impressions if served_by(name, r, "sample_model")]
    version = version or (mine[-1]["sample_model"] if mine else None)
    if version is None:
        return None, size, {}, [], {}
    builder = WindowBuilder(size)
    builder.add(impressions, clicks)
    wins = [w for w in builder.complete(time.time() * 1000, settle) if w.version == version]
    profile = load_reference(reference_dir(version, reference))
    judged = scan(Monitor.for_reference(version, profile, size), wins)
    return version, size, profile, judged, {w.index: w.inputs for w in wins}


def _run(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server

    from mlsys.compose.experiments import log_client

    registry = CollectorRegistry()
    watcher = Watcher(args.name, args.window, args.settle, args.reference, registry)
    client = log_client(args.redis)
    if args.once:
        watcher.tick(client)
        print(generate_latest(registry).decode(), end="")
        return 0
    start_http_server(args.port, addr=args.host, registry=registry)
    print(f"monitoring {args.name}: gauges on http://{args.host}:{args.port}/metrics",
          flush=True)  # fmt: skip
    while True:
        began = time.monotonic()
        for line in watcher.tick(client):
            print(line, flush=True)
        time.sleep(max(0.0, args.every - (time.monotonic() - began)))


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
        registry: Any,
    ) -> None:
        from collections import deque

        from prometheus_client import Counter, Gauge

        from mlsys.recommender.monitor import SETTLE_S, WINDOW, Monitor, WindowBuilder
        from mlsys.tagger.monitor import TagMonitor

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

    def tick(self, client: Any) -> list[str]:
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

    def _recommender(self, w: Any) -> str:
        from mlsys.recommender.monitor import ROLES, Monitor, load_reference, scan

        monitor = self.monitors.get(w.version)
        if monitor is None:
            reference = load_reference(reference_dir(w.version, self.reference))
            monitor = Monitor.for_reference(w.version, reference, self.builder.size)
            self.monitors[w.version] = monitor
        return self._publish(w.version, scan(monitor, [w])[0], ROLES)

    def _tagger(self, records: list[dict[str, Any]]) -> list[str]:
        from mlsys.tagger import monitor as tagger

        lines = []
        for version in dict.fromkeys(r["model"] for r in records):
            monitor = self.tag_monitors.get(version)
            if monitor is None:
                reference = tagger.load_reference(reference_dir(version, self.reference))
                size = self.window or tagger.WINDOW
                monitor = tagger.TagMonitor.for_reference(version, reference, size)
                self.tag_monitors[version] = monitor
            for judged, _ in monitor.add(records):
                lines.append(self._publish(version, judged, tagger.ROLES))
        return lines

    def _publish(self, version: str, judged: dict[str, Any], roles: Any) -> str:
        labels = (self.name, version)
        for key, c in judged["columns"].items():
            group = roles.group(key)
            gauge = {"inputs": self.feature, "prediction": self.prediction}.get(group, self.outcome)
            gauge.labels(*labels, key).set(c["severity"])
        self.detected.labels(*labels).set(1 if judged["drifted"] else 0)
        self.windows.labels(*labels, "drift" if judged["drifted"] else "ok").inc()
        flagged = judged["features"] + judged["prediction_drift"] + judged["outcome_drift"]
        return json.dumps({"version": version, "window": judged["index"], "last": judged["last"],
                           "drifted": flagged})  # fmt: skip

    def _tally_ctr(self, impressions: list[dict[str, Any]], clicks: list[dict[str, Any]]) -> None:
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
