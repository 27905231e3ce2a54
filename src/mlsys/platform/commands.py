"""CLI commands that span domains: the end-to-end demo, serving, load testing."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlsys.cli import Verbs


def add_commands(verbs: Verbs) -> None:
    demo = verbs.add_verb("demo", _demo)
    demo.add_argument("--workdir", default=".demo", help="where the demo writes (default .demo)")


def _demo(args: argparse.Namespace) -> int:
    from mlsys.platform.demo import run_demo

    return run_demo(args.workdir)
