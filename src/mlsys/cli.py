"""The `mlsys` command line.

Commands are grouped by what a user does (`generate`, `train`, `evaluate`, ...) and then by
what they act on (`clicks`, `ranknet`, `garments`, `tagger`). The argparse side of each group
is a module of `compose/cli/` that adds its subcommands to these verbs; its handlers call typed
functions of `compose/` and the domains. Handlers import their heavy dependencies (torch,
pyarrow) lazily: `mlsys --help` must stay instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from mlsys.errors import MlsysError

# Verbs in the order `mlsys --help` shows them.
VERBS: dict[str, str] = {
    "generate": "generate a dataset",
    "data": "build training data from the impression and click log",
    "validate": "check a dataset against its schema and manifest",
    "report": "write an exploratory report",
    "train": "train a model",
    "retrain": "retrain a model from its champion, gate it, register it",
    "evaluate": "evaluate a trained model",
    "predict": "write predictions for a test set",
    "bench": "run a benchmark",
    "features": "manage the online feature store",
    "models": "manage the model registry (MLflow; $MLFLOW_TRACKING_URI)",
    "serve": "run the HTTP API",
    "rollout": "split a model's traffic: shadow, canary, A/B, interleaving",
    "simulate": "replay simulated users who click by the true rule",
    "log": "export the impression and click log",
    "experiment": "analyse an online experiment",
    "monitor": "watch a model's live traffic for drift",
    "pipeline": "the retraining loop: drift -> data -> retrain -> gate -> shadow -> canary",
    "loadtest": "replay requests against a running API",
    "demo": "tell the recommender's lifecycle end to end (full scale; --scale small: quick)",
}

# Each module exposes `add_commands(verbs: Verbs) -> None`.
COMMAND_MODULES: tuple[str, ...] = (
    "mlsys.compose.cli.recommender",
    "mlsys.compose.cli.tagger",
    "mlsys.compose.cli.serving",
    "mlsys.compose.cli.models",
    "mlsys.compose.cli.experiments",
    "mlsys.compose.cli.monitor",
    "mlsys.compose.cli.retrain",
    "mlsys.compose.cli.pipeline",
)

Handler = Callable[[argparse.Namespace], int | None]


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line naming what is wrong (argparse prints the whole usage first,
    which buries it); `--help` still shows everything. Exit code 2, nothing run."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Verbs:
    """Gives command modules a place under each verb without knowing argparse plumbing."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self._top = parser.add_subparsers(
            dest="verb", metavar="COMMAND", required=True, parser_class=OneLineParser
        )
        self._verbs: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
        self._leaf: dict[str, argparse.ArgumentParser] = {}
        for name, help_text in VERBS.items():
            self._leaf[name] = self._top.add_parser(name, help=help_text, description=help_text)

    def add(self, verb: str, noun: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        """Add `mlsys VERB NOUN ...`; returns the parser so the caller adds its arguments."""
        if verb not in self._verbs:
            self._verbs[verb] = self._leaf[verb].add_subparsers(
                dest="noun", metavar="WHAT", required=True, parser_class=OneLineParser
            )
        sub = self._verbs[verb].add_parser(noun, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    def add_verb(self, verb: str, handler: Handler) -> argparse.ArgumentParser:
        """Use `mlsys VERB ...` directly (no noun), e.g. `mlsys serve`."""
        parser = self._leaf[verb]
        parser.set_defaults(handler=handler)
        return parser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mlsys",
        description="Restaurant recommendation and garment tagging, trained and served.",
    )
    verbs = Verbs(parser)
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        module.add_commands(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "--help"])
        return 2
    try:
        return int(handler(args) or 0)
    except MlsysError as exc:
        print(f"mlsys: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mlsys: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
