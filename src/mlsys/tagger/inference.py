"""The deployed tagger: an ONNX Runtime session plus the metadata that gives its outputs meaning.

`predict`, `evaluate`, the benchmark and `POST /tag` all go through `TaggerModel`, so the
preprocessing, the thresholds and the category order can never drift between them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from mlsys.errors import MlsysError
from mlsys.files import JsonIn
from mlsys.platform.registry import ModelCard
from mlsys.tagger.preprocess import PreprocessConfig, load_image, to_array

MODEL_JSON = "tagger.json"


def make_session(path: Path, threads: int = 1) -> Any:
    """A CPU session with a fixed thread count, so latency figures mean what they say."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Probabilities:
    category: np.ndarray  # (N, 5)
    tags: np.ndarray  # (N, 3)
    colour: np.ndarray  # (N, n_colours)


def load_meta(model_dir: str | Path) -> JsonIn:
    path = Path(model_dir) / MODEL_JSON
    if not path.is_file():
        raise MlsysError(
            f"{path}: missing; train a model first (mlsys train tagger DATA_DIR --out {model_dir})"
        )
    try:
        meta: JsonIn = json.loads(path.read_text())
    except ValueError as exc:
        raise MlsysError(f"{path}: not readable JSON ({exc})") from None
    return meta


class TaggerModel:
    """Loads MODEL_DIR/tagger.json and the ONNX file it names (INT8 unless `variant="fp32"`)."""

    def __init__(self, model_dir: str | Path, threads: int = 1, variant: str = "deployed") -> None:
        self.model_dir = Path(model_dir)
        self.meta = load_meta(model_dir)
        key = {"deployed": "model_file", "fp32": "fp32_file", "int8": "int8_file"}.get(variant)
        if key is None:
            raise MlsysError(f"unknown model variant {variant!r} (deployed, fp32, int8)")
        self.path = self.model_dir / self.meta[key]
        if not self.path.is_file():
            raise MlsysError(f"{self.path}: missing (named by {self.model_dir / MODEL_JSON})")
        self.session = make_session(self.path, threads)
        self.config = PreprocessConfig(**self.meta["preprocessing"])
        self.categories: list[str] = list(self.meta["categories"])
        self.tags: list[str] = list(self.meta["tags"])
        self.colours: list[str] = list(self.meta["colours"])
        self.thresholds = np.array([self.meta["thresholds"][t] for t in self.tags], np.float32)
        self.version: str = str(self.meta["version"])
        self.input_name: str = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> Probabilities:
        """Normalised (N, 3, size, size) float32 -> probabilities."""
        cat, tags, col = self.session.run(
            None, {self.input_name: np.ascontiguousarray(batch, np.float32)}
        )
        return Probabilities(np.asarray(cat), np.asarray(tags), np.asarray(col))

    def prepare(self, img: Image.Image) -> np.ndarray:
        return to_array(img, self.config)

    def predict_images(self, images: list[Image.Image]) -> Probabilities:
        return self.run(np.stack([self.prepare(im) for im in images]))

    def decisions(self, tag_probs: np.ndarray) -> np.ndarray:
        return (tag_probs >= self.thresholds).astype(np.int64)

    def describe(self, probs: Probabilities, row: int = 0) -> JsonIn:
        """One item's answer as the API returns it: top-2 categories, every tag, the colour."""
        cat = probs.category[row]
        top = np.argsort(-cat)[:2]
        tag_p = probs.tags[row]
        decided = self.decisions(tag_p[None, :])[0]
        col = probs.colour[row]
        return {
            "categories": [
                {"category": self.categories[i], "probability": round(float(cat[i]), 6)}
                for i in top
            ],
            "tags": {
                name: {
                    "probability": round(float(tag_p[j]), 6),
                    "present": bool(decided[j]),
                    "threshold": round(float(self.thresholds[j]), 6),
                }
                for j, name in enumerate(self.tags)
            },
            "colour": {
                "color1": self.colours[int(np.argmax(col))],
                "probability": round(float(col.max()), 6),
            },
            "model_version": self.version,
        }


def _probe_image(size: int) -> np.ndarray:
    """A fixed (1, 3, size, size) input: smooth ramps and a checker, within the normalised
    range, so every layer sees non-trivial activations."""
    ramp = np.linspace(-2.0, 2.0, size, dtype=np.float32)
    checker = (np.indices((size, size)).sum(0) // max(1, size // 8) % 2).astype(np.float32)
    return np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), checker])[None]


def probe(model_dir: str | Path) -> list[float]:
    """The fixed image's category and tag probabilities from the deployed ONNX file, as
    `POST /tag` computes them: recorded at registration, recomputed before champion."""
    model = TaggerModel(model_dir)
    probs = model.run(_probe_image(model.config.size))
    return [float(x) for x in (*probs.category[0], *probs.tags[0])]


def model_card(model_dir: str | Path) -> ModelCard:
    """What the registry records about a garment-tagger model directory."""
    meta = load_meta(model_dir)
    val = meta.get("val_metrics", {})
    keys = ("tag_macro_f1", "colour_acc", "top1_trained")
    return ModelCard(
        kind="garment-tagger",
        file_version=str(meta["version"]),
        data_checksum=str(meta.get("data_checksum", "")),
        metrics={k: float(val[k]) for k in keys if k in val},
        probe=probe(model_dir),
    )


def batched_probabilities(
    model: TaggerModel,
    paths: Sequence[Path],
    batch_size: int = 32,
    transform: Callable[[Image.Image, int], Image.Image] | None = None,
    desc: str = "predict",
    progress: bool = True,
) -> Probabilities:
    """Decode in a thread pool (PIL releases the GIL) while ONNX Runtime runs the last batch.

    `transform(img, index)`, when given, perturbs each decoded image (the robustness check).
    """

    def prepare(i: int) -> np.ndarray:
        img = load_image(paths[i])
        if transform is not None:
            img = transform(img, i)
        return model.prepare(img)

    def batches() -> Iterator[np.ndarray]:
        with ThreadPoolExecutor(max_workers=2) as pool:
            for start in range(0, len(paths), batch_size):
                idx = range(start, min(start + batch_size, len(paths)))
                yield np.stack(list(pool.map(prepare, idx)))

    cats, tags, cols = [], [], []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in batches():
            p = model.run(batch)
            cats.append(p.category)
            tags.append(p.tags)
            cols.append(p.colour)
            bar.update(len(batch))
    if not cats:
        return Probabilities(
            np.zeros((0, len(model.categories)), np.float32),
            np.zeros((0, len(model.tags)), np.float32),
            np.zeros((0, len(model.colours)), np.float32),
        )
    return Probabilities(np.concatenate(cats), np.concatenate(tags), np.concatenate(cols))
