"""`make demo`: the main job end to end on a small dataset, printing what happened.

Each step is a plain function call or a child process this module starts and always stops,
so the demo leaves nothing running behind it.
"""

from __future__ import annotations

import time
from pathlib import Path


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run_demo(workdir: str | Path) -> int:
    from mlsys.recommender.commands import summary
    from mlsys.recommender.data import open_dataset
    from mlsys.recommender.generate import generate_clicks

    work = Path(workdir)
    data_dir = work / "data-small"
    started = time.perf_counter()

    _step("1. generate the small click dataset (all users and restaurants, 1/100 of the rows)")
    if (data_dir / "manifest.json").exists():
        print(f"reusing {data_dir} (delete it to regenerate)")
    else:
        generate_clicks(data_dir, scale="small", seed=7, force=True)
    dataset = open_dataset(data_dir)
    print(summary(dataset))

    # Training (issue 3): the kit's settings (batch 1024, Adam lr 1e-8, 5 epochs), streamed.
    from mlsys.recommender.evaluate import evaluate, format_report
    from mlsys.recommender.train import TrainConfig, train

    _step("2. train RankNet on the small dataset (5 epochs, batch 1024, Adam lr 1e-8)")
    train(data_dir, work / "ranknet", TrainConfig(), evaluate_test=False)

    # 5 epochs of 500k rows are ~2.4k Adam steps: at lr 1e-8 the model barely moves from its
    # init (~0.55); the spec's 0.70 needs the full data's 244k steps (docs/training-report.md).
    _step("3. evaluate RankNet on the small test split")
    print(format_report(evaluate(work / "ranknet", data_dir)))

    # Serving (issue 4): Redis + features + API + 10 s at 30 rps, everything stopped after.
    # Serves the model trained in step 2.
    from mlsys.compose.demo_serving import run_serving_steps

    run_serving_steps(work, data_dir, model_dir=work / "ranknet", first_step=4)

    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s; outputs under {work}/")
    return 0
