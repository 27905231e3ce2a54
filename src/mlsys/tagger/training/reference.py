"""The tagger's reference profile, written next to the model at training time: the
`photo_stats.tag_record` of photos no training decision saw (see `online/drift_monitor.py`
for why the first test images, and never the validation ones)."""

from __future__ import annotations

from pathlib import Path

from mlsys.tagger.data.photo_stats import COLUMNS, tag_record

REFERENCE_FILE = "reference.parquet"


REFERENCE_ROWS = 1000


def write_reference(
    model_dir: str | Path, data_dir: str | Path, rows: int = REFERENCE_ROWS
) -> Path:
    """The profile of the first `rows` test images, served the way /tag serves them, as
    MODEL_DIR/reference.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlsys.files import atomic_write_bytes
    from mlsys.tagger.inference import TaggerModel
    from mlsys.tagger.preprocess import decode_image
    from mlsys.tagger.schema import open_garments

    model = TaggerModel(model_dir)
    data = open_garments(data_dir)
    records = []
    for uuid in data.test_uuids[:rows]:
        raw = data.image_bytes(uuid)
        img = decode_image(raw)
        records.append(tag_record(raw, img, model.describe(model.predict_images([img])), ""))
    table = pa.table({c: [r[c] for r in records] for c in COLUMNS})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    path = Path(model_dir) / REFERENCE_FILE
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path
