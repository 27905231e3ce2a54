"""RankNet's training step against its compute floor and the autograd loop, in one run.

    flock /tmp/mlsys-heavy.lock .venv/bin/python benchmarks/train_floor.py /work/data/full

Same machine, same thread count, same batch (1024), measured back to back:

- floor: the five GEMMs of the factored forward and backward (W2 W1, x M^T, g^T x, G W1^T,
  W2^T G) timed alone on these shapes, giving this machine's GEMM throughput; the step's
  FLOPs (those GEMMs plus the rank-1 and matrix-vector products) over that throughput is the
  time no implementation of this step can beat here;
- step: `FactoredStep.step` + `torch.optim.Adam(fused=True).step()` on one resident batch;
- autograd: the kit's step (`zero_grad; BCEWithLogitsLoss(model(x)).backward(); Adam.step`);
- epoch: `run_epoch` on the first `--rows` training rows, streamed and prefetched as
  `mlsys train` does, as seconds per 50M-row epoch.

Prints one JSON object: the per-step times, the ratios (epoch / floor, autograd / epoch).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

BATCH = 1024
STEPS_PER_EPOCH = 50_000_000 / BATCH


def per_call(fn: Callable[[], object], n: int, warm: int = 50) -> float:
    for _ in range(warm):
        fn()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from mlsys.recommender.data.dataset import open_dataset
    from mlsys.recommender.data.stream import FeatureTables
    from mlsys.recommender.model import RankNet
    from mlsys.recommender.training.fastgrad import FactoredStep
    from mlsys.recommender.training.train import TrainConfig, make_optimizer, run_epoch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, sign = torch.randn(BATCH, 40), torch.sign(torch.randn(BATCH))
    z = torch.empty(BATCH)

    model = RankNet()
    w1, w2 = model.model[0].weight.detach(), model.model[1].weight.detach()
    m, h = torch.empty(128, 40), torch.empty(BATCH, 128)
    gx, dw2, dw1 = torch.empty(128, 40), torch.empty(128, 256), torch.empty(256, 40)

    def gemms() -> None:
        torch.mm(w2, w1, out=m)
        torch.mm(x, m.t(), out=h)
        torch.mm(h.t(), x, out=gx)
        torch.mm(gx, w1.t(), out=dw2)
        torch.mm(w2.t(), gx, out=dw1)

    gemm_flops = 2 * (128 * 256 * 40 + BATCH * 40 * 128 + 128 * BATCH * 40 + 2 * 128 * 256 * 40)
    step_flops = gemm_flops + 2 * 6 * BATCH * 128  # + forward/backward of the last layer
    gemm_s = per_call(gemms, 2000)
    throughput = gemm_flops / gemm_s
    floor_s = step_flops / throughput

    step = FactoredStep(model, BATCH)
    adam = make_optimizer(model, TrainConfig())

    def ours() -> None:
        step.step(x, sign, z)
        adam.step()

    ours_s = per_call(ours, 2000)

    plain = RankNet()
    plain_adam = torch.optim.Adam(plain.parameters(), lr=1e-8)
    loss_fn, y = torch.nn.BCEWithLogitsLoss(), (sign > 0).float()

    def autograd() -> None:
        plain_adam.zero_grad()
        loss_fn(plain(x).reshape(-1), y).backward()
        plain_adam.step()

    autograd_s = per_call(autograd, 500)

    dataset = open_dataset(args.data)
    tables = FeatureTables.load(dataset)
    config = TrainConfig(limit_rows=args.rows, threads=args.threads)
    epoch_model = RankNet()
    stats = run_epoch(dataset, tables, FactoredStep(epoch_model, BATCH),
                      make_optimizer(epoch_model, config), config, 0, progress=False)  # fmt: skip
    epoch_step_s = stats.seconds / stats.steps
    result = {
        "threads": args.threads,
        "gemm_gflops": round(throughput / 1e9, 1),
        "floor_ms_per_step": round(floor_s * 1e3, 3),
        "step_and_adam_ms": round(ours_s * 1e3, 3),
        "autograd_ms_per_step": round(autograd_s * 1e3, 3),
        "epoch_ms_per_step": round(epoch_step_s * 1e3, 3),
        "epoch_s_per_50M_rows": round(epoch_step_s * STEPS_PER_EPOCH, 1),
        "floor_s_per_50M_rows": round(floor_s * STEPS_PER_EPOCH, 1),
        "autograd_s_per_50M_rows": round(autograd_s * STEPS_PER_EPOCH, 1),
        "epoch_over_floor": round(epoch_step_s / floor_s, 2),
        "autograd_over_epoch": round(autograd_s / epoch_step_s, 2),
        "input_wait_s": round(stats.input_wait_s, 2),
        "rows": stats.rows,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
