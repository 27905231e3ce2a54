"""`mlsys evaluate tagger`: the deployed model on the held-out test set, judged as the task does.

Reports top-1/top-2 accuracy, per-tag precision/recall/F1 at the thresholds chosen on
validation, the generator's Bayes ceiling beside top-1 (and, on generated data, the errors per
category pair beside the Bayes classifier's), a raw-pixel linear baseline (if
it came close, the images would be too easy to say anything about the network), and top-1
under the four mild corruptions. Writes metrics.json, report.md and PNGs (confusion matrix,
precision-recall curves) to the output folder.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mlsys.errors import MlsysError
from mlsys.tagger import metrics as M
from mlsys.tagger.inference import Probabilities, TaggerModel, batched_probabilities
from mlsys.tagger.preprocess import load_image
from mlsys.tagger.schema import CATEGORIES, TAGS, GarmentDataset, open_garments
from mlsys.tagger.training.augment import CORRUPTIONS
from mlsys.tagger.training.labels import Labelled, labelled, labelled_test

BASELINE_PIXELS = 32


def ceiling(data: GarmentDataset) -> dict[str, float] | None:
    """The generator's Bayes ceiling for the test split (generator.json), when there is one.

    `expected_top1` is the mean max posterior p(category | shape latents): the top-1 a
    classifier that saw the shape perfectly would get on average; `realised_top1` is what
    that classifier actually scores on these labels.
    """
    man = data.manifest or {}
    test = (man.get("ceiling") or {}).get("test")
    if not isinstance(test, dict) or "expected_top1" not in test:
        return None
    return {k: float(v) for k, v in test.items() if isinstance(v, int | float)}


def error_pairs(
    data_dir: Path, uuids: list[str], y: np.ndarray, pred: np.ndarray
) -> list[dict[str, Any]] | None:
    """Top-1 errors per (true, predicted) pair, the model's beside the Bayes classifier's.

    The Bayes classifier (argmax of the generator's p(category | shape latents), in
    latents.parquet) makes the errors no image model can avoid; the model's excess over it,
    pair by pair, says which shape cue the network still misreads (hem length for mini vs
    casual dresses, collar/placket/hem for blouses vs shirts). None without latents.parquet,
    i.e. on real data.
    """
    import pyarrow.parquet as pq

    from mlsys.tagger.data.generate import LATENTS_FILE

    path = data_dir / LATENTS_FILE
    if not path.is_file():
        return None
    cols = [f"p_{c}" for c in CATEGORIES]
    table = pq.read_table(path, columns=["uuid", *cols])
    row = {u: i for i, u in enumerate(table.column("uuid").to_pylist())}
    if any(u not in row for u in uuids):
        raise MlsysError(f"{path}: has no latents for some test items (column uuid)")
    post = np.stack([table.column(c).to_numpy() for c in cols], 1)
    bayes = post[[row[u] for u in uuids]].argmax(1)
    n = len(CATEGORIES)
    cm_model, cm_bayes = confusion(y, pred, n), confusion(y, bayes, n)
    return [
        {
            "true": CATEGORIES[t],
            "predicted": CATEGORIES[q],
            "model": int(cm_model[t, q]),
            "bayes": int(cm_bayes[t, q]),
        }
        for t in range(n)
        for q in range(n)
        if t != q and cm_model[t, q] + cm_bayes[t, q] > 0
    ]


def confusion(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def plot_confusion(cm: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    norm = cm / cm.sum(1, keepdims=True).clip(min=1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(len(CATEGORIES)), CATEGORIES, rotation=30, ha="right")
    ax.set_yticks(range(len(CATEGORIES)), CATEGORIES)
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pr_curve(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-probs)
    ys = y[order]
    tp = np.cumsum(ys)
    precision = tp / np.arange(1, len(ys) + 1)
    recall = tp / max(ys.sum(), 1)
    return precision, recall


def plot_pr(tag_probs: np.ndarray, tags: np.ndarray, thresholds: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for j, name in enumerate(TAGS):
        p, r = pr_curve(tag_probs[:, j], tags[:, j])
        line = ax.plot(r, p, label=name)[0]
        pred = tag_probs[:, j] >= thresholds[j]
        tp_p, tp_r, _ = M.precision_recall_f1(pred.astype(np.int64), tags[:, j].astype(np.int64))
        ax.plot([tp_r], [tp_p], "o", color=line.get_color())
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_title("Pattern tags: precision-recall (dot = chosen threshold)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _thumbs(paths: list[Path]) -> np.ndarray:
    """Raw pixels for the baseline: 32x32 RGB, scaled to [0, 1]."""

    def one(p: Path) -> np.ndarray:
        img = load_image(p).convert("RGB")
        img.draft("RGB", (BASELINE_PIXELS * 2, BASELINE_PIXELS * 2))
        img = img.resize((BASELINE_PIXELS, BASELINE_PIXELS), Image.Resampling.BILINEAR)
        return np.asarray(img, np.float32).reshape(-1) / 255.0

    with ThreadPoolExecutor(max_workers=2) as pool:
        return np.stack(list(pool.map(one, paths)))


def pixel_baseline(
    data: GarmentDataset, train: Labelled, test: Labelled, max_train: int = 6000
) -> dict[str, Any]:
    """Logistic regression on 32x32 raw pixels: category (multinomial) and each tag."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    t0 = time.time()
    take = np.random.default_rng(0).permutation(len(train))[:max_train]
    tr = train.subset(np.sort(take))
    x_tr = _thumbs([data.image_path(u) for u in tr.uuids])
    x_te = _thumbs([data.image_path(u) for u in test.uuids])
    scaler = StandardScaler().fit(x_tr)
    x_tr, x_te = scaler.transform(x_tr), scaler.transform(x_te)
    cat = LogisticRegression(max_iter=300, C=0.01).fit(x_tr, tr.category)
    cat_probs = np.zeros((len(test), len(CATEGORIES)))
    cat_probs[:, cat.classes_] = cat.predict_proba(x_te)
    tag_probs = np.zeros((len(test), len(TAGS)))
    for j in range(len(TAGS)):
        if tr.tags[:, j].min() == tr.tags[:, j].max():
            continue
        clf = LogisticRegression(max_iter=300, C=0.01, class_weight="balanced").fit(
            x_tr, tr.tags[:, j]
        )
        tag_probs[:, j] = clf.predict_proba(x_te)[:, 1]
    out = M.summary({"category": cat_probs, "tags": tag_probs}, test.category, test.tags)
    out["n_train"] = len(tr)
    out["seconds"] = time.time() - t0
    return out


