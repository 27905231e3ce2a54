"""Train the garment tagger within a 2-core CPU budget, then export what gets served.

Full fine-tuning is out of reach here (a forward pass alone is ~14 ms per 160 px image on one
core, and training triples it), so training is split where the network's cost is:

1. Cache. The first `tune_from_block` blocks stay at their ImageNet weights. Each training image
   is decoded once and pushed through that frozen prefix in `views` versions (one clean, the
   rest randomly augmented); the activations are kept in memory as float16. That is one pass,
   paid once, instead of one per epoch.
2. Fine-tune. The remaining blocks, the 1x1 head convolution and the three heads train on the
   cached activations for a few epochs, each epoch drawing one random view per image. Early
   stopping watches the validation split's tag loss and keeps the best weights.
3. Thresholds. Each pattern tag gets the probability threshold that maximises its F1 on the
   validation split, measured with the model that is actually deployed.
4. Export. The whole network goes to ONNX, is quantised to INT8 with training images as
   calibration, and INT8 is deployed only if it changes the top-1 category of at most 1 % of
   validation images (so top-1 accuracy moves by at most 1 point).

The validation split holds out what is fitted on it: its tag labels (thresholds, early
stopping) and its colour labels (the probe's accuracy). Its category labels train, because
nothing is chosen on them: the category recipe was fixed by earlier held-out runs, and
labelled data is the strongest lever measured (docs/tagger-report.md). Category accuracy is
judged on the test set, by `mlsys evaluate tagger`.

Everything a server needs (file name, version, vocabularies, thresholds, preprocessing) goes
into MODEL_DIR/tagger.json next to the ONNX files.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mlsys.errors import MlsysError
from mlsys.files import JsonIn, file_version
from mlsys.tagger import metrics as M
from mlsys.tagger.schema import CATEGORIES, COLORS, TAGS, open_garments
from mlsys.tagger.training.config import (
    FP32_FILE,
    INT8_FILE,
    MODEL_JSON,
    TORCH_FILE,
    TrainConfig,
)
from mlsys.tagger.training.export import (
    clean_images,
    export_onnx,
    onnx_probabilities,
    quantize_int8,
)
from mlsys.tagger.training.labels import Labelled, labelled, stratified_split
from mlsys.tagger.training.model import NUM_BLOCKS, GarmentTagger, MBConv, build_tagger
from mlsys.tagger.training.prefix_cache import cache_prefix, quantized_prefix
from mlsys.tagger.training.reference import write_reference


def _nhwc(acts: torch.Tensor) -> torch.Tensor:
    """Cached float16 activations -> float32 in channels-last layout.

    With the tuned blocks also channels-last, oneDNN runs the depthwise and 1x1 convolutions
    without layout conversions: a training step takes 0.55-0.60x the time of the default NCHW
    layout here (benchmarks/tagger_train_step.py).
    """
    return acts.float().contiguous(memory_format=torch.channels_last)


def _pos_weight(tags: np.ndarray) -> torch.Tensor:
    """neg/pos per tag over the labelled rows, so a rare pattern's positives count as much as
    its negatives."""
    known = tags[(tags >= 0).all(1)]
    pos = known.sum(0).clip(min=1.0)
    return torch.from_numpy(((len(known) - pos) / pos).astype(np.float32))


def _tag_loss(logits: torch.Tensor, y_tag: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the items whose tag labels training may see (y_tag >= 0); divided by at
    least 1, like `_colour_loss`, so a batch of held-out items contributes a zero loss."""
    known = (y_tag >= 0).all(1)
    total = F.binary_cross_entropy_with_logits(
        logits[known], y_tag[known], pos_weight=pos_weight, reduction="sum"
    )
    return total / (known.sum() * y_tag.shape[1]).clamp(min=1)


