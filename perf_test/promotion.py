"""Promotion under load (issue 15): the alias moves twice while 200 requests/s flow.

    flock /tmp/mlsys-heavy.lock .venv/bin/python perf_test/promotion.py \
        --data /work/data/full --model-a MODEL_DIR --model-b MODEL_DIR

1. a fresh registry (sqlite, in a temp folder) with two RankNet versions: A champion,
   B challenger;
2. the stack as the demo runs it (redis-server, full tables, `mlsys serve --workers 2`),
   serving `models:/ranknet@champion` with the default 5 s refresh;
3. `mlsys loadtest`'s open-model generator at `--rate` for `--duration` seconds from
   requests.parquet, recording each answer's X-Model-Version;
4. at 1/3 of the run `mlsys models promote ranknet`, at 2/3 `mlsys models rollback ranknet`,
   each as its own process (an operator's command), its finishing time taken as the switch.

Reports: errors, for each phase the share of answers from the expected version once 6 s have
passed since the switch, when the last answer from the old version came, and the p99 of the
steady phase (5 s to the first switch) against the p99 of each 10 s after a switch and of the
whole run. Writes perf_test/results/promotion.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model-a", required=True, help="champion at the start")
    parser.add_argument("--model-b", required=True, help="promoted, then rolled back")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--out", default="perf_test/results")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mlsys-promotion-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLSYS_MODEL_CACHE"] = str(work / "cache")
    mlsys = [sys.executable, "-m", "mlsys"]

    def cli(*words: str) -> None:
        subprocess.run([*mlsys, *words], check=True, stdout=subprocess.DEVNULL)

    cli("models", "register", args.model_a, "--name", "ranknet", "--alias", "champion")
    cli("models", "register", args.model_b, "--name", "ranknet", "--alias", "challenger")

    from mlsys.compose.loadtest import run_once
    from mlsys.compose.stack import running_stack

    switches: list[tuple[str, float, float]] = []  # (command, started, finished), monotonic

    def operator(at: float, command: str) -> None:
        time.sleep(at)
        started = time.monotonic()
        cli("models", command, "ranknet", "--reason", "perf_test/promotion.py")
        switches.append((command, started, time.monotonic()))

    with running_stack(
        args.data, "models:/ranknet@champion", work / "stack", workers=2, access_log=False,
        progress=False,
    ) as stack:  # fmt: skip
        third = args.duration / 3
        # warm-up (20 requests) takes well under a second; the operator's clock starts with it
        threads = [
            threading.Thread(target=operator, args=(third, "promote")),
            threading.Thread(target=operator, args=(2 * third, "rollback")),
        ]
        for t in threads:
            t.start()
        result, summary = run_once(
            stack.api_url, Path(args.data) / "requests.parquet", args.rate, args.duration
        )
        for t in threads:
            t.join()

    done = np.asarray(result.scheduled) + np.asarray(result.latency)  # s from start
    latency_ms = np.asarray(result.latency) * 1e3
    versions = np.asarray(result.model_version)
    ok = np.asarray(result.status) == "200"
    first = versions[0]
    promote, rollback = (s for s in sorted(switches, key=lambda s: s[1]))
    at_promote = promote[2] - result.started_at
    at_rollback = rollback[2] - result.started_at
    second = next(v for v in versions[done > at_promote + 6] if v != first)

    def phase(lo: float, hi: float, expected: str) -> dict[str, Any]:
        settled = (done > lo + 6) & (done < hi) & ok  # a failed request has no version
        old = (done > lo) & (done < hi) & ok & (versions != expected)
        return {
            "switch_s": round(lo, 2),
            "answers_after_6s": int(settled.sum()),
            "share_from_expected_after_6s": float((versions[settled] == expected).mean()),
            "last_old_answer_after_switch_s": round(float(done[old].max() - lo), 2)
            if old.any()
            else 0.0,
            "p99_ms_first_10s": round(
                float(np.percentile(latency_ms[(done > lo) & (done < lo + 10)], 99)), 2
            ),
        }

    steady = (done > 5) & (done < at_promote)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rate": args.rate,
        "duration_s": args.duration,
        "requests": len(ok),
        "errors": int((~ok).sum()),
        "errors_by_status": summary["errors_by_status"],
        "error_times_s": [round(float(t), 2) for t in done[~ok]],
        "versions": {"A": str(first), "B": str(second)},
        "operator_command_seconds": {c: round(f - s, 2) for c, s, f in switches},
        "steady_p99_ms": round(float(np.percentile(latency_ms[steady], 99)), 2),
        "run_p99_ms": round(float(np.percentile(latency_ms, 99)), 2),
        "promote": phase(at_promote, at_rollback, str(second)),
        "rollback": phase(at_rollback, float(done.max()) + 1, str(first)),
        "summary": summary,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "promotion.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "summary"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