def _corruption_transform(name: str) -> Callable[[Image.Image, int], Image.Image]:
    fn = CORRUPTIONS[name]
    return lambda img, i: fn(img, random.Random(i))


def robustness(
    model: TaggerModel,
    paths: list[Path],
    y: np.ndarray,
    clean_top1: float,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """Top-1/top-2 under each mild corruption (seeded per image, so repeatable) and the drop
    from the clean top-1."""
    out: dict[str, dict[str, float]] = {}
    for name in CORRUPTIONS:
        p = batched_probabilities(
            model, paths, transform=_corruption_transform(name), desc=name, progress=progress
        )
        top1 = M.topk_accuracy(p.category, y, 1)
        out[name] = {
            "top1": top1,
            "drop": clean_top1 - top1,
            "top2": M.topk_accuracy(p.category, y, 2),
        }
        log(f"  {name:18s} top-1 {top1:.4f} (drop {clean_top1 - top1:+.4f})")
    return out


def evaluate_tagger(
    data_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path | None = None,
    variant: str = "deployed",
    corruptions: bool = True,
    baseline: bool = True,
    threads: int = 2,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    data = open_garments(data_dir)
    test = labelled_test(data)
    out = Path(out_dir) if out_dir is not None else Path(model_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    model = TaggerModel(model_dir, threads=threads, variant=variant)
    paths = [data.image_path(u) for u in test.uuids]

    t0 = time.time()
    probs = batched_probabilities(model, paths, desc="test", progress=progress)
    seconds = time.time() - t0
    result: dict[str, Any] = {
        "model": model.path.name,
        "model_version": model.version,
        "data_dir": str(Path(data_dir).resolve()),
        **M.summary(_as_dict(probs), test.category, test.tags, test.colour, model.thresholds),
        "seconds_clean_pass": seconds,
    }
    ceil = ceiling(data)
    result["ceiling"] = ceil
    result["ceiling_top1"] = None if ceil is None else ceil["expected_top1"]
    if ceil is not None:
        result["top1_gap_to_ceiling"] = ceil["expected_top1"] - result["top1"]
        log(
            f"generator ceiling: expected top-1 {ceil['expected_top1']:.4f}, realised "
            f"{ceil.get('realised_top1', float('nan')):.4f}, "
            f"top-2 {ceil.get('expected_top2', float('nan')):.4f}"
        )
    cm = confusion(test.category, probs.category.argmax(1), len(CATEGORIES))
    result["confusion_matrix"] = cm.tolist()
    plot_confusion(
        cm,
        out / "confusion_matrix.png",
        f"Test confusion ({model.path.name}), top-1 {result['top1']:.3f}",
    )
    plot_pr(probs.tags, test.tags, model.thresholds, out / "pr_curves.png")
    log(_line("model", result))
    pairs = error_pairs(Path(data_dir), test.uuids, test.category, probs.category.argmax(1))
    if pairs is not None:
        result["error_pairs"] = sorted(pairs, key=lambda e: -(e["model"] - e["bayes"]))
        excess = sum(e["model"] - e["bayes"] for e in pairs)
        log(f"top-1 errors beyond the Bayes classifier's: {excess} of {result['n']} items")

    if corruptions:
        result["corruptions"] = robustness(
            model, paths, test.category, result["top1"], progress=progress, log=log
        )

    if baseline:
        train = labelled(data.data)
        result["pixel_baseline"] = pixel_baseline(data, train, test)
        log(_line("raw-pixel logistic regression", result["pixel_baseline"]))

    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(render_markdown(result))
    return result


def _as_dict(p: Probabilities) -> dict[str, np.ndarray]:
    return {"category": p.category, "tags": p.tags, "colour": p.colour}


def _line(name: str, r: dict[str, Any]) -> str:
    tags = "  ".join(f"{t} F1 {r['tags'][t]['f1']:.3f}" for t in TAGS)
    return (
        f"{name}: top-1 {r['top1']:.4f}  top-2 {r['top2']:.4f}  "
        f"tag macro F1 {r['tag_macro_f1']:.4f}  ({tags})"
    )


def render_markdown(r: dict[str, Any]) -> str:
    lines = [f"# Tagger evaluation: {r['model']} (version {r['model_version']})", "",
             f"Test images: {r['n']}", "", "| metric | value |", "|---|---|",
             f"| top-1 accuracy | {r['top1']:.4f} |", f"| top-2 accuracy | {r['top2']:.4f} |",
             f"| tag macro F1 | {r['tag_macro_f1']:.4f} |"]  # fmt: skip
    if r.get("ceiling_top1") is not None:
        lines.append(f"| generator ceiling (expected top-1) | {r['ceiling_top1']:.4f} |")
        if "realised_top1" in r["ceiling"]:
            lines.append(
                "| generator ceiling (realised top-1 of the Bayes classifier) | "
                f"{r['ceiling']['realised_top1']:.4f} |"
            )
        if "expected_top2" in r["ceiling"]:
            lines.append(
                f"| generator ceiling (expected top-2) | {r['ceiling']['expected_top2']:.4f} |"
            )
        lines.append(f"| gap to ceiling | {r['top1_gap_to_ceiling']:.4f} |")
    if "colour_acc" in r:
        lines.append(f"| colour accuracy (colour probe) | {r['colour_acc']:.4f} |")
    lines += [
        "",
        "| tag | precision | recall | F1 | threshold | support |",
        "|---|---|---|---|---|---|",
    ]
    for t in TAGS:
        v = r["tags"][t]
        lines.append(
            f"| {t} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} "
            f"| {v['threshold']:.3f} | {v['support']} |"
        )
    if "error_pairs" in r:
        lines += [
            "",
            "Top-1 errors by pair, the model's and the Bayes classifier's (argmax of "
            "the generator's posterior): the excess is what the network misreads.",
            "",
            "| true | predicted | model | Bayes | excess |",
            "|---|---|---|---|---|",
        ]
        for e in r["error_pairs"]:
            lines.append(
                f"| {e['true']} | {e['predicted']} | {e['model']} | {e['bayes']} "
                f"| {e['model'] - e['bayes']:+d} |"
            )
    if "corruptions" in r:
        lines += ["", "| corruption | top-1 | drop |", "|---|---|---|"]
        for name, v in r["corruptions"].items():
            lines.append(f"| {name} | {v['top1']:.4f} | {v['drop']:+.4f} |")
    if "pixel_baseline" in r:
        b = r["pixel_baseline"]
        lines += [
            "",
            f"Raw-pixel baseline (logistic regression on {BASELINE_PIXELS}x{BASELINE_PIXELS} "
            f"pixels, {b['n_train']} training images): top-1 {b['top1']:.4f}, "
            f"top-2 {b['top2']:.4f}, tag macro F1 {b['tag_macro_f1']:.4f}.",
        ]
    lines += ["", "![confusion](confusion_matrix.png)", "", "![pr](pr_curves.png)", ""]
    return "\n".join(lines)
