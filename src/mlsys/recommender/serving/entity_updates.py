"""Single-entity writes to the online store: one user's or one restaurant's row, in the
current namespace, seen by the very next request (the admin API and `mlsys features set`).

A restaurant is also written into its grid cell of the geo index (moved out of the old one if its
location changed), so retrieval finds it on the next request: on one node in the same
transaction as its row; in a cluster the cells lie in other slots, so they follow the row,
the new cell before the old one (a reader may see it in both for a moment, never in neither).

An update racing a reload lands in the old namespace and is lost with it; re-apply updates
after a reload (`online_store.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from mlsys.errors import MlsysError
from mlsys.platform.redis_client import RedisClient, is_cluster
from mlsys.recommender.data.values import coordinate_problem, float32_problem
from mlsys.recommender.model import RESTAURANT_FEATURES, USER_FEATURES
from mlsys.recommender.ranking import FloatMatrix
from mlsys.recommender.serving.geo_cells import cell_of
from mlsys.recommender.serving.online_store import (
    RESTAURANT_DTYPE,
    USER_DTYPE,
    FeatureStoreError,
    cell_key,
    cell_records,
    current_namespace,
    restaurant_key,
    user_key,
)


class InvalidFeatures(MlsysError):
    """A single-entity update carries values that do not fit the schema; names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class IncompleteEntity(InvalidFeatures):
    """Creating an entity with only some of its parts: valid input, but nothing to keep the
    missing parts from (the API answers 409)."""


class UnknownEntity(MlsysError):
    """An update names an entity the store does not hold and did not ask to create it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _require_namespace(client: RedisClient) -> str:
    ns = current_namespace(client)
    if ns is None:
        raise FeatureStoreError("the online store is empty: run `mlsys features load` first")
    return ns


def _check_values(name: str, values: Sequence[float], n: int) -> FloatMatrix:
    if len(values) != n:
        raise InvalidFeatures(name, f"expected {n} values, got {len(values)}")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InvalidFeatures(name, "values must be numbers within float32's range") from None
    problem = float32_problem(arr)
    if problem is not None:
        raise InvalidFeatures(name, problem)
    return arr.astype(np.float32)


def _check_coordinate(name: str, value: float | None) -> None:
    problem = None if value is None else coordinate_problem(name, [value])
    if problem is not None:
        raise InvalidFeatures(name, problem)


MAX_ENTITY_ID = 10**18 - 1  # what a path id can name: 1 to 18 digits (api_schemas.ID_PATTERN)


def _check_id(name: str, value: int) -> None:
    """An entity the API could never serve must not be created."""
    if not 0 <= value <= MAX_ENTITY_ID:
        raise InvalidFeatures(name, f"{value}: ids are 0 to {MAX_ENTITY_ID} (1 to 18 digits)")


def set_user(
    client: RedisClient, user_id: int, features: Sequence[float], *, create: bool = False
) -> str:
    """Overwrite one user's features in the current namespace; returns the key written.

    An unknown user is an error unless `create`: a typo in an id must not add an entity
    (SET ... XX makes the check and the write one atomic command).
    """
    _check_id("user_id", user_id)
    ns = _require_namespace(client)
    row = np.empty(1, dtype=USER_DTYPE)
    row["features"][0] = _check_values("features", features, len(USER_FEATURES))
    key = user_key(ns, user_id)
    if not client.set(key, row.tobytes(), xx=not create):
        raise UnknownEntity("user_id", f"user {user_id} is not in the store (create it explicitly)")
    return key


def set_restaurant(
    client: RedisClient,
    restaurant_id: int,
    features: Sequence[float] | None = None,
    latitude: float | None = None,
    longitude: float | None = None,
    *,
    create: bool = False,
) -> str:
    """Overwrite a restaurant's features and/or location; unspecified parts keep their value.

    An unknown restaurant is an error unless `create`, and then it needs every part: a partial
    update has nothing to keep.
    """
    _check_id("restaurant_id", restaurant_id)
    ns = _require_namespace(client)
    key = restaurant_key(ns, restaurant_id)
    _check_coordinate("latitude", latitude)
    _check_coordinate("longitude", longitude)
    new_features = (
        None if features is None else _check_values("features", features, len(RESTAURANT_FEATURES))
    )

    cluster = is_cluster(client)
    cell_writes: list[tuple[str, bytes, bytes]] = []

    def update(pipe: RedisClient) -> None:
        old = pipe.get(key)
        if old is None and not create:
            raise UnknownEntity(
                "restaurant_id",
                f"restaurant {restaurant_id} is not in the store (create it explicitly)",
            )
        if old is None and (new_features is None or latitude is None or longitude is None):
            raise IncompleteEntity(
                "restaurant_id",
                f"restaurant {restaurant_id} is new; creating it needs features, "
                "latitude and longitude",
            )
        row = (
            np.frombuffer(old, dtype=RESTAURANT_DTYPE).copy()
            if old is not None
            else np.zeros(1, dtype=RESTAURANT_DTYPE)
        )
        if new_features is not None:
            row["features"][0] = new_features
        if latitude is not None:
            row["latitude"][0] = latitude
        if longitude is not None:
            row["longitude"][0] = longitude
        cell_writes[:] = _cell_writes(ns, restaurant_id, old, row)
        pipe.multi()
        pipe.set(key, row.tobytes())
        if not cluster:  # one node: the row and its cells in one transaction
            for cell, rid, record in cell_writes:
                pipe.eval(CELL_WRITE, 1, cell, rid, record)

    client.transaction(update, key)
    if cluster:  # the cells lie in other slots: the new one first, so it is never in neither
        for cell, rid, record in cell_writes:
            client.eval(CELL_WRITE, 1, cell, rid, record)
    return key


# The geo index's cells hold packed rows (`geo_cells.CELL_DTYPE`, 64 bytes, the id first):
# replace the row with this id, or append it, or with an empty record remove it.
CELL_WRITE = """
local blob = redis.call('GET', KEYS[1]) or ''
local at = nil
for i = 1, #blob, 64 do
  if string.sub(blob, i, i + 7) == ARGV[1] then at = i break end
end
if at then
  blob = string.sub(blob, 1, at - 1) .. ARGV[2] .. string.sub(blob, at + 64)
elseif #ARGV[2] > 0 then
  blob = blob .. ARGV[2]
else
  return 0
end
if #blob == 0 then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], blob) end
return 1
"""


def _cell_writes(
    ns: str, restaurant_id: int, old: bytes | None, row: npt.NDArray[Any]
) -> list[tuple[str, bytes, bytes]]:
    """(cell key, id as 8 bytes, record or b"" to remove) for the restaurant's cells."""
    record = cell_records([restaurant_id], row)
    rid = record["id"].tobytes()
    new_cell = cell_of(float(row["latitude"][0]), float(row["longitude"][0]))
    writes = [(cell_key(ns, new_cell), rid, record.tobytes())]
    if old is not None:
        before = np.frombuffer(old, dtype=RESTAURANT_DTYPE)
        old_cell = cell_of(float(before["latitude"][0]), float(before["longitude"][0]))
        if old_cell != new_cell:
            writes.append((cell_key(ns, old_cell), rid, b""))
    return writes
