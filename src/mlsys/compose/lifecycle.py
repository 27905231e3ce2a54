"""The demo's second half: a champion served by alias meets a concept drift, and the
retraining loop replaces it without a person.

    start the stack (feature Redis, the log's append-only Redis, `mlsys serve` on
      models:/ranknet@champion) -> simulated users throughout, clicking by the world's rule
    -> the world changes: users' tastes move (`generate drift --kind concept`)
    -> `mlsys pipeline run ranknet` as a child process: drift alarm, export, data, retrain,
       gate, shadow, canary, promote
    -> the closing table (CTR / oracle CTR and latency before the drift, after it, after the
       promotion) and a timeline PNG; everything started is stopped.

CTR / oracle is the simulator's noise-free expected clicks of what was shown over those of the
same restaurants in the order of their true click probability (`simulate.py`): 1.0 is the best
any ranking of those candidates can do, in the world the users live in at that moment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME = "ranknet"


@dataclass(frozen=True)
class Scenario:
    rate: float  # simulated requests per second
    before_s: float  # traffic before the drift; the monitor's baseline windows fit in it
    after_s: float  # traffic after the promotion
    trigger: str  # "drift": the monitor's alarm; "now": right after the drift, on schedule
    drift_window: int  # answers per monitoring window
    min_answers: int  # labelled answers after the drift before retraining
    epochs: int
    lr: float
    shadow_answers: int
    canary_percent: float
    canary_answers: int
    timeout_s: float  # for the whole loop


SCENARIOS = {
    "full": Scenario(rate=40, before_s=90, after_s=60, trigger="drift", drift_window=200,
                     min_answers=3000, epochs=3, lr=1e-3, shadow_answers=200,
                     canary_percent=50, canary_answers=300, timeout_s=480),
    # The small champion has learned nothing (2.4k Adam steps at lr 1e-8), so there is no
    # outcome to drift: the loop starts on schedule right after the change.
    "small": Scenario(rate=40, before_s=15, after_s=15, trigger="now", drift_window=100,
                      min_answers=600, epochs=3, lr=1e-3, shadow_answers=100,
                      canary_percent=50, canary_answers=150, timeout_s=240),
}  # fmt: skip


class Traffic(threading.Thread):
    """Simulated users in 5-second runs; `world` (the dataset whose click rule they follow)
    can be switched between runs."""

    def __init__(self, url: str, world: Path, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.world, self.rate = url, world, rate
        self.runs: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        from mlsys.recommender.online.simulate import load_population, simulate

        seed = 0
        populations: dict[Path, Any] = {}
        while not self.halt.is_set():
            world = self.world
            if world not in populations:
                populations[world] = load_population(world)
            started = time.time()
            result = simulate(self.url, world, self.rate, 5.0, seed=seed,
                              population=populations[world])  # fmt: skip
            self.runs.append({"start": started, "end": time.time(), "world": self.world.name,
                              **result})  # fmt: skip
            seed += 1

    def stop(self) -> None:
        self.halt.set()
        self.join()


def run_lifecycle(work: Path, data_dir: Path, scenario: Scenario) -> dict[str, Any]:
    from mlsys.compose.stack import running_stack
    from mlsys.recommender.data.drift_scenarios import generate_drift

    # The log's Redis is append-only: its file from an earlier run would replay that run's
    # answers into this one's streams (and the monitor would judge them with this run's model).
    shutil.rmtree(work / "serving", ignore_errors=True)
    world = work / f"{data_dir.name}-concept"
    if not (world / "manifest.json").exists():
        generate_drift(data_dir, world, "concept", force=True, progress=False)
    marks: dict[str, float] = {}
    with running_stack(
        data_dir, f"models:/{NAME}@champion", work / "serving", workers=os.cpu_count() or 1,
        progress=False, log_redis=True, extra_args=["--model-refresh", "1"],
    ) as stack:  # fmt: skip
        assert stack.log_redis is not None
        print(f"API {stack.api_url} serving models:/{NAME}@champion; simulated users at "
              f"{scenario.rate:g} requests/s, clicking by {data_dir.name}'s rule")  # fmt: skip
        traffic = Traffic(stack.api_url, data_dir, scenario.rate)
        marks["start"] = time.time()
        traffic.start()
        try:
            _wait(traffic, scenario.before_s, "before the drift")
            _step("the world changes: users' tastes move (concept drift)")
            traffic.world = world  # no feature moves, so the feature store stays as it is
            marks["drift"] = time.time()
            print(f"the users now click by {world.name}'s rule; every feature is unchanged")
            _step("the retraining loop: `mlsys pipeline run ranknet` (no person involved)")
            outcome = _pipeline(work / "pipeline", world, stack.log_redis.url, scenario, marks)
            marks["loop_end"] = time.time()
            _wait(traffic, scenario.after_s, f"after the loop ({outcome})")
        finally:
            traffic.stop()
    marks["end"] = time.time()
    events = _events(work / "pipeline" / "events.jsonl")
    promoted = events.get("promote")
    phases = _phases(traffic.runs, marks, promoted)
    result = {"outcome": outcome, "marks": marks, "events": events, "phases": phases}
    (work / "lifecycle.json").write_text(json.dumps(result, indent=2) + "\n")
    _timeline(traffic.runs, marks, events, work / "lifecycle.png")
    return result


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def _wait(traffic: Traffic, seconds: float, label: str) -> None:
    end = time.time() + seconds
    shown = len(traffic.runs)
    while time.time() < end:
        time.sleep(1.0)
        for run in traffic.runs[shown:]:
            print(f"  {label}: {_line(run)}", flush=True)
        shown = len(traffic.runs)


def _ctr_over_oracle(runs: list[dict[str, Any]]) -> float:
    """Expected clicks of what was shown over the oracle's, every arm of `runs` together."""
    arms = [a for r in runs for a in r["arms"].values()]
    expected = sum(a["expected_ctr"] * a["impressions"] for a in arms)
    oracle = sum(a["oracle_ctr"] * a["impressions"] for a in arms)
    return expected / oracle if oracle else float("nan")


