"""How much INT8 changes a trained tagger, by how many early layers stay float, side by side.

    .venv/bin/python benchmarks/tagger_int8_fidelity.py DATA_DIR MODEL_DIR [--float-convs 0 3 9]

Re-quantises MODEL_DIR's fp32 ONNX file the way training does (same 256 calibration images,
`export.quantize_int8`) with the first N convolutions left in float, N = 0 (all INT8, the
baseline), 3 (stem + block 0) and 9 (stem + blocks 0-2, the shipped `FLOAT_CONVS`). For each
it prints top-1 on the held-out test set (test_labels.parquet; the validation split's category
labels train the network), and against the fp32 model on training images that calibration
never saw (more of them than validation has, so small differences show): the share whose
top-1 category changes and the mean KL divergence of the category distribution; then batch-1
latency on one thread (median of 200 calls, the forms interleaved so a noisy neighbour slows
them alike) and file size.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mlsys.tagger import metrics as M
from mlsys.tagger.inference import make_session
from mlsys.tagger.preprocess import PreprocessConfig, load_batch
from mlsys.tagger.schema import open_garments
from mlsys.tagger.training.export import onnx_probabilities, quantize_int8
from mlsys.tagger.training.labels import labelled, labelled_test, stratified_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data_dir")
    ap.add_argument("model_dir")
    ap.add_argument("--float-convs", type=int, nargs="+", default=[0, 3, 9])
    ap.add_argument("--images", type=int, default=2000, help="training images for agreement")
    ap.add_argument("--calls", type=int, default=200, help="timed batch-1 calls per form")
    args = ap.parse_args()

    model_dir = Path(args.model_dir)
    meta = json.loads((model_dir / "tagger.json").read_text())
    cfg = meta["config"]
    pre = PreprocessConfig(**meta["preprocessing"])
    data = open_garments(args.data_dir)
    labels = labelled(data.data)
    train_idx, _ = stratified_split(labels, cfg["val_fraction"], cfg["seed"])
    y_train, y_test = labels.subset(train_idx), labelled_test(data)
    n_calib = cfg["calibration_images"]
    if len(y_train) < n_calib + args.images:
        raise SystemExit(f"need {n_calib + args.images} training images, have {len(y_train)}")

    def images(uuids: list[str]) -> np.ndarray:
        return load_batch([data.image_bytes(u) for u in uuids], pre)

    calib = images(y_train.uuids[:n_calib])
    unseen = images(y_train.uuids[n_calib : n_calib + args.images])
    test = images(y_test.uuids)
    fp32 = model_dir / meta["fp32_file"]
    ref = onnx_probabilities(fp32, unseen, 2)["category"]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        forms = {"fp32": fp32}
        for n in args.float_convs:
            forms[f"int8, {n} float convs"] = quantize_int8(
                fp32, Path(tmp) / f"int8_{n}.onnx", calib, float_convs=n
            )
        for name, path in forms.items():
            p = onnx_probabilities(path, unseen, 2)["category"]
            kl = (ref * (np.log(ref + 1e-9) - np.log(p + 1e-9))).sum(1).mean()
            top1 = M.topk_accuracy(
                onnx_probabilities(path, test, 2)["category"], y_test.category, 1
            )
            changed = 1.0 - M.topk_accuracy(p, ref.argmax(1), 1)  # scored against fp32's top-1
            rows.append([name, top1, changed, float(kl), path.stat().st_size / 1e6])
        sessions = {name: make_session(path, threads=1) for name, path in forms.items()}
        x = test[:1]
        times: dict[str, list[float]] = {name: [] for name in forms}
        for s in sessions.values():
            for _ in range(20):
                s.run(None, {"image": x})
        for _ in range(args.calls):
            for name, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, {"image": x})
                times[name].append(time.perf_counter() - t0)

    print(f"{model_dir} ({meta['version']}), {platform.processor() or platform.machine()}")
    print(f"test {len(y_test)} images; agreement on {len(unseen)} unseen training images")
    print(f"{'form':24s} {'test top-1':>10s} {'top-1 changed':>13s} {'mean KL':>9s} "
          f"{'ms b1':>7s} {'MB':>6s}")  # fmt: skip
    for name, top1, changed, kl, mb in rows:
        ms = statistics.median(times[name]) * 1e3
        print(f"{name:24s} {top1:10.4f} {changed:13.2%} {kl:9.5f} {ms:7.2f} {mb:6.2f}")


if __name__ == "__main__":
    main()
