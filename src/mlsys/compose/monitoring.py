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
    from mlsys.recommender.monitor import Columns

MONITOR_PORT = 9108


def add_commands(verbs: Verbs) -> None:
    from mlsys.recommender.monitor import SETTLE_S, WINDOW

    parsers = {}
    for noun, handler, text in (
        ("drift", _drift, "judge a model's logged traffic against its training reference"),
        ("run", _run, "judge windows as they arrive; export Prometheus gauges"),
    ):
        p = parsers[noun] = verbs.add("monitor", noun, handler, text)
        p.add_argument("name", metavar="NAME", help="registered model name, e.g. ranknet")
        p.add_argument("--redis", default=log_redis_url_from_env(), metavar="URL",
                       help=LOG_REDIS_HELP)  # fmt: skip
        p.add_argument("--window", type=int, default=WINDOW, metavar="N",
                       help=f"answers per window (default {WINDOW})")  # fmt: skip
        p.add_argument("--settle", type=float, default=SETTLE_S, metavar="S",
                       help="judge a window once its last answer is S seconds old, so that "
                       f"its clicks are in (default {SETTLE_S:g})")  # fmt: skip
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
    p = parsers["run"]
    p.add_argument("--port", type=int, default=MONITOR_PORT, help="Prometheus scrape port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--every", type=float, default=10.0, metavar="S", help="seconds between reads")
    p.add_argument("--once", action="store_true", help="one pass, print the gauges, exit")


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


def _drift(args: argparse.Namespace) -> int:
    from mlsys.compose.experiments import _client
    from mlsys.errors import MlsysError
    from mlsys.platform.event_log import CLICKS, IMPRESSIONS
    from mlsys.recommender.experiment import load_log
    from mlsys.recommender.monitor import (
        Monitor,
        WindowBuilder,
        load_reference,
        scan,
        summary,
        write_report,
    )

    client = _client(args.redis)
    impressions = load_log(client, IMPRESSIONS, args.log)
    clicks = load_log(client, CLICKS, args.log)
    mine = [r for r in impressions if str(r.get("sample_model", "")).startswith(args.name + "/")]
    version = args.version or (mine[-1]["sample_model"] if mine else None)
    if version is None:
        raise MlsysError(f"no monitored answers of {args.name} in the log")
    builder = WindowBuilder(args.window)
    builder.add(impressions, clicks)
    wins = [w for w in builder.complete(time.time() * 1000, args.settle) if w.version == version]
    reference = load_reference(reference_dir(version, args.reference))
    monitor = Monitor.for_reference(version, reference, args.window)
    result = summary(args.name, version, args.window, scan(monitor, wins))
    out = Path(args.out or f"monitoring/{version.replace('/', '-')}")
    write_report(result, reference, wins, out)
    if args.json:
        print(json.dumps(result))
        return 0
    print((out / "report.md").read_text().split("\n\nLatest window")[0])
    print(f"written to {out}/report.json, report.md, drift.png")
    return 0


def _run(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server

    from mlsys.compose.experiments import _client

    registry = CollectorRegistry()
    watcher = Watcher(args.name, args.window, args.settle, args.reference, registry)
    client = _client(args.redis)
    if args.once:
        watcher.tick(client)
        print(generate_latest(registry).decode(), end="")
        return 0
    start_http_server(args.port, addr=args.host, registry=registry)
    print(f"monitoring {args.name}: windows of {args.window}, gauges on "
          f"http://{args.host}:{args.port}/metrics", flush=True)  # fmt: skip
    while True:
        began = time.monotonic()
        for line in watcher.tick(client):
            print(line, flush=True)
        time.sleep(max(0.0, args.every - (time.monotonic() - began)))


class Watcher:
    """The state of `mlsys monitor run`: where it is in each stream, the windows being built,
    a calibrated monitor per version, and the gauges it sets."""

    def __init__(
        self, name: str, window: int, settle_s: float, reference: str | None, registry: Any
    ) -> None:
        from collections import deque

        from prometheus_client import Counter, Gauge

        from mlsys.recommender.monitor import Monitor, WindowBuilder

        self.name, self.settle_s, self.reference = name, settle_s, reference
        self.builder = WindowBuilder(window)
        self.monitors: dict[str, Monitor] = {}
        self.after: dict[str, str | None] = {}
        self.recent: deque[tuple[int, str, str]] = deque(maxlen=5 * window)  # ts, arm, id
        self.clicks: dict[str, int] = {}
        labels = ("model", "version")
        self.feature = Gauge("mlsys_feature_drift", "Latest window: a feature's drift severity "
                             "(statistic over its calibrated threshold; >1 is drift)",
                             (*labels, "feature"), registry=registry)  # fmt: skip
        self.prediction = Gauge("mlsys_prediction_drift", "Latest window: the predicted "
                                "score's drift severity", labels, registry=registry)  # fmt: skip
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
        from mlsys.platform.event_log import CLICKS, IMPRESSIONS, read_stream

        new = {}
        for stream in (IMPRESSIONS, CLICKS):
            new[stream] = list(read_stream(client, stream, after=self.after.get(stream)))
            if new[stream]:
                self.after[stream] = new[stream][-1]["stream_id"]
        prefix = self.name + "/"
        mine = [r for r in new[IMPRESSIONS] if str(r.get("model", "")).startswith(prefix)
                or str(r.get("champion", "")).startswith(prefix)]  # fmt: skip
        self.builder.add(mine, new[CLICKS])
        self._tally_ctr(mine, new[CLICKS])
        lines = []
        for w in self.builder.complete(time.time() * 1000, self.settle_s):
            lines.append(self._judge(w))
        self.last_run.set_to_current_time()
        return lines

    def _judge(self, w: Any) -> str:
        from mlsys.platform.drift import severity
        from mlsys.recommender.monitor import OUTCOMES, PREDICTION, Monitor, load_reference

        monitor = self.monitors.get(w.version)
        if monitor is None:
            reference: Columns = load_reference(reference_dir(w.version, self.reference))
            monitor = Monitor.for_reference(w.version, reference, self.builder.size)
            self.monitors[w.version] = monitor
        columns = monitor.judge(w)
        labels = (self.name, w.version)
        for key, c in columns.items():
            if key == PREDICTION:
                self.prediction.labels(*labels).set(severity(c))
            elif key in OUTCOMES:
                self.outcome.labels(*labels, key).set(severity(c))
            else:
                self.feature.labels(*labels, key).set(severity(c))
        flagged = sorted(k for k, c in columns.items() if c.drifted)
        self.detected.labels(*labels).set(1 if flagged else 0)
        self.windows.labels(*labels, "drift" if flagged else "ok").inc()
        return json.dumps({"version": w.version, "window": w.index, "last": w.last,
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
