"""Which domain a model directory belongs to, for the registry.

The registry (`platform/registry.py`) knows versions and aliases, not models; this module
tells it, for a directory, what kind of model it holds (a `tagger.json` makes it a garment
tagger, a `model.pt` a RankNet), what to record about it, and how to probe it. The commands
are `mlsys models ...` (`compose/cli/models.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mlsys.errors import MlsysError

if TYPE_CHECKING:
    from mlsys.platform.registry import ModelCard


def model_kind(model_dir: str | Path) -> str:
    folder = Path(model_dir)
    if (folder / "tagger.json").is_file():
        return "garment-tagger"
    if (folder / "model.pt").is_file():
        return "ranknet"
    raise MlsysError(f"{folder}: neither a RankNet (model.pt) nor a garment tagger (tagger.json)")


def model_card(model_dir: str | Path) -> ModelCard:
    if model_kind(model_dir) == "garment-tagger":
        from mlsys.tagger.inference import model_card as tagger_card

        return tagger_card(model_dir)
    from mlsys.recommender.serving.served_model import model_card as ranknet_card

    return ranknet_card(model_dir)


def probe(model_dir: Path) -> list[float]:
    """The registry's probe for any model directory (dispatch by kind; loads it once)."""
    if model_kind(model_dir) == "garment-tagger":
        from mlsys.tagger.inference import probe as tagger_probe

        return tagger_probe(model_dir)
    from mlsys.recommender.serving.served_model import probe as ranknet_probe

    return ranknet_probe(model_dir)


def model_source(source: str, marker: str, hint: str) -> str:
    """A folder (absolute path), or a `models:/` URI resolved and fetched here, in the parent:
    it opens the registry first (creating its schema if new, the one process that may) and
    fails fast on a missing alias; the workers then only read, and find the files fetched."""
    from mlsys.platform.registry import Registry, parse_model_uri

    ref = parse_model_uri(source)
    if ref is None:
        path = Path(source)
        if not (path / marker).is_file() and not (marker == "model.pt" and path.is_file()):
            raise MlsysError(f"{path}: no {marker} there ({hint})")
        return str(path.resolve())
    registry = Registry()
    info = registry.resolve(ref)
    registry.download(info)
    print(f"{ref} is {info.name} version {info.version}; following it", flush=True)
    return source
