"""Is the generated garment set learnable, and not too easy? Two cheap probes, CPU only.

1. Raw-pixel linear baseline: logistic regression on 32x32 RGB pixels. If this came close to
   the ceiling, the categories would be separable by colour blobs: the data would be a toy.
2. Frozen ImageNet EfficientNet-Lite0 features + logistic regression (a linear probe): a lower
   bound on what fine-tuning reaches. If the probe is already near the targets, the data is
   learnable; if it is far below, fine-tuning has to do the work (or the data is too hard).

Both read images through mlsys.tagger.preprocess, like training. Usage (under the CPU lock):

    flock /tmp/mlsys-heavy.lock .venv/bin/python benchmarks/garments_probe.py /work/data/garments \
        --probe-train 3000 --probe-test 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from mlsys.tagger.preprocess import PreprocessConfig, load_image, to_array
from mlsys.tagger.schema import CATEGORIES, TAGS, open_garments


def _labels(table: Any) -> tuple[np.ndarray, np.ndarray]:
    cat = np.asarray([CATEGORIES.index(c) for c in table["cc3"].to_pylist()])
    tags = np.stack([table[t].to_numpy() for t in TAGS], axis=1)
    return cat, tags


def _scores(name: str, x_tr: np.ndarray, y_tr: tuple[np.ndarray, np.ndarray], x_te: np.ndarray,
            y_te: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:  # fmt: skip
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_te = scaler.transform(x_tr), scaler.transform(x_te)
    clf = LogisticRegression(max_iter=500, C=0.05).fit(x_tr, y_tr[0])
    proba = clf.predict_proba(x_te)
    order = np.argsort(-proba, axis=1)
    top1 = float((order[:, 0] == y_te[0]).mean())
    top2 = float(((order[:, 0] == y_te[0]) | (order[:, 1] == y_te[0])).mean())
    f1 = {}
    for j, tag in enumerate(TAGS):
        t = LogisticRegression(max_iter=500, C=0.05, class_weight="balanced")
        t.fit(x_tr, y_tr[1][:, j])
        f1[tag] = round(float(f1_score(y_te[1][:, j], t.predict(x_te))), 4)
    out = {"probe": name, "top1": round(top1, 4), "top2": round(top2, 4), "tag_f1": f1,
           "macro_f1": round(float(np.mean(list(f1.values()))), 4),
           "train": len(x_tr), "test": len(x_te)}  # fmt: skip
    print(json.dumps(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("--probe-train", type=int, default=3000)
    ap.add_argument("--probe-test", type=int, default=1000)
    ap.add_argument("--probe-size", type=int, default=160)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    ds = open_garments(args.data_dir)
    assert ds.test_labels is not None, "needs test_labels.parquet (a generated set)"
    y_tr, y_te = _labels(ds.data), _labels(ds.test_labels)
    tr_ids = ds.data["uuid"].to_pylist()
    te_ids = ds.test_labels["uuid"].to_pylist()
    results: list[dict[str, Any]] = []

    t0 = time.perf_counter()
    small = PreprocessConfig(size=32)
    x_tr = np.stack([to_array(load_image(ds.image_path(u)), small).ravel() for u in tr_ids])
    x_te = np.stack([to_array(load_image(ds.image_path(u)), small).ravel() for u in te_ids])
    results.append(_scores("raw pixels 32x32, logistic regression", x_tr, y_tr, x_te, y_te))
    print(f"  ({time.perf_counter() - t0:.0f} s)")

    if args.probe_train > 0:
        import torch

        from mlsys.tagger.training.model import load_pretrained

        torch.set_num_threads(2)
        net = load_pretrained().eval()
        # the TF-converted Lite weights expect (x - 127) / 128, as the tagger's training uses
        cfg = PreprocessConfig(size=args.probe_size, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)

        def embed(ids: list[str]) -> np.ndarray:
            feats = []
            with torch.inference_mode():
                for i in range(0, len(ids), 64):
                    batch = np.stack([to_array(load_image(ds.image_path(u)), cfg)
                                      for u in ids[i : i + 64]])  # fmt: skip
                    feats.append(net.features(torch.from_numpy(batch)).numpy())
            return np.concatenate(feats)

        t0 = time.perf_counter()
        n_tr, n_te = args.probe_train, args.probe_test
        f_tr, f_te = embed(tr_ids[:n_tr]), embed(te_ids[:n_te])
        sub_tr = (y_tr[0][:n_tr], y_tr[1][:n_tr])
        sub_te = (y_te[0][:n_te], y_te[1][:n_te])
        results.append(_scores(f"frozen EfficientNet-Lite0 {args.probe_size}px + logistic "
                               "regression", f_tr, sub_tr, f_te, sub_te))  # fmt: skip
        print(f"  ({time.perf_counter() - t0:.0f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
