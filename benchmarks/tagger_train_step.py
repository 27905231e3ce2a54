"""One fine-tuning step of the tagger, NCHW vs channels-last, side by side in one run.

    .venv/bin/python benchmarks/tagger_train_step.py [--size 160] [--steps 10]

`mlsys train tagger` spends most of its time in forward + backward + AdamW over the tuned
blocks (8-15), the head convolution and the heads, on batches of 64 cached activations. This
times exactly that step (the trainer's own `_trainable`, `_set_drop_path`, `_nhwc` and
`train_step`) in both memory layouts, interleaved so that a noisy neighbour slows both alike,
and prints medians and the ratio. No data set is needed: the inputs are random activations
of the cached shape.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from mlsys.tagger.schema import COLORS, TAGS
from mlsys.tagger.training.config import TrainConfig
from mlsys.tagger.training.model import build_tagger
from mlsys.tagger.training.train import _nhwc, _set_drop_path, _set_mode, _trainable, train_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=TrainConfig.size, help="input resolution")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per layout")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(size=args.size)
    torch.manual_seed(0)
    tagger = build_tagger(n_colours=len(COLORS), pretrained=True)
    backbone, heads = _trainable(tagger, cfg.tune_from_block)
    _set_drop_path(tagger, cfg)
    opt = torch.optim.AdamW(backbone + heads, lr=1e-5)
    side = args.size // 16  # blocks 8-15 start at stride 16
    acts = torch.randn(cfg.batch_size, 80, side, side).to(torch.float16)
    y_cat = torch.randint(0, 5, (cfg.batch_size,))
    y_tag = torch.randint(0, 2, (cfg.batch_size, len(TAGS))).float()
    y_col = torch.randint(0, len(COLORS), (cfg.batch_size,))
    pos_weight = torch.ones(len(TAGS))

    def step(layout: str) -> float:
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        tagger.to(memory_format=fmt)  # type: ignore[call-overload]
        x = _nhwc(acts) if layout == "channels_last" else acts.float()
        t0 = time.perf_counter()
        train_step(tagger, opt, x, (y_cat, y_tag, y_col), pos_weight, cfg)
        return time.perf_counter() - t0

    _set_mode(tagger, cfg.tune_from_block, train=True)
    layouts = ("nchw", "channels_last")
    times: dict[str, list[float]] = {k: [] for k in layouts}
    for layout in layouts:  # warm-up: oneDNN picks and caches its kernels on first use
        step(layout)
        step(layout)
    for _ in range(args.steps):
        for layout in layouts:
            times[layout].append(step(layout))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.processor() or platform.machine()}, {args.threads} threads, "
        f"{args.size} px, batch {cfg.batch_size}, {args.steps} steps per layout"
    )
    for k in layouts:
        print(f"{k:14s} median {med[k] * 1000:7.1f} ms/step  ({cfg.batch_size / med[k]:.0f} img/s)")
    print(f"channels_last / nchw: {med['channels_last'] / med['nchw']:.2f}x the time")


if __name__ == "__main__":
    main()
