"""ONNX export and INT8 quantisation, and preprocessing parity between train, predict and API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from starlette.applications import Starlette
from starlette.testclient import TestClient

from mlsys.tagger.api import routes
from mlsys.tagger.inference import TaggerModel
from mlsys.tagger.model import ExportWrapper, GarmentTagger
from mlsys.tagger.preprocess import decode_image, load_image
from mlsys.tagger.schema import open_garments


def _eager(model_dir: Path) -> ExportWrapper:
    meta = json.loads((model_dir / "tagger.json").read_text())
    tagger = GarmentTagger(n_colours=len(meta["colours"]))
    tagger.load_state_dict(torch.load(model_dir / meta["torch_file"], weights_only=True))
    return ExportWrapper(tagger).eval()


def test_onnx_fp32_matches_eager(tagger_model: Path, garments_tiny: Path) -> None:
    data = open_garments(garments_tiny)
    model = TaggerModel(tagger_model, variant="fp32")
    x = np.stack([model.prepare(load_image(data.image_path(u))) for u in data.test_uuids[:8]])
    ours = model.run(x)
    with torch.no_grad():
        ref = _eager(tagger_model)(torch.from_numpy(x))
    np.testing.assert_allclose(ours.category, ref[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(ours.tags, ref[1].numpy(), atol=1e-4)


def test_int8_is_static_qdq_per_channel_and_smaller(tagger_model: Path) -> None:
    meta = json.loads((tagger_model / "tagger.json").read_text())
    fp32, int8 = tagger_model / meta["fp32_file"], tagger_model / meta["int8_file"]
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size
    graph = onnx.load(str(int8)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # Per-channel weights: some DequantizeLinear carries a vector of scales.
    inits = {i.name: i for i in graph.initializer}
    scale_dims = [
        list(inits[n.input[1]].dims)
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[1] in inits
    ]
    vector_scales = [d for d in scale_dims if len(d) == 1 and d[0] > 1]
    assert vector_scales
    probs = TaggerModel(tagger_model, variant="int8").run(np.zeros((2, 3, 64, 64), np.float32))
    np.testing.assert_allclose(probs.category.sum(1), 1.0, atol=1e-3)


def test_int8_weights_fit_seven_bits(tagger_model: Path) -> None:
    """Full-range int8 weights overflow ONNX Runtime's int16 pair sums on CPUs without VNNI
    (3 points of top-1 lost on our AVX2 machine); the quantiser must keep them in 7 bits."""
    meta = json.loads((tagger_model / "tagger.json").read_text())
    graph = onnx.load(str(tagger_model / meta["int8_file"])).graph
    weights = [
        onnx.numpy_helper.to_array(i)
        for i in graph.initializer
        if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4  # conv weights
    ]
    assert weights
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64


def test_preprocessing_parity_file_bytes_and_api(tagger_model: Path, garments_tiny: Path) -> None:
    """The same photo gives the same input array whether read from disk (train/predict) or
    from request bytes (API), and the API answers with the batch path's probabilities."""
    data = open_garments(garments_tiny)
    model = TaggerModel(tagger_model)
    uuid = data.test_uuids[0]
    from_file = model.prepare(load_image(data.image_path(uuid)))
    from_bytes = model.prepare(decode_image(data.image_bytes(uuid)))
    np.testing.assert_array_equal(from_file, from_bytes)
    expected = model.run(from_file[None])
    with TestClient(Starlette(routes=routes(TaggerModel(tagger_model)))) as client:
        body = client.post("/tag", content=data.image_bytes(uuid)).json()
    top = body["categories"][0]
    assert top["category"] == model.categories[int(expected.category[0].argmax())]
    assert abs(top["probability"] - float(expected.category[0].max())) < 1e-5
