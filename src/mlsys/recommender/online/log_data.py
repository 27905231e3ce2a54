"""Training data from what the API logged: exported impressions joined with their clicks.

`mlsys data from-log LOG_DIR OUT_DIR --features DATA_DIR --window MIN` writes a click dataset in
the kit's layout (train/ and test/ parquet with user_id, restaurant_id, click), which
`train`, `retrain` and `evaluate` read like any other, plus the columns the log knows and the
kit does not: request_id, position, arm, model, ts_ms and propensity.

Why each choice:

- **A waiting window, as Facebook's click models do.** A shown restaurant is a positive when its
  click arrived within `window` of the answer. A click after that is late: the row stays a
  negative, and the late clicks are counted in the report. Impressions younger than the window
  at the end of the export cannot be labelled yet and are left out (`pending`); the next
  export includes them. A longer window loses fewer late clicks but makes the data older.
- **Held out by time, not at random.** The last `holdout` share of answers, by time, is the
  test split, so the gate judges a model on traffic that came after everything it trained on.
  An answer's rows stay together, so NDCG can be computed per request.
- **Selection bias, stated.** The log holds only what a model chose to show (its top `size`
  of the reachable candidates): restaurants it ranked low never appear, as positives or as
  negatives. A model trained on this learns to tell apart what the serving model already
  liked. Retraining from the champion (a warm start) and gating on a fresh holdout keep this
  from compounding silently. Exploration (showing some random candidates) would fix it and is
  not built.
- **Position bias, measured by propensity.** A user looks at position p with probability
  about 1 / log2(1 + p): the examination curve of the position-based model behind DCG, which
  the simulated users follow. Each row carries that probability as `propensity`, and the gate
  (`gate.py`, `retrain --ips`) can weight each click by 1 / propensity (inverse propensity
  scoring, Joachims et al. 2017) so that clicks low in the list count for what they are.
  Training itself is unweighted: the factored training step has no per-row weight yet, so a
  retrained model still learns "clicked" partly as "shown high". The curve is assumed, not
  estimated: estimating it needs randomized swaps of positions, which the API does not make.
- **Features as served now, not as they were.** The online store keeps no history, so rows
  are joined with the feature tables given (the ones loaded when the traffic was served). A
  feature changed between the answer and the export would be seen at its new value.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mlsys.errors import MlsysError

REPORT = "from_log.json"


def examination(position: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """P(a user looks at `position`), 1-based: 1 / log2(1 + p)."""
    out: npt.NDArray[np.float64] = 1.0 / np.log2(1.0 + position.astype(np.float64))
    return out


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def build(
    log_dir: str | Path,
    features_dir: str | Path,
    out_dir: str | Path,
    *,
    window_s: float,
    holdout: float = 0.2,
    since_ms: int | None = None,
) -> dict[str, Any]:
    """Join, label, split and write; returns what `from_log.json` records. `since_ms` keeps
    answers from then on (after a drift, the world before it is not what to learn)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from mlsys.platform.log_export import read_parts
    from mlsys.recommender.data.dataset import RESTAURANTS_FILE, USERS_FILE, open_dataset

    if not 0 < holdout < 1:
        raise MlsysError(f"--holdout: must be between 0 and 1, got {holdout}")
    if window_s <= 0:
        raise MlsysError(f"--window: must be positive, got {window_s / 60:g} min")
    features = open_dataset(features_dir)  # the tables must open before anything is written
    impressions = read_parts(Path(log_dir) / "impressions")
    if impressions is None or impressions.num_rows == 0:
        raise MlsysError(f"{log_dir}/impressions: no exported impressions (run `mlsys log export`)")
    clicks = read_parts(Path(log_dir) / "clicks")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise MlsysError(f"{out}: exists and is not empty")

    earlier: set[str] = set()  # answers before `since_ms`: neither rows nor their clicks
    if since_ms is not None:
        before = pc.less(impressions["ts_ms"], since_ms)
        earlier = set(impressions.filter(before)["request_id"].to_pylist())
        impressions = impressions.filter(pc.invert(before))
        if impressions.num_rows == 0:
            raise MlsysError(f"{log_dir}: no answer since {since_ms} (epoch ms)")
    ts = impressions["ts_ms"].to_numpy()
    last_click = pc.max(clicks["ts_ms"]).as_py() if clicks is not None else None
    latest = int(max(ts.max(), last_click or 0))
    window_ms = int(window_s * 1000)
    settled = ts <= latest - window_ms
    answers = impressions.filter(pa.array(settled))
    if answers.num_rows == 0:
        raise MlsysError(
            f"{log_dir}: no answer is older than the window ({window_s / 60:g} min) yet; "
            "wait, or export again later"
        )
    ids = answers["ids"].combine_chunks()
    lengths = pc.list_value_length(ids).fill_null(0).to_numpy()
    parent = np.repeat(np.arange(answers.num_rows), lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    position = np.arange(len(parent)) - offsets[parent] + 1
    restaurant = pc.list_flatten(ids).to_numpy().astype(np.int64)
    label = np.zeros(len(parent), dtype=np.int64)

    row_of = {rid: i for i, rid in enumerate(answers["request_id"].to_pylist())}
    answer_ts = answers["ts_ms"].to_numpy()
    tally = {"clicks": 0, "joined": 0, "late": 0, "unmatched": 0, "duplicate": 0}
    if clicks is not None:
        pending_ids = set(impressions.filter(pa.array(~settled))["request_id"].to_pylist())
        for rid, item, pos, cts in zip(
            clicks["request_id"].to_pylist(), clicks["item_id"].to_pylist(),
            clicks["position"].to_pylist(), clicks["ts_ms"].to_pylist(), strict=True,
        ):  # fmt: skip
            if rid in pending_ids or rid in earlier:
                continue  # its answer is not labelled yet, or not wanted
            tally["clicks"] += 1
            i = row_of.get(rid)
            row = -1 if i is None or pos is None else int(offsets[i]) + int(pos) - 1
            if i is None or not (offsets[i] <= row < offsets[i + 1]) or restaurant[row] != item:
                tally["unmatched"] += 1  # its answer was not exported (trimmed, or lost)
            elif cts - answer_ts[i] > window_ms:
                tally["late"] += 1
            elif label[row]:
                tally["duplicate"] += 1
            else:
                label[row] = 1
                tally["joined"] += 1

    columns = {
        "user_id": answers["user_id"].to_numpy()[parent].astype(np.int64),
        "restaurant_id": restaurant,
        "click": label,
        "request_id": np.asarray(answers["request_id"].to_pylist(), dtype=object)[parent],
        "position": position.astype(np.int64),
        "propensity": examination(position),
        "arm": np.asarray(answers["arm"].to_pylist(), dtype=object)[parent],
        "model": np.asarray(answers["model"].to_pylist(), dtype=object)[parent],
        "ts_ms": answer_ts[parent],
    }
    cut = float(np.quantile(answer_ts, 1 - holdout))
    test_answer = answer_ts > cut
    if test_answer.all() or not test_answer.any():
        raise MlsysError(f"{log_dir}: too few answers ({answers.num_rows}) to hold out by time")
    in_test = test_answer[parent]

    out.mkdir(parents=True, exist_ok=True)
    for split, mask in (("train", ~in_test), ("test", in_test)):
        (out / split).mkdir()
        table = pa.table({k: v[mask] for k, v in columns.items()})
        pq.write_table(table, out / split / f"{split}_000.parquet")
    for name in (USERS_FILE, RESTAURANTS_FILE):
        _link_or_copy(features.root / name, out / name)

    report = {
        "log_dir": str(Path(log_dir).resolve()),
        "features_dir": str(features.root.resolve()),
        "window_min": window_s / 60,
        "since_ms": since_ms,
        "answers": {
            "exported": impressions.num_rows,
            "labelled": answers.num_rows,
            "pending": int((~settled).sum()),
            "train": int((~test_answer).sum()),
            "test": int(test_answer.sum()),
        },
        "rows": {"train": int((~in_test).sum()), "test": int(in_test.sum())},
        "click_rate": {
            "train": float(label[~in_test].mean()) if (~in_test).any() else None,
            "test": float(label[in_test].mean()) if in_test.any() else None,
        },
        "clicks": tally,
        "late_share": tally["late"] / max(tally["clicks"], 1),
        "test_starts_at_ms": int(cut),
        "arms": dict(Counter(map(str, columns["arm"]))),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    open_dataset(out)  # what we wrote opens as a click dataset
    return report


def describe(report: dict[str, Any]) -> str:
    a, c = report["answers"], report["clicks"]
    return (
        f"{a['labelled']:,} answers labelled ({a['pending']:,} younger than the "
        f"{report['window_min']:g}-minute window left for the next export); "
        f"train {a['train']:,} answers / {report['rows']['train']:,} rows, "
        f"test (the latest) {a['test']:,} / {report['rows']['test']:,}\n"
        f"clicks: {c['joined']:,} joined, {c['late']:,} late ({report['late_share']:.1%}, kept "
        f"as negatives), {c['unmatched']:,} without their answer, {c['duplicate']:,} duplicate"
    )
