"""`mlsys models ...`: the registry's commands (work in `platform/registry.py`, the kind of a
model directory in `compose/models.py`).

    mlsys models register MODEL_DIR --name NAME [--alias ALIAS] [--reason TEXT]
    mlsys models list [NAME]
    mlsys models alias NAME ALIAS VERSION [--reason TEXT]
    mlsys models promote NAME [--reason TEXT]      challenger -> champion, champion -> previous
    mlsys models rollback NAME [--reason TEXT]     champion <-> previous
    mlsys models history NAME                      every alias change, oldest first
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from mlsys.compose.models import model_card, probe

if TYPE_CHECKING:
    from mlsys.cli import Verbs
    from mlsys.platform.registry import Registry


def add_commands(verbs: Verbs) -> None:
    def add_reason(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--reason", default="", help="why (kept in the alias history)")

    p = verbs.add("models", "register", _register, "register a model directory as a new version")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--name", required=True, help="registered model, e.g. ranknet, garment-tagger")
    p.add_argument("--alias", default=None, help="point this alias at the new version")
    add_reason(p)

    p = verbs.add("models", "list", _list, "versions with their aliases, metrics and data")
    p.add_argument("name", nargs="?", default=None)
    p.add_argument("--json", action="store_true", help="one JSON array, for scripts")

    p = verbs.add("models", "alias", _alias, "point an alias at a version")
    p.add_argument("name")
    p.add_argument("alias")
    p.add_argument("version")
    add_reason(p)

    p = verbs.add("models", "promote", _promote, "challenger becomes champion")
    p.add_argument("name")
    add_reason(p)

    p = verbs.add("models", "rollback", _rollback, "champion goes back to previous")
    p.add_argument("name")
    add_reason(p)

    p = verbs.add("models", "history", _history, "every alias change of a model")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")


def _registry(create: bool = False) -> Registry:
    from mlsys.platform.registry import Registry

    return Registry(create=create)


def _register(args: argparse.Namespace) -> int:
    card = model_card(args.model_dir)
    registry = _registry(create=True)  # the one command that may start a registry
    version = registry.register(args.model_dir, args.name, card)
    print(f"registered {args.name} version {version} ({card.kind} {card.file_version})")
    if args.alias:
        registry.set_alias(args.name, args.alias, version, args.reason or "registered", probe)
        print(f"{args.name}@{args.alias} -> {version}")
    return 0


def _list(args: argparse.Namespace) -> int:
    versions = _registry().versions(args.name)
    if args.json:
        print(json.dumps([{k: v for k, v in vars(x).items() if k != "tags"} for x in versions]))
        return 0
    print(f"{'name':16} {'ver':>4}  {'aliases':22} {'created (UTC)':17} {'file':13} "
          f"{'data':13} metrics")  # fmt: skip
    for v in versions:
        metrics = "  ".join(f"{k} {x:.4f}" for k, x in v.metrics.items())
        print(f"{v.name:16} {v.version:>4}  {','.join(v.aliases) or '-':22} {v.created:17} "
              f"{v.file_version[:12]:13} {v.data_checksum[:12]:13} {metrics}")  # fmt: skip
    return 0


def _alias(args: argparse.Namespace) -> int:
    _registry().set_alias(args.name, args.alias, args.version, args.reason, probe)
    print(f"{args.name}@{args.alias} -> {args.version}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    old, new = _registry().promote(args.name, args.reason or "promoted", probe)
    print(f"{args.name}: champion {old or '-'} -> {new}" + (f"; previous -> {old}" if old else ""))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    before, after = _registry().rollback(args.name, args.reason or "rolled back", probe)
    print(f"{args.name}: champion {before} -> {after}; previous -> {before}")
    return 0


def _history(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = _registry().history(args.name)
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(f"{r['time']}  {r['alias']:10} {r['from'] or '-':>4} -> {r['to'] or '-':4}  "
              f"{r['reason']}")  # fmt: skip
    return 0
