"""`make demo`: the whole lifecycle of the recommender, end to end, printing what happened.

    1. generate the click dataset (full: the task's 50M rows; small: 1/100)
    2. train the champion with the task's settings (5 epochs, batch 1024, Adam lr 1e-8)
    3. evaluate it on the test split
    4. register it as models:/ranknet@champion (a registry of the demo's own)
    5. serve it by alias to simulated users, change their world (a concept drift), and let
       the retraining loop detect, retrain, gate, shadow, canary and promote (`lifecycle.py`)
    6. the closing table and a timeline PNG

`--scale small` keeps a quick look under 2 minutes. Data and the trained champion are reused
from an earlier run of the same scale (delete the folder to start over); the registry is made
anew each run. Everything started (Redis, the API, the loop) is a child process that is stopped
in every case, so the demo leaves nothing running.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

EVAL_ROWS = {"full": 1_000_000, "small": None}  # the full test split is 5M rows: 1M suffice


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run_demo(workdir: str | Path, scale: str = "full") -> int:
    from mlsys.compose.lifecycle import SCENARIOS, print_table, run_lifecycle
    from mlsys.recommender.data.dataset import open_dataset
    from mlsys.recommender.data.generate import generate_clicks

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work / f"data-{scale}"
    model_dir = work / f"ranknet-{scale}"
    started = time.perf_counter()
    _fresh_registry(work)

    _step(f"1. generate the {scale} click dataset")
    if (data_dir / "manifest.json").exists():
        print(f"reusing {data_dir} (delete it to regenerate)")
    else:
        generate_clicks(data_dir, scale=scale, seed=7, force=True)
    print(open_dataset(data_dir).summary())

    from mlsys.platform.tracking import tracked_run
    from mlsys.recommender.training.evaluate import evaluate, format_report
    from mlsys.recommender.training.train import TrainConfig, train

    _step("2. train the champion: the task's settings (5 epochs, batch 1024, Adam lr 1e-8)")
    if (model_dir / "model.pt").exists():
        print(f"reusing {model_dir} (delete it to retrain)")
    else:
        with tracked_run("ranknet", run_name="demo champion") as run:
            train(data_dir, model_dir, TrainConfig(), evaluate_test=False, run=run)

    _step("3. evaluate the champion on the test split")
    print(format_report(evaluate(model_dir, data_dir, limit_rows=EVAL_ROWS[scale])))

    from mlsys.compose.models import model_card, probe
    from mlsys.platform.registry import CHAMPION, Registry

    _step("4. register it: models:/ranknet@champion")
    registry = Registry(create=True)
    version = registry.register(model_dir, "ranknet", model_card(model_dir))
    registry.set_alias("ranknet", CHAMPION, version, "demo: the trained champion", probe)
    print(f"ranknet version {version} is champion (registry {os.environ['MLFLOW_TRACKING_URI']})")

    _step("5. serve it, change the world, let the loop retrain and promote")
    result = run_lifecycle(work, data_dir, SCENARIOS[scale])

    _step("6. what happened")
    print(f"the loop ended: {result['outcome']}")
    print_table(result["phases"])
    print(f"timeline {work / 'lifecycle.png'}; figures {work / 'lifecycle.json'}; the loop's "
          f"steps {work / 'pipeline' / 'events.jsonl'}")  # fmt: skip
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s; outputs under {work}/")
    return 0 if result["outcome"] == "promoted" else 1


def _fresh_registry(work: Path) -> None:
    """A registry of the demo's own, new each run: `ranknet` starts at version 1 with the
    trained champion, and the user's own registry is never touched."""
    for stale in (work / "mlflow.db", work / "mlruns", work / "model-cache"):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLSYS_MODEL_CACHE"] = str(work / "model-cache")
