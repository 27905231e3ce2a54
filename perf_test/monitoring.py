"""Drift monitoring measured (issue 17): false alarms, detection of every kind of shift, the
tagger's corruptions, a live detection through the real stack, and the cost to serving.

    flock /tmp/mlsys-heavy.lock .venv/bin/python perf_test/monitoring.py \
        --data /work/data/full --champion MODEL_DIR --challenger MODEL_DIR \
        --tagger /work/runs/tagger --garments /work/data/garments

Phases (`--phases`, all by default):

- `false-alarms`: `--clean` answers of undrifted traffic replayed through the serving code
  (`recommender/online/replay.py`), cut into windows of 500 and judged as `mlsys monitor drift`
  judges them: the share of windows flagged (target <= 1 % over >= 200 windows); beside it
  what the same windows would give with each column calibrated alone;
- `detection`: per kind and strength of `mlsys generate drift`, and per model (the task's
  champion and a well-trained challenger), clean traffic (at least the 10 windows the outcome
  baseline needs) then the shifted world from a known answer on; at `--offsets` different
  shift points. Requests to detect = the last answer of the first flagged window minus the
  shift (target <= 2,000), and the columns it named;
- `tagger`: the test images the reference profile does not hold, served as /tag serves them
  (decode, model, record), clean and under each corruption of the robustness benchmark, in
  windows of 200;
- `live`: the stack as the demo runs it (registry alias, 2 workers, the log's Redis),
  simulated users on the clean world for `--live-clean` s, then `mlsys features load` of the
  covariate world and its users for `--live-drift` s; `mlsys monitor drift --json`;
- `overhead`: 30 rps for 30 s, A,B,C twice: no log; log without scored rows
  (`--monitor-sample 0`); log with a scored row per answer and `mlsys monitor run` reading
  the log beside the API.

Writes perf_test/results/monitoring.json (and the live report's files to --docs).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

STRENGTHS = {
    "covariate": (0.25, 0.5, 1.0),
    "new-restaurants": (0.1, 0.3),
    "concept": (0.5, 1.0),
    "prior": (2.0, 5.0),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--champion", required=True)
    parser.add_argument("--challenger", required=True)
    parser.add_argument("--tagger", required=True)
    parser.add_argument("--garments", required=True)
    parser.add_argument("--clean", type=int, default=101_000, help="answers, false alarms")
    parser.add_argument("--offsets", type=int, default=3, help="shift points per scenario")
    parser.add_argument("--live-clean", type=float, default=150.0)
    parser.add_argument("--live-drift", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--phases", default="false-alarms,detection,tagger,live,overhead")
    parser.add_argument("--out", default="perf_test/results")
    parser.add_argument("--docs", default="docs/monitoring")
    args = parser.parse_args()
    phases = args.phases.split(",")
    out, docs = Path(args.out), Path(args.docs)
    out.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mlsys-monitoring-"))
    results: dict[str, Any] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "machine": f"{os.cpu_count()} cores",
    }
    if "false-alarms" in phases:
        results["false_alarms"] = false_alarms(args)
    if "detection" in phases:
        results["detection"] = detection(args, work)
    if "tagger" in phases:
        results["tagger"] = tagger(args)
    if "live" in phases:
        results["live"] = live(args, work, docs)
    if "overhead" in phases:
        results["overhead"] = overhead(args, work)
    name = "monitoring" if len(phases) == 5 else "monitoring-" + "-".join(sorted(phases))
    (out / f"{name}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    shutil.copy(out / f"{name}.json", docs / f"{name}.json")
    print(f"wrote {out / name}.json", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _judge(monitor: Any, impressions: list[Any], clicks: list[Any]) -> list[dict[str, Any]]:
    from mlsys.recommender.online.drift_monitor import WindowBuilder, scan

    builder = WindowBuilder(monitor.size)
    builder.add(impressions, clicks)
    # Its own outcome baseline, the calibrated inputs reused.
    judged: list[dict[str, Any]] = scan(
        monitor.fresh(), builder.complete(now_ms=float("inf"), settle_s=0)
    )
    return judged


def false_alarms(args: argparse.Namespace) -> dict[str, Any]:
    from mlsys.platform.drift import calibrate, column_drift
    from mlsys.recommender.online.drift_monitor import WINDOW, WindowBuilder
    from mlsys.recommender.online.replay import load_world, replay
    from mlsys.recommender.serving.served_model import load_model

    print(f"1. false alarms: {args.clean} clean answers", flush=True)
    began = time.monotonic()
    monitor = _monitor(args.champion)
    impressions, clicks = replay([(load_world(args.data), args.clean)],
                                 load_model(args.champion).scorer, monitor.version)  # fmt: skip
    judged = _judge(monitor, impressions, clicks)
    flagged = [w for w in judged if w.drifted]
    # The same windows, each column at its own calibrated threshold (no family widening).
    alone = {k: calibrate(v, WINDOW) for k, v in monitor.inputs.columns.items()}
    builder = WindowBuilder(WINDOW)
    builder.add(impressions, clicks)
    alone_flagged = sum(
        any(column_drift(monitor.inputs.columns[k], w.inputs[k], alone[k]).drifted for k in alone)
        for w in builder.complete(float("inf"), 0)
    )
    result = {
        "answers": args.clean,
        "windows": len(judged),
        "window": WINDOW,
        "flagged": len(flagged),
        "share_flagged": len(flagged) / len(judged),
        "flagged_windows": [
            {k: w[k] for k in ("index", "features", "prediction_drift", "outcome_drift")}
            for w in flagged
        ],
        "flagged_if_each_column_alone": alone_flagged,
        "outcome_windows_judged": sum(w.outcome_judged for w in judged),
        "seconds": round(time.monotonic() - began, 1),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "flagged_windows"}), flush=True)
    return result


_MONITORS: dict[str, Any] = {}


def _monitor(model_dir: str) -> Any:
    from mlsys.recommender.online.drift_monitor import Monitor, load_reference

    if model_dir not in _MONITORS:
        version = "ranknet/" + Path(model_dir).name
        _MONITORS[model_dir] = Monitor.for_reference(version, load_reference(model_dir))
    return _MONITORS[model_dir]


def detection(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from mlsys.recommender.data.drift_scenarios import generate_drift, shifted_features
    from mlsys.recommender.online.replay import load_world, replay
    from mlsys.recommender.serving.served_model import load_model

    print("2. detection per kind, strength and model", flush=True)
    clean = load_world(args.data)
    rows = []
    for kind, strengths in STRENGTHS.items():
        for strength in strengths:
            world_dir = work / f"{kind}-{strength:g}"
            generate_drift(args.data, world_dir, kind, strength, progress=False)
            world = load_world(world_dir)
            expected = set(shifted_features(kind))
            for model_dir in (args.champion, args.challenger):
                monitor = _monitor(model_dir)
                scorer = load_model(model_dir).scorer
                delays: list[int | None] = []
                named: set[str] = set()
                extra: set[str] = set()
                preds: set[str] = set()
                outcomes: set[str] = set()
                for k in range(args.offsets):
                    shift = 5500 + 170 * k  # past the 10-window outcome baseline, mid-window
                    impressions, clicks = replay([(clean, shift), (world, 2500)], scorer,
                                                 monitor.version, seed=k)  # fmt: skip
                    judged = _judge(monitor, impressions, clicks)
                    after = [w for w in judged if int(w.last.split("-")[0]) > shift]
                    alarm = next((w for w in after if w.drifted), None)
                    early = [w.index for w in judged if w.drifted and w not in after]
                    if alarm is None:
                        delays.append(None)
                        continue
                    delays.append(int(alarm.last.split("-")[0]) - shift)
                    named |= set(alarm.features) & expected
                    extra |= set(alarm.features) - expected
                    preds |= set(alarm.prediction_drift)
                    outcomes |= set(alarm.outcome_drift)
                    if early:
                        extra.add(f"(alarm before the shift: windows {early})")
                found = [d for d in delays if d is not None]
                row = {
                    "kind": kind, "strength": strength, "model": Path(model_dir).name,
                    "detected": f"{len(found)}/{len(delays)}",
                    "requests_to_detect_median": float(np.median(found)) if found else None,
                    "requests_to_detect_max": max(found) if found else None,
                    "features_flagged": sorted(named), "other_columns_flagged": sorted(extra),
                    "prediction_drift": sorted(preds), "outcome_drift": sorted(outcomes),
                    "expected_features": len(expected),
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _encode(img: Any, quality: float) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=round(quality))
    return buf.getvalue()


def tagger(args: argparse.Namespace) -> dict[str, Any]:
    """Served as /tag serves: decode_image, describe, tag_record. Each corruption is
    re-encoded as JPEG at the photo's own quality (JPEG 30: at 30), as a phone would send it."""
    from PIL import Image

    from mlsys.tagger.data.photo_stats import jpeg_quality, tag_record
    from mlsys.tagger.inference import TaggerModel
    from mlsys.tagger.online.drift_monitor import TagMonitor, load_reference
    from mlsys.tagger.preprocess import decode_image
    from mlsys.tagger.schema import open_garments
    from mlsys.tagger.training.augment import CORRUPTIONS
    from mlsys.tagger.training.reference import REFERENCE_ROWS

    print("3. tagger: clean test images and each corruption", flush=True)
    model = TaggerModel(args.tagger)
    reference = load_reference(args.tagger)
    calibrated = TagMonitor.for_reference("tagger/1", reference)
    data = open_garments(args.garments)
    uuids = data.test_uuids[REFERENCE_ROWS:]  # the reference is the first REFERENCE_ROWS
    out: dict[str, Any] = {"images": len(uuids), "window": calibrated.size,
                           "reference_rows": len(next(iter(reference.values())))}  # fmt: skip
    for name in ("clean", *CORRUPTIONS):
        began = time.monotonic()
        records = []
        for i, uuid in enumerate(uuids):
            raw = data.image_bytes(uuid)
            if name != "clean":
                src = Image.open(io.BytesIO(raw))
                quality = 30 if name in ("jpeg_q30", "all_four") else jpeg_quality(src)
                raw = _encode(CORRUPTIONS[name](src.convert("RGB"), random.Random(i)), quality)
            img = decode_image(raw)
            records.append(tag_record(raw, img, model.describe(model.predict_images([img])),
                                      "tagger/1"))  # fmt: skip
        judged = [w for w, _ in calibrated.fresh().add(records)]
        flagged = [w for w in judged if w.drifted]
        columns = sorted({c for w in flagged for c in w.features + w.prediction_drift})
        out[name] = {"windows": len(judged), "flagged": len(flagged), "columns": columns,
                     "seconds": round(time.monotonic() - began, 1)}  # fmt: skip
        print(name, json.dumps(out[name]), flush=True)
    return out


