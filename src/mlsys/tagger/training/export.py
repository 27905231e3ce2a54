"""Export the whole tagger (backbone + heads) to ONNX, then quantise it to INT8.

The served artifact is one ONNX file that takes a normalised NCHW float batch and returns
probabilities, so the API and `predict` need only ONNX Runtime and the shared preprocessing.
INT8 uses static QDQ quantisation with per-channel weights, calibrated on real training
images: for a convnet, static activation scales beat dynamic quantisation (which quantises
activations on the fly per batch and leaves convolutions mostly in float), and EfficientNet-
Lite's ReLU6 activations have the bounded ranges that make calibration easy.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlsys.tagger.preprocess import PreprocessConfig, load_batch
from mlsys.tagger.schema import GarmentDataset
from mlsys.tagger.training.model import ExportWrapper, GarmentTagger, Prefix

INPUT_NAME = "image"
OUTPUT_NAMES: tuple[str, str, str] = ("category", "tags", "colour")
OPSET = 17


def export_onnx(tagger: GarmentTagger, path: Path, size: int) -> Path:
    """Trace the eval-mode tagger at `size` x `size` with a dynamic batch dimension."""
    return _export(ExportWrapper(tagger).eval(), path, size, list(OUTPUT_NAMES))


def export_prefix_onnx(tagger: GarmentTagger, path: Path, size: int, stop_block: int) -> Path:
    """The frozen blocks alone: training runs them once per image view, so they get the
    inference engine (caching ran at 60 images/s through ONNX Runtime vs 15 in eager PyTorch)."""
    return _export(Prefix(tagger, stop_block).eval(), path, size, ["activations"])


def _export(wrapper: torch.nn.Module, path: Path, size: int, outputs: list[str]) -> Path:
    dummy = torch.zeros(1, 3, size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # Padding sizes are traced as constants on purpose: the graph serves one input size.
        warnings.simplefilter("ignore")
        # The TorchScript exporter (dynamo=False) needs no onnxscript and folds batch norm
        # into the convolutions, which is what quantisation wants to see.
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in outputs}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


# Convolutions before block 3: the stem (1), block 0 (2: no expansion) and blocks 1-2 (3 each).
FLOAT_CONVS = 9


def _float_nodes(graph: Any, float_convs: int) -> list[str]:
    """Nodes left in float: everything before the `float_convs`-th convolution (by default
    FLOAT_CONVS: everything before block 3), and the output softmax/sigmoid.

    Nearly all of INT8's error arose in the first layers. Measured on 2,000 training images
    that calibration never saw (top-1 changed vs fp32 / mean KL of the category
    distribution): all INT8 1.7 % / 0.0121; stem and block 0 in float 1.05 % / 0.0054; stem
    and blocks 0-2 in float 0.65 % / 0.0013, at 6.6 ms per image instead of 6.5 on one AVX2
    core (benchmarks/tagger_int8_fidelity.py measures this for any trained model). Early
    ReLU6 activations are mostly small, and 1/255 of [0, 6] is coarse for them; at 80x80 and
    40x40 with 16-32 channels int8 gains ONNX Runtime little speed anyway.

    The softmax/sigmoid stay float because quantised to 1/255 steps, small category
    probabilities tie at 0 and the second-best category becomes arbitrary. The rule is by
    position, so a graph of the frozen blocks alone (training's cache) gets the same float
    layers as the whole tagger.
    """
    convs = [i for i, n in enumerate(graph.node) if n.op_type == "Conv"]
    if float_convs == 0:
        stop = 0
    elif float_convs < len(convs):
        stop = convs[float_convs]
    else:  # a graph with fewer convolutions (a short prefix) stays float whole
        stop = len(graph.node)
    early = [n.name for n in graph.node[:stop]]
    return early + [n.name for n in graph.node if n.op_type in ("Softmax", "Sigmoid")]


class _Calibration:
    """Feeds calibration batches to onnxruntime's calibrator (its CalibrationDataReader API)."""

    def __init__(self, images: np.ndarray, batch_size: int = 16) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, np.float32)}

    def rewind(self) -> None:  # pragma: no cover - only some calibrators call it
        pass


def quantize_int8(
    fp32_path: Path, int8_path: Path, calibration: np.ndarray, float_convs: int = FLOAT_CONVS
) -> Path:
    """Static QDQ INT8 (per-channel weights, MinMax activation ranges) from calibration images,
    with the first layers left in float (`_float_nodes`).

    `calibration` is a normalised (N, 3, H, W) float array, a few hundred training images.

    Weights use 7 bits (`reduce_range`). On x86 CPUs without VNNI (AVX2, as on our AMD EPYC
    machines) ONNX Runtime multiplies uint8 activations by int8 weights with an instruction
    that sums pairs of products into int16 and saturates; full-range weights overflowed it
    and cost a model 2.9 points of validation top-1 there (0.8981 fp32 -> 0.8688), although
    the same recipe had lost only 0.25 points on an AVX-512 machine. With 7-bit weights the
    pair sums cannot overflow: 0.8947 on the AVX2 machine, and the file scores the same on
    whichever x86 CPU serves it.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference + graph optimisation first, as onnxruntime recommends for QDQ.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        import onnx

        keep_float = _float_nodes(onnx.load(str(prepared)).graph, float_convs)
        quantize_static(
            str(prepared),
            str(int8_path),
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            reduce_range=True,
            nodes_to_exclude=keep_float,
        )
    return int8_path


def clean_images(data: GarmentDataset, uuids: list[str], pre: PreprocessConfig) -> np.ndarray:
    """Clean normalised images: calibration for INT8, and the fp32/INT8 comparison."""
    return load_batch([data.image_bytes(u) for u in uuids], pre)


def onnx_probabilities(path: Path, images: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    from mlsys.tagger.inference import make_session

    sess = make_session(path, threads=threads)
    outs: list[list[np.ndarray]] = [[], [], []]
    # Small batches keep ONNX Runtime's memory arena small (see cache_prefix).
    for i in range(0, len(images), 16):
        res = sess.run(None, {"image": images[i : i + 16]})
        for k in range(3):
            outs[k].append(np.asarray(res[k]))
    return {
        "category": np.concatenate(outs[0]),
        "tags": np.concatenate(outs[1]),
        "colour": np.concatenate(outs[2]),
    }
