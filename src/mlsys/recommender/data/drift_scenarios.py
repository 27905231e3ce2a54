"""Drifted worlds: the same users and restaurants (same ids), shifted in one known way.

`mlsys generate drift DATA_DIR OUT_DIR --kind KIND [--strength X]` reads a generated dataset and
writes a complete dataset directory beside it that the online store loads (`mlsys features
load OUT_DIR`) and the simulated users click by (`mlsys simulate users --data OUT_DIR`): the
feature tables, fresh requests, click files drawn by the world's rule, and a manifest that
records the rule (`click_rule`) and what was shifted (`drift`). The kinds are the textbook
shifts (Quiñonero-Candela et al., "Dataset Shift in Machine Learning"):

- `covariate`: P(x) moves, P(click | x) stays. User features f00-f04 move by `strength` times
  their standard deviation (default 0.5). Those five also enter the click rule, so true click
  rates move with them, by the unchanged rule. Expected: those five user features flagged,
  and the prediction drift that follows.
- `new-restaurants`: a share `strength` (default 0.3) of restaurant ids get features drawn
  around new cluster centres, as when a city's catalogue turns over. Locations stay.
  Expected: restaurant features f00-f09 flagged.
- `concept`: P(click | x) moves, P(x) stays. Tastes move from user f00-f09 towards f10-f19:
  taste = (1 - s) * f00..f09 + s * f10..f19 with s = `strength` (default 1.0). No input
  moves, so no feature can flag it. It shows in the outcome: the model's scores of what users
  click fall towards the scores of what they see.
- `prior`: the click base rate moves: the logit gets a bias of -`strength` (default 1.0), so
  users click less whatever they are shown. Expected: the click rate flagged, no feature.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mlsys.errors import MlsysError
from mlsys.files import JsonIn, atomic_directory
from mlsys.recommender.data.dataset import (
    MANIFEST,
    REQUESTS_FILE,
    RESTAURANTS_FILE,
    USERS_FILE,
    open_dataset,
)
from mlsys.recommender.data.generate import (
    GENERATOR_VERSION,
    SCALES,
    ClickRule,
    Scale,
    draw_entity_features,
    file_entry,
    requests_table,
    write_click_files,
    write_feature_table,
)
from mlsys.recommender.model import RESTAURANT_FEATURES, USER_FEATURES

KINDS = ("covariate", "concept", "prior", "new-restaurants")
DEFAULT_STRENGTH = {"covariate": 0.5, "concept": 1.0, "prior": 5.0, "new-restaurants": 0.3}
COVARIATE_COLUMNS = 5  # user f00-f04
# Click rows per world: enough to train or evaluate on, far less than the kit's 55M.
WORLD_TRAIN_ROWS = 2_000_000
WORLD_TEST_ROWS = 200_000


def shifted_features(kind: str) -> list[str]:
    """The monitored columns a kind moves: what the monitor should name."""
    if kind == "covariate":
        return [f"user_{f}" for f in USER_FEATURES[:COVARIATE_COLUMNS]]
    if kind == "new-restaurants":
        return [f"restaurant_{f}" for f in RESTAURANT_FEATURES]
    return []


def generate_drift(
    data_dir: str | Path,
    out_dir: str | Path,
    kind: str,
    strength: float | None = None,
    seed: int = 1,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the drifted world OUT_DIR from DATA_DIR (see the module docstring); returns its
    manifest."""
    if kind not in KINDS:
        raise MlsysError(f"unknown drift kind {kind!r}; choose one of {', '.join(KINDS)}")
    s = DEFAULT_STRENGTH[kind] if strength is None else float(strength)
    if not 0 < s <= (1.0 if kind in ("concept", "new-restaurants") else 10.0):
        raise MlsysError(f"--strength {s} is out of range for {kind}")
    source = open_dataset(data_dir)
    started = time.perf_counter()
    users = source.user_features()
    restaurants = source.restaurant_features()
    locations = source.restaurant_locations()
    rule = ClickRule.of(source.manifest)
    rng = np.random.default_rng([seed, KINDS.index(kind)])

    if kind == "covariate":
        cols = slice(0, COVARIATE_COLUMNS)
        users[:, cols] += (s * users[:, cols].std(axis=0)).astype(np.float32)
    elif kind == "new-restaurants":
        n_new = round(s * len(restaurants))
        picked = rng.choice(len(restaurants), size=n_new, replace=False)
        fresh = draw_entity_features(
            np.random.RandomState(seed + 1000), n_new, len(RESTAURANT_FEATURES)
        )
        restaurants[picked] = fresh
    elif kind == "concept":
        taste = rule.matrix * (1 - s)
        n = len(RESTAURANT_FEATURES)
        taste[n : 2 * n] += s * np.eye(n)
        rule = ClickRule.from_matrix(taste, rule.bias)
    else:  # prior
        rule = ClickRule.from_matrix(rule.matrix, rule.bias - s)

    sizes = _world_sizes(source.manifest, len(users), len(restaurants))
    bar = tqdm(total=sizes.train_rows + sizes.test_rows, unit="row", unit_scale=True,
               desc=f"drift {kind}", disable=not progress)  # fmt: skip
    with atomic_directory(Path(out_dir), force) as root:
        write_feature_table(root / USERS_FILE, "user_id", users, USER_FEATURES)
        write_feature_table(
            root / RESTAURANTS_FILE, "restaurant_id", restaurants, RESTAURANT_FEATURES,
            {"latitude": locations[:, 0], "longitude": locations[:, 1]},
        )  # fmt: skip
        tastes = rule.tastes(users[:, : max(rule.user_columns, 1)])
        splits = (
            ("train", sizes.train_rows, sizes.train_files),
            ("test", sizes.test_rows, sizes.test_files),
        )
        files = write_click_files(root, splits, tastes, restaurants, rule.bias, seed, None, bar)
        bar.close()
        import pyarrow.parquet as pq

        pq.write_table(requests_table(sizes, seed + 100), root / REQUESTS_FILE)
        for name in (USERS_FILE, RESTAURANTS_FILE, REQUESTS_FILE):
            files[name] = file_entry(root / name)
        manifest: JsonIn = {
            "format": "mlsys-clicks",
            "generator_version": GENERATOR_VERSION,
            "scale": (source.manifest or {}).get("scale", "kit"),
            "seed": seed,
            "sizes": {k: getattr(sizes, k) for k in Scale.__dataclass_fields__},
            "drift": {
                "kind": kind,
                "strength": s,
                "source": str(Path(data_dir).resolve()),
                "shifted_features": shifted_features(kind),
            },
            "click_rule": rule.to_json(),
            "files": dict(sorted(files.items())),
            "seconds": round(time.perf_counter() - started, 2),
        }
        (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _world_sizes(manifest: JsonIn | None, users: int, restaurants: int) -> Scale:
    """The source's request shape, with at most WORLD_*_ROWS click rows."""
    base = Scale(**manifest["sizes"]) if manifest and "sizes" in manifest else SCALES["full"]
    return Scale(
        users=users,
        restaurants=restaurants,
        train_rows=min(base.train_rows, WORLD_TRAIN_ROWS),
        train_files=min(base.train_files, 8),
        test_rows=min(base.test_rows, WORLD_TEST_ROWS),
        test_files=min(base.test_files, 2),
        requests=base.requests,
        candidates=min(base.candidates, restaurants),
    )
