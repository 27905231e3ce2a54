"""Inference speed of the three forms of the same network, measured in one run.

eager PyTorch fp32 (the training artifact) vs ONNX Runtime fp32 vs ONNX Runtime INT8 (static
QDQ): ms per image at batch 1 on 1 thread (one request on a busy server), images/s at batch 32
on 2 threads (offline scoring), the file size, and top-1 on the test set so a speed-up is
never bought with an unnoticed accuracy loss. Inputs are real preprocessed test images.

The batch-1 calls of the three forms are interleaved (one call of each in turn), so a noisy
neighbour on a shared machine slows all three alike and their ratio holds: timed one form
after another, eager fp32 ranged 17.7-24.4 ms in three runs within ten minutes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mlsys.tagger import metrics as M
from mlsys.tagger.inference import load_meta, make_session


def _time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each function, calling them in turn `repeats` times."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
    return out


def _time(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    return _time_interleaved({"fn": fn}, repeats, warmup)["fn"]


def _eager(model_dir: Path, meta: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    from mlsys.tagger.training.model import ExportWrapper, GarmentTagger

    tagger = GarmentTagger(n_colours=len(meta["colours"]))
    tagger.load_state_dict(
        torch.load(model_dir / meta["torch_file"], map_location="cpu", weights_only=True)
    )
    wrapper = ExportWrapper(tagger).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out: np.ndarray = wrapper(torch.from_numpy(x))[0].numpy()
            return out

    return run


def _onnx(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    sess = make_session(path, threads)

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(None, {"image": x})[0])

    return run


def bench_tagger(
    model_dir: str | Path,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    repeats_b1: int = 200,
    repeats_b32: int = 10,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """`images`: normalised (N, 3, S, S) float32, N >= 32; `labels`: their categories."""
    import torch

    model_dir = Path(model_dir)
    meta = load_meta(model_dir)
    variants = {
        "eager_fp32": (model_dir / meta["torch_file"], None),
        "onnx_fp32": (model_dir / meta["fp32_file"], "onnx"),
        "onnx_int8": (model_dir / meta["int8_file"], "onnx"),
    }
    eager = _eager(model_dir, meta)
    one = images[:1].copy()
    batch = np.ascontiguousarray(images[:32])
    results: dict[str, Any] = {
        "size": meta["preprocessing"]["size"],
        "n_eval": 0 if labels is None else len(labels),
    }
    torch.set_num_threads(1)  # eager's thread count is torch's global setting
    runners = {
        name: eager if kind is None else _onnx(path, 1) for name, (path, kind) in variants.items()
    }
    calls = {name: (lambda r=run: r(one)) for name, run in runners.items()}
    b1 = _time_interleaved(calls, repeats_b1, warmup=10)  # type: ignore[arg-type]
    torch.set_num_threads(2)
    for name, (path, kind) in variants.items():
        row: dict[str, Any] = {"file": path.name, "file_mb": path.stat().st_size / 1e6}
        row["ms_per_image_b1_1thread"] = statistics.median(b1[name]) * 1e3
        row["p95_ms_b1_1thread"] = float(np.percentile(b1[name], 95) * 1e3)
        run = eager if kind is None else _onnx(path, 2)
        t = _time(lambda r=run: r(batch), repeats_b32, warmup=2)  # type: ignore[misc]
        row["images_per_s_b32_2threads"] = len(batch) / statistics.median(t)
        if labels is not None:
            probs = np.concatenate(
                [run(np.ascontiguousarray(images[i : i + 32])) for i in range(0, len(images), 32)]
            )
            row["top1"] = M.topk_accuracy(probs, labels, 1)
            row["top2"] = M.topk_accuracy(probs, labels, 2)
        results[name] = row
        log(
            f"{name:11s} {row['ms_per_image_b1_1thread']:7.2f} ms/img (b1, 1 thread)  "
            f"{row['images_per_s_b32_2threads']:7.1f} img/s (b32, 2 threads)  "
            f"{row['file_mb']:6.2f} MB" + (f"  top-1 {row['top1']:.4f}" if "top1" in row else "")
        )
    eager = results["eager_fp32"]["ms_per_image_b1_1thread"]
    for name in ("onnx_fp32", "onnx_int8"):
        results[name]["speedup_b1_vs_eager"] = eager / results[name]["ms_per_image_b1_1thread"]
    return results


def load_test_images(
    data_dir: str | Path, model_dir: str | Path, limit: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Up to `limit` test images, preprocessed as the model expects (and their categories when
    the data has test labels)."""
    from mlsys.tagger.preprocess import PreprocessConfig, load_image, to_array
    from mlsys.tagger.schema import open_garments
    from mlsys.tagger.training.labels import labelled_test

    data = open_garments(data_dir)
    config = PreprocessConfig(**load_meta(model_dir)["preprocessing"])
    uuids = data.test_uuids[:limit]
    x = np.stack([to_array(load_image(data.image_path(u)), config) for u in uuids])
    y = None if data.test_labels is None else labelled_test(data).category[: len(uuids)]
    return x, y
