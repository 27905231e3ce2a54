"""What a stored feature value may be: one check per stored type, used by every writer.

The online store and the training tables keep features as float32 and coordinates as
float64 (see `online_store.USER_DTYPE` / `RESTAURANT_DTYPE`). A double that is finite in a parquet
file or a JSON body can still be unrepresentable there: 1e39 is finite as float64 and becomes
inf as float32, and inf turns into NaN scores and NaN losses downstream. So the check is made
against the type the value will be stored as, before anything is written, and the same
function serves the three ways values come in:

- `data.ClickDataset` (the feature load and training's tables read through it) -> DatasetError
  naming file and column;
- `entity_updates.set_user` / `set_restaurant` (the admin API and `mlsys features set`) ->
  InvalidFeatures naming the field, which the API answers with 422.

Each check returns None when the values are fine, else a short problem statement that the
caller wraps into its own error type (it knows the file or the field).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FLOAT32_MAX = float(np.finfo(np.float32).max)
COORDINATE_RANGES = {"latitude": (-90.0, 90.0), "longitude": (-180.0, 180.0)}


def _first_bad(values: npt.NDArray[np.float64], bad: npt.NDArray[np.bool_]) -> str:
    index = int(np.flatnonzero(bad.reshape(-1))[0])
    return f"the first offender is {float(values.reshape(-1)[index])!r} at position {index}"


def float32_problem(values: npt.ArrayLike) -> str | None:
    """None when every value is a number that float32 holds (finite, |v| <= 3.4e38)."""
    arr = np.asarray(values, dtype=np.float64)
    bad = ~(np.abs(arr) <= FLOAT32_MAX)  # NaN compares False, so it is caught too
    if not bad.any():
        return None
    limit = f"{FLOAT32_MAX:.4g}"
    return f"values must be finite float32 numbers (|v| <= {limit}); {_first_bad(arr, bad)}"


def coordinate_problem(name: str, values: npt.ArrayLike) -> str | None:
    """None when every value is a finite degree within the coordinate's range."""
    lo, hi = COORDINATE_RANGES[name]
    arr = np.asarray(values, dtype=np.float64)
    bad = ~((arr >= lo) & (arr <= hi))
    if not bad.any():
        return None
    return f"must be within [{lo:g}, {hi:g}] degrees; {_first_bad(arr, bad)}"
