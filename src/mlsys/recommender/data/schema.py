"""The click data's contract: the columns of each kit file and their type families, and the
one way to open a parquet file against it (an error names the file and the column)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mlsys.errors import DatasetError
from mlsys.recommender.model import RESTAURANT_FEATURES, USER_FEATURES

# Type families, not exact types: the kit writes int64/double, but an int32 id or a float32
# feature column is the same data, and reading casts to our in-memory types anyway.
TypeCheck = Callable[[pa.DataType], bool]


def _is_int(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t))


def _is_float(t: pa.DataType) -> bool:
    return bool(pa.types.is_floating(t))


def _is_bool(t: pa.DataType) -> bool:
    return bool(pa.types.is_boolean(t))


def _is_int_list(t: pa.DataType) -> bool:
    return bool(
        (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)
    )


_TYPE_NAMES: dict[TypeCheck, str] = {
    _is_int: "an integer type",
    _is_float: "a floating-point type",
    _is_bool: "bool",
    _is_int_list: "list<integer>",
}


USERS_SCHEMA: dict[str, TypeCheck] = {"user_id": _is_int, **dict.fromkeys(USER_FEATURES, _is_float)}


RESTAURANTS_SCHEMA: dict[str, TypeCheck] = {
    "restaurant_id": _is_int,
    "latitude": _is_float,
    "longitude": _is_float,
    **dict.fromkeys(RESTAURANT_FEATURES, _is_float),
}


CLICKS_SCHEMA: dict[str, TypeCheck] = {
    "user_id": _is_int,
    "restaurant_id": _is_int,
    "click": _is_int,
}


REQUESTS_SCHEMA: dict[str, TypeCheck] = {
    "user_id": _is_int,
    "latitude": _is_float,
    "longitude": _is_float,
    "candidate_restaurant_ids": _is_int_list,
    "size": _is_int,
    "max_dist": _is_int,
    "sort_dist": _is_bool,
}


def open_parquet(path: Path, schema: dict[str, TypeCheck]) -> pq.ParquetFile:
    """Open one parquet file and check its columns; the error names file and column."""
    if not path.is_file():
        raise DatasetError(path, "file is missing")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(
            path, f"not a readable parquet file (truncated or corrupt?): {exc}"
        ) from exc
    arrow_schema = pf.schema_arrow
    for column, check in schema.items():
        idx = arrow_schema.get_field_index(column)
        if idx < 0:
            raise DatasetError(path, "column is missing", column)
        dtype = arrow_schema.field(idx).type
        if not check(dtype):
            raise DatasetError(path, f"has type {dtype}, expected {_TYPE_NAMES[check]}", column)
    return pf


def read_columns(path: Path, pf: pq.ParquetFile, columns: list[str]) -> pa.Table:
    """Read columns, turning Arrow's errors (truncated pages, bad encodings) into ours."""
    try:
        return pf.read(columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(path, f"cannot read columns {columns}: {exc}") from exc


def column_range(pf: pq.ParquetFile, column: str) -> tuple[int, int] | None:
    """(min, max) of an integer column from row-group statistics, or None if not recorded."""
    idx = pf.schema_arrow.get_field_index(column)
    lo: int | None = None
    hi: int | None = None
    for rg in range(pf.metadata.num_row_groups):
        col = pf.metadata.row_group(rg).column(idx)
        stats = col.statistics
        if pf.metadata.row_group(rg).num_rows == 0:
            continue
        if stats is None or not stats.has_min_max:
            return None
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    if lo is None or hi is None:
        return None
    return int(lo), int(hi)


def check_range(path: Path, column: str, lo: int, hi: int, low: int, high: int) -> None:
    """Raise unless every value lies in [low, high)."""
    if lo < low or hi >= high:
        raise DatasetError(
            path, f"values span [{lo}, {hi}], expected within [{low}, {high})", column
        )