def cli(*words: str, capture: bool = False) -> str:
    done = subprocess.run([sys.executable, "-m", "mlsys", *words], check=True,
                          capture_output=capture, text=True)  # fmt: skip
    return done.stdout if capture else ""


def live(args: argparse.Namespace, work: Path, docs: Path) -> dict[str, Any]:
    from mlsys.compose.stack import running_stack
    from mlsys.recommender.data.drift_scenarios import generate_drift
    from mlsys.recommender.online.simulate import simulate

    print("4. live: clean users, then the covariate world loaded into the running store",
          flush=True)  # fmt: skip
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLSYS_MODEL_CACHE"] = str(work / "cache")
    cli("models", "register", args.champion, "--name", "ranknet", "--alias", "champion")
    world = work / "live-covariate"
    generate_drift(args.data, world, "covariate", 0.5, progress=False)
    with running_stack(args.data, "models:/ranknet@champion", work / "stack", workers=2,
                       access_log=False, progress=False, log_redis=True) as stack:  # fmt: skip
        assert stack.log_redis is not None
        before = simulate(stack.api_url, args.data, args.rate, args.live_clean, seed=1)
        began = time.monotonic()
        cli("features", "load", str(world), "--redis", stack.redis.url)
        load_s = time.monotonic() - began
        shifted_ms = time.time() * 1000  # from here on the store serves the new world
        after = simulate(stack.api_url, world, args.rate, args.live_drift, seed=2)
        report = json.loads(cli("monitor", "drift", "ranknet", "--redis", stack.log_redis.url,
                                "--settle", "0", "--out", str(work / "live-report"), "--json",
                                capture=True))  # fmt: skip
        import redis

        from mlsys.platform.event_log import IMPRESSIONS, entry_key, read_stream

        logged = list(read_stream(redis.Redis.from_url(stack.log_redis.url), IMPRESSIONS))
    ts_of = {r["stream_id"]: r["ts_ms"] for r in logged}
    after_shift = [w for w in report["windows"] if ts_of[w["last"]] > shifted_ms]
    alarm = next((w for w in after_shift if w["drifted"]), None)
    detect = None
    if alarm is not None:  # answers logged after the shift, up to the alarm window's last
        last = entry_key(alarm["last"])
        detect = sum(1 for r in logged if r["ts_ms"] > shifted_ms
                     and entry_key(r["stream_id"]) <= last)  # fmt: skip
    for name in ("report.md", "drift.png"):
        shutil.copy(work / "live-report" / name, docs / f"live-{name}")
    result = {
        "clean_answers": before["ok"],
        "drifted_answers": after["ok"],
        "features_load_s": round(load_s, 1),
        "windows": len(report["windows"]),
        "first_alarm_window": None if alarm is None else alarm["index"],
        "alarm_features": None if alarm is None else alarm["features"],
        "requests_to_detect": detect,
        "flagged_windows": {
            w["index"]: w["features"] + w["prediction_drift"] + w["outcome_drift"]
            for w in report["windows"]
            if w["drifted"]
        },
        "first_window_after_shift": after_shift[0]["index"] if after_shift else None,
        "statuses": [before["statuses"], after["statuses"]],
    }
    print(json.dumps(result), flush=True)
    return result


