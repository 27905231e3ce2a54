"""CLI commands of the garment tagger."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlsys.cli import Verbs


def add_commands(verbs: Verbs) -> None:
    """The tagger adds its commands here (generate garments, train/evaluate/predict tagger)."""
