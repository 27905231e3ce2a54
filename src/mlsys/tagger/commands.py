"""CLI commands of the garment tagger."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlsys.cli import Verbs


def add_commands(verbs: Verbs) -> None:
    """The tagger adds its commands here (generate garments, train/evaluate/predict tagger)."""
    add_generate_commands(verbs)


# --- generate garments (the data half) -----------------------------------------------------


def add_generate_commands(verbs: Verbs) -> None:
    p = verbs.add("generate", "garments", _generate_garments,
                  "generate the procedural garment photo set (kit layout)")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--count", type=int, default=12_000, help="labelled items (data.parquet)")
    p.add_argument("--test-count", type=int, default=2_000,
                   help="held-out items (test.parquet, labels in test_labels.parquet)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--force", action="store_true", help="replace an existing directory")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")


def _generate_garments(args: argparse.Namespace) -> int:
    from mlsys.tagger.generate import generate_garments
    from mlsys.tagger.schema import open_garments

    m = generate_garments(args.out_dir, count=args.count, test_count=args.test_count,
                          seed=args.seed, force=args.force, workers=args.workers)
    ds = open_garments(args.out_dir)
    ceiling = m["ceiling"]["test"]
    print(f"dataset      {ds.root}")
    print(f"items        {ds.data.num_rows:,} labelled, {ds.test.num_rows:,} test "
          f"({m['images_per_second']} images/s, {m['seconds']:.1f} s)")
    print("tags         " + ", ".join(f"{t} {v:.1%}" for t, v in m["tag_share"].items()))
    print(f"ceiling      test top-1 {ceiling['expected_top1']:.4f}, "
          f"top-2 {ceiling['expected_top2']:.4f} (Bayes on the shape latents)")
    return 0
