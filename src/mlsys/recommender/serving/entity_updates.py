"""Single-entity writes to the online store: one user's or one restaurant's row, in the
current namespace, seen by the very next request (the admin API and `mlsys features set`).

An update racing a reload lands in the old namespace and is lost with it; re-apply updates
after a reload (`online_store.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlsys.errors import MlsysError
from mlsys.platform.redis_client import RedisClient
from mlsys.recommender.data.values import coordinate_problem, float32_problem
from mlsys.recommender.model import RESTAURANT_FEATURES, USER_FEATURES
from mlsys.recommender.ranking import FloatMatrix
from mlsys.recommender.serving.online_store import (
    RESTAURANT_DTYPE,
    USER_DTYPE,
    FeatureStoreError,
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
        pipe.multi()
        pipe.set(key, row.tobytes())

    client.transaction(update, key)
    return key
