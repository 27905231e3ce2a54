"""Save and load a trained RankNet: `model.pt` (TorchScript) plus `model.json` (metadata).

`model.pt` is exactly what the kit's consumers expect: `torch.jit.script(RankNet)` saved, so
`torch.jit.load(path)(x)` on the 40-column float32 matrix gives logits. Everything else a
serving process or a reviewer needs to trust the file (feature order, which data it saw, the
training config, its metrics, the library versions) lives next to it in `model.json`, keyed by
`version` = the first 12 hex chars of the sha256 of `model.pt`, so a JSON file that drifted
from its model is detected on load.

`load_ranknet` also accepts a bare kit `model.pt` (no `model.json`): the kit's example artifact
is a valid model, and evaluating it against ours is part of the task.
"""

from __future__ import annotations

import json
import platform
import warnings
from pathlib import Path

import torch

from mlsys.errors import MlsysError
from mlsys.files import JsonIn, JsonOut, atomic_file, atomic_write_json, file_version
from mlsys.recommender.model import INPUT_FEATURES, RankNet

MODEL_FILE = "model.pt"
META_FILE = "model.json"
STATE_KEYS = (
    "model.0.weight",
    "model.0.bias",
    "model.1.weight",
    "model.1.bias",
    "model.3.weight",
    "model.3.bias",
)


class ArtifactError(MlsysError):
    """A model directory or file is missing, unreadable or inconsistent with its metadata."""


def library_versions() -> dict[str, str]:
    import numpy
    import pyarrow

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
    }


def save_ranknet(
    model: RankNet,
    model_dir: str | Path,
    *,
    data_checksum: str,
    config: JsonOut,
    metrics: JsonOut,
) -> JsonIn:
    """Write `model.pt` and `model.json` atomically; returns the metadata written."""
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream but it is the format the kit's consumers load.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
    pt_path = out / MODEL_FILE
    with atomic_file(pt_path) as tmp:
        scripted.save(str(tmp))  # type: ignore[no-untyped-call]
    meta: JsonIn = {
        "name": "ranknet",
        "version": file_version(pt_path),
        "feature_order": list(INPUT_FEATURES),
        "data_checksum": data_checksum,
        "config": config,
        "metrics": metrics,
        "libraries": library_versions(),
    }
    atomic_write_json(out / META_FILE, meta)
    return meta


def _resolve(model_dir_or_pt: str | Path) -> tuple[Path, Path | None]:
    path = Path(model_dir_or_pt)
    if path.is_dir():
        pt = path / MODEL_FILE
        meta = path / META_FILE
    else:
        pt = path
        meta = path.parent / META_FILE if path.name == MODEL_FILE else path.with_suffix(".json")
    if not pt.is_file():
        raise ArtifactError(f"{pt}: model file is missing")
    return pt, (meta if meta.is_file() else None)


def load_ranknet(model_dir_or_pt: str | Path) -> tuple[RankNet, JsonIn]:
    """Load a model directory (ours) or a bare `model.pt` (the kit's) as an eval-mode RankNet.

    The weights are copied into a plain `RankNet` rather than returned as a ScriptModule so
    callers can use the factored fast path and ordinary `nn.Module` tooling; the state-dict keys
    are checked so a foreign TorchScript file fails here with one line, not at first request.
    """
    pt, meta_path = _resolve(model_dir_or_pt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.load(str(pt), map_location="cpu")  # type: ignore[no-untyped-call]
    except (RuntimeError, ValueError) as exc:
        raise ArtifactError(f"{pt}: not a loadable TorchScript model: {exc}") from exc
    state = {k: v.detach().clone().float() for k, v in scripted.state_dict().items()}
    if tuple(sorted(state)) != tuple(sorted(STATE_KEYS)):
        raise ArtifactError(
            f"{pt}: state dict keys {sorted(state)} are not RankNet's {list(STATE_KEYS)}"
        )
    model = RankNet()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(f"{pt}: weights do not fit RankNet: {exc}") from exc
    model.eval()
    version = file_version(pt)
    if meta_path is None:
        meta: JsonIn = {
            "name": "ranknet",
            "version": version,
            "feature_order": list(INPUT_FEATURES),
            "source": "bare model.pt (no model.json)",
        }
        return model, meta
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{meta_path}: not valid JSON: {exc}") from exc
    if meta.get("version") != version:
        raise ArtifactError(
            f"{meta_path}: version {meta.get('version')!r} does not match {pt.name} "
            f"(sha256 prefix {version}); the two files come from different runs"
        )
    if list(meta.get("feature_order", [])) != list(INPUT_FEATURES):
        raise ArtifactError(f"{meta_path}: feature_order differs from RankNet's 40 inputs")
    return model, meta