def overhead(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from mlsys.compose.loadtest import run_once
    from mlsys.compose.stack import running_stack, start_api, stop_process, wait_ready

    print("5. overhead at 30 rps: no log / log without rows / log + rows + monitor run",
          flush=True)  # fmt: skip
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLSYS_MODEL_CACHE"] = str(work / "cache")
    if not (work / "mlflow.db").exists():
        cli("models", "register", args.champion, "--name", "ranknet", "--alias", "champion")
    configs: tuple[tuple[str, list[str], bool], ...] = (
        ("no log", ["--no-impressions"], False),
        ("log, no scored rows", ["--monitor-sample", "0"], False),
        ("log + scored rows + monitor run", [], True),
    )
    requests = Path(args.data) / "requests.parquet"
    result: dict[str, list[Any]] = {}
    with running_stack(args.data, "models:/ranknet@champion", work / "stack-o", workers=2,
                       access_log=False, progress=False, log_redis=True) as stack:  # fmt: skip
        assert stack.log_redis is not None
        api = stack.api
        port = int(stack.api_url.rsplit(":", 1)[1])
        for round_ in (1, 2):
            for label, flags, with_monitor in configs:
                stop_process(api)
                api = start_api(
                    "models:/ranknet@champion", stack.redis.url, port=port, workers=2,
                    log_path=work / f"api-{round_}.log", access_log=False,
                    extra_args=["--log-redis", stack.log_redis.url, *flags],
                )  # fmt: skip
                wait_ready(stack.api_url, api)
                monitor = None
                if with_monitor:
                    monitor = subprocess.Popen(
                        [sys.executable, "-m", "mlsys", "monitor", "run", "ranknet", "--redis",
                         stack.log_redis.url, "--every", "5", "--settle", "5",
                         "--port", "0"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                time.sleep(3)
                _, at30 = run_once(stack.api_url, requests, 30, 30)
                if monitor is not None:
                    monitor.terminate()
                    monitor.wait(10)
                result.setdefault(label, []).append(at30)
                print(f"   {label} #{round_}: 30 rps p95 {at30['p95_ms']} ms, "
                      f"errors {at30['errors']}", flush=True)  # fmt: skip
        stop_process(api)
    return result


if __name__ == "__main__":
    sys.exit(main())
