"""`mlsys predict tagger`: predictions.parquet for every uuid of test.parquet.

Works on any folder in the kit's layout, generated or real: the dataset goes through
`open_garments` (with `images_dir` for an unzipped kit whose images are not in `images/`),
and the output is checked against the contract before it is written, so a file that leaves
this function is one the graders' reader accepts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlsys.tagger.inference import Probabilities, TaggerModel, batched_probabilities
from mlsys.tagger.schema import PREDICTION_COLUMNS, TAGS, check_predictions, open_garments


def predictions_table(model: TaggerModel, uuids: list[str], probs: Probabilities) -> pa.Table:
    """The contract's columns in its order: uuid, category1, category2, polka dot, floral,
    checker."""
    order = np.argsort(-probs.category, axis=1)
    decided = model.decisions(probs.tags)
    columns: dict[str, pa.Array] = {
        "uuid": pa.array(uuids, pa.string()),
        "category1": pa.array([model.categories[i] for i in order[:, 0]], pa.string()),
        "category2": pa.array([model.categories[i] for i in order[:, 1]], pa.string()),
    }
    for name in TAGS:
        columns[name] = pa.array(decided[:, model.tags.index(name)], pa.int64())
    table = pa.table(columns)
    assert tuple(table.column_names) == PREDICTION_COLUMNS
    return table


def predict_tagger(
    data_dir: str | Path,
    model_dir: str | Path,
    out: str | Path | None = None,
    images_dir: str | Path | None = None,
    batch_size: int = 32,
    threads: int = 2,
    progress: bool = True,
) -> Path:
    data = open_garments(data_dir, images_dir=images_dir)
    model = TaggerModel(model_dir, threads=threads)
    uuids = data.test_uuids
    probs = batched_probabilities(
        model, [data.image_path(u) for u in uuids], batch_size, progress=progress
    )
    table = predictions_table(model, uuids, probs)
    path = Path(out) if out is not None else Path(model_dir) / "predictions.parquet"
    check_predictions(path, table, test_uuids=uuids)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
