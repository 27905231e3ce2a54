"""Garment tagger benchmark: eager PyTorch fp32 vs ONNX fp32 vs ONNX INT8, plus robustness.

    flock /tmp/mlsys-heavy.lock .venv/bin/python benchmarks/tagger_bench.py \
        /work/data/garments artifacts/tagger --out artifacts/tagger/bench.json

Speed: ms/image at batch 1 on 1 thread, images/s at batch 32 on 2 threads, file size, and
top-1 of each form on the same test images. Robustness: top-1 of the deployed model under
JPEG q30, Gaussian blur sigma 1, +-10 degree rotation, +-20% brightness (and all four).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from mlsys.tagger import metrics as M
from mlsys.tagger.inference import TaggerModel, batched_probabilities
from mlsys.tagger.schema import open_garments
from mlsys.tagger.training.bench import bench_tagger, load_test_images
from mlsys.tagger.training.evaluate import robustness
from mlsys.tagger.training.labels import labelled_test


def robustness_check(data_dir: str, model_dir: str, limit: int) -> dict[str, dict[str, float]]:
    """The evaluation's robustness check on the first `limit` test images."""
    data = open_garments(data_dir)
    y = labelled_test(data).category[:limit]
    paths = [data.image_path(u) for u in data.test_uuids[:limit]]
    model = TaggerModel(model_dir, threads=2)
    clean = M.topk_accuracy(batched_probabilities(model, paths, progress=False).category, y, 1)
    rob = robustness(model, paths, y, clean, progress=False, log=lambda s: print("robustness" + s))
    return {"clean": {"top1": clean, "drop": 0.0}, **rob}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("data_dir")
    ap.add_argument("model_dir")
    ap.add_argument("--images", type=int, default=1000, help="test images for top-1 per variant")
    ap.add_argument("--robustness-images", type=int, default=500, help="0 skips robustness")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    t0 = time.time()
    images, labels = load_test_images(args.data_dir, args.model_dir, args.images)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, 2 cores (shared)",
        "speed": bench_tagger(args.model_dir, np.ascontiguousarray(images, np.float32), labels),
    }
    if args.robustness_images:
        result["robustness"] = robustness_check(
            args.data_dir, args.model_dir, args.robustness_images
        )
    result["seconds"] = time.time() - t0
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
