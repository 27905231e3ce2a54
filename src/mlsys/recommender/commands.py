"""CLI commands of the restaurant recommender."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlsys.cli import Verbs


def add_commands(verbs: Verbs) -> None:
    p = verbs.add("generate", "clicks", _generate_clicks, "generate the click dataset")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument(
        "--scale",
        choices=("tiny", "small", "full"),
        default="small",
        help="tiny: unit tests; small: 1/100 of the rows; full: the kit's sizes",
    )
    p.add_argument("--seed", type=int, default=7, help="7 reproduces the kit's feature tables")
    p.add_argument("--force", action="store_true", help="replace an existing dataset")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")

    p = verbs.add("validate", "data", _validate_data, "validate a click dataset directory")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument(
        "--checksums",
        action="store_true",
        help="also verify every file's sha256 against manifest.json (reads all bytes)",
    )

    p = verbs.add("report", "data", _report_data, "exploratory report of a click dataset")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--out", default=None, help="output folder (default DATA_DIR/report)")
    p.add_argument(
        "--sample-rows", type=int, default=1_000_000, help="click rows sampled for the report"
    )


def _generate_clicks(args: argparse.Namespace) -> int:
    from mlsys.recommender.data import open_dataset
    from mlsys.recommender.generate import generate_clicks

    manifest = generate_clicks(
        args.out_dir, scale=args.scale, seed=args.seed, force=args.force, workers=args.workers
    )
    dataset = open_dataset(args.out_dir)
    print(summary(dataset, seconds=manifest["seconds"]))
    return 0


def _validate_data(args: argparse.Namespace) -> int:
    from mlsys.recommender.data import open_dataset

    dataset = open_dataset(args.data_dir, verify_checksums=args.checksums)
    print(summary(dataset))
    print(
        "checksums: verified"
        if args.checksums and dataset.manifest
        else "checksums: not verified (pass --checksums)"
        if dataset.manifest
        else "no manifest.json: a kit-generated dataset, schema checked only"
    )
    return 0


def _report_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlsys.recommender.data import open_dataset
    from mlsys.recommender.report import write_data_report

    dataset = open_dataset(args.data_dir)
    out = Path(args.out) if args.out else dataset.root / "report"
    path = write_data_report(dataset, out, sample_rows=args.sample_rows)
    print(f"wrote {path}")
    return 0


def summary(dataset: object, seconds: float | None = None) -> str:
    """A few lines a person reads after generating or validating a dataset."""
    from mlsys.recommender.data import ClickDataset

    assert isinstance(dataset, ClickDataset)
    m = dataset.manifest or {}
    lines = [
        f"dataset      {dataset.root}",
        f"origin       {'mlsys generator v' + m['generator_version'] if m else 'kit (no manifest)'}"
        + (f", scale={m['scale']}, seed={m['seed']}" if m else ""),
        f"users        {dataset.n_users:,}",
        f"restaurants  {dataset.n_restaurants:,}",
        f"train        {dataset.rows('train'):,} rows in {len(dataset.files('train'))} files",
        f"test         {dataset.rows('test'):,} rows in {len(dataset.files('test'))} files",
        f"requests     {'present' if dataset.has_requests else 'absent'}",
    ]
    if seconds is not None:
        lines.append(f"time         {seconds:.1f} s")
    return "\n".join(lines)