def _line(run: dict[str, Any]) -> str:
    arms = "/".join(f"{k} {v['impressions']}" for k, v in run["arms"].items())
    p95 = run["p95_ms"]
    if p95 is None:
        return f"no answer: {run['statuses']}"
    ratio = _ctr_over_oracle([run])
    return f"{run['ok']}/{run['requests']} ok, CTR/oracle {ratio:.3f}, p95 {p95:.1f} ms, {arms}"


def _pipeline(
    folder: Path, world: Path, log_url: str, scenario: Scenario, marks: dict[str, float]
) -> str:
    """`mlsys pipeline run` as a child, its lines echoed; killed if it runs out of time."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    cmd = [
        sys.executable, "-m", "mlsys", "pipeline", "run", NAME, "--features", str(world),
        "--workdir", str(folder), "--redis", log_url, "--trigger", scenario.trigger,
        "--since-ms", str(int(marks["drift"] * 1000)),
        "--drift-window", str(scenario.drift_window), "--drift-settle", "5",
        "--window", "0.05", "--min-answers", str(scenario.min_answers),
        "--epochs", str(scenario.epochs), "--lr", str(scenario.lr),
        "--shadow-answers", str(scenario.shadow_answers),
        "--canary-percent", str(scenario.canary_percent),
        "--canary-answers", str(scenario.canary_answers), "--poll", "2",
        "--step-timeout", str(scenario.timeout_s),
    ]  # fmt: skip
    # At a lower CPU priority: retraining shares the cores with the API it must not slow down.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: os.nice(10))  # fmt: skip
    timer = threading.Timer(scenario.timeout_s, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if " retrain: epoch " not in line and "gate: " not in line[:40]:
                print(f"  | {line.rstrip()}", flush=True)
        proc.wait()
    finally:
        timer.cancel()
    state = json.loads((folder / "pipeline.json").read_text()) if (
        folder / "pipeline.json").exists() else {}  # fmt: skip
    return str(state.get("outcome") or f"did not finish (exit {proc.returncode})")


def _events(path: Path) -> dict[str, float]:
    """When each step of the loop finished (epoch seconds), and when the rollouts started."""
    out: dict[str, float] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "done":
            out[e["step"]] = e["at"]
        elif e["event"] == "rollout started":
            out[f"{e['step']}_start"] = e["at"]
    return out


def _phases(
    runs: list[dict[str, Any]], marks: dict[str, float], promoted: float | None
) -> dict[str, dict[str, Any]]:
    """Each phase's answers: CTR, CTR / oracle, latency, failures. A 5-s run belongs to the
    phase it started in; the runs that straddle a change are left out."""
    bounds = {
        "before the drift": (marks["start"], marks["drift"]),
        "after the drift": (marks["drift"], promoted or marks["loop_end"]),
        "after the promotion": ((promoted or marks["loop_end"]) + 2, marks["end"]),
    }
    out: dict[str, dict[str, Any]] = {}
    for phase, (lo, hi) in bounds.items():
        picked = [r for r in runs if lo <= r["start"] and r["end"] <= hi + 1]
        impressions = sum(a["impressions"] for r in picked for a in r["arms"].values())
        clicks = sum(a["clicks"] for r in picked for a in r["arms"].values())
        p95s = [r["p95_ms"] for r in picked if r["p95_ms"] is not None]
        out[phase] = {
            "seconds": round(hi - lo, 1),
            "answers": impressions,
            "ctr": clicks / impressions if impressions else None,
            "ctr_over_oracle": _ctr_over_oracle(picked) if impressions else None,
            "p95_ms_median": float(sorted(p95s)[len(p95s) // 2]) if p95s else None,
            "p95_ms_max": max(p95s) if p95s else None,
            "failed": sum(r["requests"] - r["ok"] for r in picked),
        }
    return out


def print_table(phases: dict[str, dict[str, Any]]) -> None:
    print(f"{'phase':22s} {'answers':>8s} {'CTR':>7s} {'CTR/oracle':>11s} "
          f"{'p95 ms (median, max)':>22s} {'failed':>7s}")  # fmt: skip
    for name, p in phases.items():
        if not p["answers"]:
            print(f"{name:22s} {'-':>8s}")
            continue
        print(f"{name:22s} {p['answers']:8d} {p['ctr']:7.3f} {p['ctr_over_oracle']:11.3f} "
              f"{p['p95_ms_median']:10.1f}, {p['p95_ms_max']:9.1f} {p['failed']:7d}")  # fmt: skip


def _timeline(
    runs: list[dict[str, Any]], marks: dict[str, float], events: dict[str, float], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = marks["start"]
    xs = [(r["start"] + r["end"]) / 2 - t0 for r in runs]
    ratio = [_ctr_over_oracle([r]) for r in runs]
    p95 = [r["p95_ms"] if r["p95_ms"] is not None else float("nan") for r in runs]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.plot(xs, ratio, marker=".", color="tab:blue")
    top.set_ylabel("CTR / oracle CTR")
    top.set_title("A concept drift, detected, retrained, shadowed, canaried and promoted")
    bottom.plot(xs, p95, marker=".", color="tab:orange")
    bottom.set_ylabel("p95 latency (ms), simulated users")
    bottom.set_xlabel("seconds since the API started serving")
    labels = {"drift": "drift", "trigger": "alarm", "retrain": "gate passed",
              "shadow_start": "shadow", "canary_start": "canary",
              "promote": "promoted"}  # fmt: skip
    for i, (key, label) in enumerate(labels.items()):
        at = marks.get(key) or events.get(key)
        if at is None:
            continue
        for ax in (top, bottom):
            ax.axvline(at - t0, color="grey", linestyle="--", linewidth=0.8)
        height = 0.98 if i % 2 == 0 else 0.6  # staggered: steps a second apart stay legible
        top.annotate(label, (at - t0, height), xycoords=("data", "axes fraction"), rotation=90,
                     va="top", ha="right", fontsize=8)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