def _colour_loss(logits: torch.Tensor, y_col: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the items whose label still describes the view (y_col >= 0): a
    recoloured view does not show the labelled colour (augment.py), so its label is -1.
    Summed and divided by at least 1: the built-in mean is NaN when a batch has no label."""
    total = F.cross_entropy(logits, y_col, ignore_index=-1, reduction="sum")
    return total / (y_col >= 0).sum().clamp(min=1)


def _trainable(
    tagger: GarmentTagger, tune_from: int
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    bb = tagger.backbone
    backbone = [p for b in bb._blocks[tune_from:] for p in b.parameters()]
    backbone += [*bb._conv_head.parameters(), *bb._bn1.parameters()]
    heads = [
        *tagger.category_head.parameters(),
        *tagger.tag_head.parameters(),
        *tagger.colour_head.parameters(),
    ]
    for p in tagger.parameters():
        p.requires_grad_(False)
    for p in backbone + heads:
        p.requires_grad_(True)
    return backbone, heads


def _set_drop_path(tagger: GarmentTagger, cfg: TrainConfig) -> None:
    """Stochastic depth on the tuned residual blocks, rising linearly with depth to
    `cfg.drop_path` at the last block (the frozen ones never train, so never drop).

    With 10.8k images the tuned blocks overfit (train loss 0.41 vs validation 0.76 without
    it); dropping a block's branch for part of each batch is EfficientNet's own regulariser.
    """
    for i, block in enumerate(tagger.backbone._blocks):
        if isinstance(block, MBConv):
            tuned = i >= cfg.tune_from_block
            block.drop_path = cfg.drop_path * (i + 1) / NUM_BLOCKS if tuned else 0.0


def _set_mode(tagger: GarmentTagger, tune_from: int, train: bool) -> None:
    """Only the tuned part is ever in train mode; the frozen prefix keeps ImageNet BN stats."""
    tagger.eval()
    if train:
        for b in tagger.backbone._blocks[tune_from:]:
            b.train()
        tagger.backbone._bn1.train()
        tagger.dropout.train()


@torch.no_grad()
def validate_cached(
    tagger: GarmentTagger,
    acts: torch.Tensor,
    y: Labelled,
    pos_weight: torch.Tensor,
    cfg: TrainConfig,
    batch_size: int = 256,
) -> tuple[dict[str, np.ndarray], float]:
    """Probabilities and mean tag loss (what early stopping watches: the split's category
    labels train) on cached clean activations (view 0), from one forward pass per batch."""
    _set_mode(tagger, cfg.tune_from_block, train=False)
    cats, tags, cols = [], [], []
    total = 0.0
    for i in range(0, len(acts), batch_size):
        sl = slice(i, i + batch_size)
        out = tagger.forward_from(_nhwc(acts[sl, 0]), cfg.tune_from_block)
        loss = _tag_loss(out.tags, torch.from_numpy(y.tags[sl]), pos_weight)
        total += loss.item() * len(out.tags)
        cats.append(torch.softmax(out.category, 1))
        tags.append(torch.sigmoid(out.tags))
        cols.append(torch.softmax(out.colour, 1))
    probs = {
        "category": torch.cat(cats).numpy(),
        "tags": torch.cat(tags).numpy(),
        "colour": torch.cat(cols).numpy(),
    }
    return probs, total / len(acts)


def train_step(
    tagger: GarmentTagger,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    pos_weight: torch.Tensor,
    cfg: TrainConfig,
) -> float:
    """One optimiser step on a batch of cached activations (category, tags, colour targets;
    tags and colour -1 where training must not see them); returns the loss. Shared with
    benchmarks/tagger_train_step.py, which times exactly this."""
    out = tagger.forward_from(x, cfg.tune_from_block)
    loss = F.cross_entropy(out.category, y[0], label_smoothing=cfg.label_smoothing)
    # The colour probe's loss reaches nothing but the probe (it reads a detached embedding).
    loss = loss + _tag_loss(out.tags, y[1], pos_weight) + _colour_loss(out.colour, y[2])
    opt.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    return float(loss.item())


def fine_tune(
    tagger: GarmentTagger,
    train_acts: torch.Tensor,
    y_train: Labelled,
    val_acts: torch.Tensor,
    y_val: Labelled,
    cfg: TrainConfig,
    deadline: float,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Train the tuned blocks and heads on cached activations; returns per-epoch metrics and
    leaves the best weights (lowest validation tag loss) in `tagger`.

    `y_train` may include the validation items with their tags and colour held out (-1):
    `val_acts` / `y_val` then score those items on what training did not see.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    tagger.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    backbone, heads = _trainable(tagger, cfg.tune_from_block)
    _set_drop_path(tagger, cfg)
    opt = torch.optim.AdamW(
        [{"params": backbone, "lr": cfg.backbone_lr}, {"params": heads, "lr": cfg.lr}],
        weight_decay=cfg.weight_decay,
    )
    steps_per_epoch = math.ceil(len(train_acts) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[cfg.backbone_lr, cfg.lr], total_steps=cfg.epochs * steps_per_epoch,
        pct_start=0.15,
    )  # fmt: skip
    pos_weight = _pos_weight(y_train.tags)
    y_cat, y_tag, y_col = (
        torch.from_numpy(a) for a in (y_train.category, y_train.tags, y_train.colour)
    )
    best_loss, best_state, bad_epochs = math.inf, None, 0
    history: list[dict[str, float]] = []
    n_views = train_acts.shape[1]
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        _set_mode(tagger, cfg.tune_from_block, train=True)
        order = torch.randperm(len(train_acts), generator=gen)
        view = torch.randint(0, n_views, (len(train_acts),), generator=gen)
        running = 0.0
        bar = tqdm(
            range(steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False
        )
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = _nhwc(train_acts[idx, view[idx]])
            # Only view 0 is never recoloured; the colour probe learns from it alone.
            col = torch.where(view[idx] == 0, y_col[idx], -1)
            running += train_step(tagger, opt, x, (y_cat[idx], y_tag[idx], col), pos_weight, cfg)
            sched.step()
            bar.set_postfix(loss=f"{running / (step + 1):.3f}")
        probs, val_loss = validate_cached(tagger, val_acts, y_val, pos_weight, cfg)
        m = M.summary(probs, y_val.category, y_val.tags, y_val.colour)
        row = {
            "epoch": float(epoch),
            "train_loss": running / steps_per_epoch,
            "val_tag_loss": val_loss,
            "val_tag_macro_f1_at_0.5": m["tag_macro_f1"],
            "val_colour_acc": m["colour_acc"],
            # Category labels of the validation items train: a fit figure, not a held-out one.
            "val_top1_trained": m["top1"],
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        log(
            f"epoch {epoch:2d}: train loss {row['train_loss']:.4f}  "
            f"val tag loss {val_loss:.4f}  tag F1@0.5 {m['tag_macro_f1']:.4f}  "
            f"colour {m['colour_acc']:.4f}  (category top-1 on trained labels {m['top1']:.4f}; "
            f"{row['seconds']:.0f} s)"
        )
        if val_loss < best_loss - 1e-4:
            best_loss, bad_epochs = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in tagger.state_dict().items()}
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                log(f"early stop: val tag loss has not improved for {cfg.patience} epochs")
                break
        if time.time() + row["seconds"] > deadline:
            log("stopping: the next epoch would overrun the time budget")
            break
    if best_state is not None:
        tagger.load_state_dict(best_state)
    tagger.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return history


def train_tagger(
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig | None = None,
    log: Callable[[str], None] = print,
) -> JsonIn:
    """Train, pick thresholds, export fp32 + INT8 ONNX, write tagger.json; returns its content."""
    cfg = cfg or TrainConfig()
    if not 0 <= cfg.tune_from_block < NUM_BLOCKS:
        raise MlsysError(f"tune_from_block must be in [0, {NUM_BLOCKS}), got {cfg.tune_from_block}")
    start = time.time()
    deadline = start + cfg.time_budget_s
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    data = open_garments(data_dir)
    labels = labelled(data.data)
    if cfg.max_images is not None and cfg.max_images < len(labels):
        labels = labels.subset(
            np.sort(np.random.default_rng(cfg.seed).permutation(len(labels))[: cfg.max_images])
        )
    tr_idx, va_idx = stratified_split(labels, cfg.val_fraction, cfg.seed)
    y_train, y_val = labels.subset(tr_idx), labels.subset(va_idx)
    if len(y_val) == 0 or len(y_train) == 0:
        raise MlsysError(
            f"{data_dir}: too few labelled images ({len(labels)}) to hold out a validation split"
        )
    # The validation items train on their category labels only (module docstring).
    y_fit = y_train + y_val.category_only()
    log(
        f"data: {len(y_fit)} training images, of which {len(y_val)} hold out their tag and "
        f"colour labels for validation; {cfg.size} px, {cfg.views} views, fine-tuning blocks "
        f"{cfg.tune_from_block}-{NUM_BLOCKS - 1} + head"
    )

    tagger = build_tagger(n_colours=len(COLORS), pretrained=True)
    t0 = time.time()
    pre = cfg.preprocess()
    calib = clean_images(data, y_train.uuids[: cfg.calibration_images], pre)
    val_images = clean_images(data, y_val.uuids, pre)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = quantized_prefix(tagger, cfg, calib, Path(tmp))
        acts = cache_prefix(prefix, data, y_fit.uuids, cfg, cfg.views, "cache")
    cache_s = time.time() - t0
    log(f"cached frozen-prefix activations {tuple(acts.shape)}: {acts.numel() * 2 / 1e6:.0f} MB, "
        f"{cache_s:.0f} s")  # fmt: skip

    t0 = time.time()
    val_acts = acts[len(y_train) :]  # y_fit lists the validation items last
    history = fine_tune(tagger, acts, y_fit, val_acts, y_val, cfg, deadline, log)
    train_s = time.time() - t0
    del acts, val_acts

    t0 = time.time()
    tagger.eval()
    torch.save(tagger.state_dict(), out / TORCH_FILE)
    fp32_path = export_onnx(tagger, out / FP32_FILE, cfg.size)
    int8_path = quantize_int8(fp32_path, out / INT8_FILE, calib)
    probs_fp32 = onnx_probabilities(fp32_path, val_images, cfg.threads)
    probs_int8 = onnx_probabilities(int8_path, val_images, cfg.threads)
    # The gate needs no labels (these items' category labels trained the network): INT8 is
    # scored against fp32's top-1. Accuracies can differ by at most the share of images whose
    # top-1 changed, so bounding that share bounds the accuracy drop on any labels.
    changed = 1.0 - M.topk_accuracy(probs_int8["category"], probs_fp32["category"].argmax(1), 1)
    use_int8 = changed <= cfg.int8_tolerance
    deployed = int8_path if use_int8 else fp32_path
    probs = probs_int8 if use_int8 else probs_fp32
    thresholds = M.best_thresholds(probs["tags"], y_val.tags)
    export_s = time.time() - t0
    log(f"INT8 changes the top-1 of {changed:.2%} of validation images -> {deployed.name}")

    val_metrics = M.summary(probs, y_val.category, y_val.tags, y_val.colour, thresholds)
    # Keys that say what they are: these category labels trained the network.
    val_metrics["top1_trained"] = val_metrics.pop("top1")
    val_metrics["top2_trained"] = val_metrics.pop("top2")
    meta: JsonIn = {
        "version": file_version(deployed),
        "model_file": deployed.name,
        "fp32_file": fp32_path.name,
        "int8_file": int8_path.name,
        "torch_file": TORCH_FILE,
        "categories": list(CATEGORIES),
        "tags": list(TAGS),
        "colours": list(COLORS),
        "thresholds": {t: float(v) for t, v in zip(TAGS, thresholds, strict=True)},
        "preprocessing": asdict(cfg.preprocess()),
        "val_metrics": val_metrics,
        "val_top1_changed_by_int8": changed,
        "history": history,
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
        "data_dir": str(Path(data_dir).resolve()),
        "data_checksum": data.checksum,
        "n_train": len(y_fit),  # images whose category labels train, the validation ones too
        "n_val": len(y_val),  # of those, the ones whose tag and colour labels are held out
        "val_uuids": y_val.uuids,
        "seconds": {
            "cache": cache_s,
            "fine_tune": train_s,
            "export": export_s,
            "total": time.time() - start,
        },
    }
    (out / MODEL_JSON).write_text(json.dumps(meta, indent=2))
    write_reference(out, data_dir)  # the drift monitor's reference (reference.py)
    log(
        f"val (deployed, tuned thresholds): tag macro F1 {val_metrics['tag_macro_f1']:.4f}  "
        f"colour {val_metrics['colour_acc']:.4f}; "
        f"total {meta['seconds']['total']:.0f} s -> {out}"
    )
    return meta
