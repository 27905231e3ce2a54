"""The online feature store: user and restaurant feature views materialized into Redis.

Why Redis, and why this layout (measurements in docs/serving-report.md):

- The API must read every request's features from a database so updates show up at once. A
  request needs one user row and ~1,000 restaurant rows by primary key, nothing else: a
  key-value lookup, which Redis answers from memory in one round trip (MGET) for ~1.7 ms.
- One binary string per entity, no hashes or JSON: a value is the row's raw little-endian bytes,
  so decoding 1,000 rows is one `b"".join` plus one `np.frombuffer`, with no per-field parsing.

      <ns>:u:<user_id>        30 x float32 (f00..f29)                          120 bytes
      <ns>:r:<restaurant_id>  10 x float32 (f00..f09), float64 lat, float64 lon  56 bytes
      <ns>:meta               JSON: schema, source dataset and checksum, counts, created_at

  float32 features are exact (the parquet columns hold float32-rounded doubles) and coordinates
  keep float64 so distances are not rounded.
- Reloads never expose half-written data: `materialize` writes a whole new namespace
  (`f<N>`, N from INCR) and only then flips the pointer `mlsys:features:current` with one SET.
  Readers resolve the pointer and read the rows in one MULTI/EXEC round trip (see
  `OnlineStore.fetch`), which Redis executes atomically, so a request sees either all-old or
  all-new rows even while the old namespace is being deleted. Old namespaces, and half-written
  ones from crashed loads, are deleted with SCAN + UNLINK right after the switch (`keep=1`), so
  Redis holds two copies only while a reload runs.
- Single-entity updates (`set_user`, `set_restaurant`) overwrite one key in the current
  namespace, so the very next request sees them. An update racing a reload lands in the old
  namespace and is lost with it; re-apply updates after a reload.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import is_not
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mlsys.errors import MlsysError
from mlsys.recommender.model import RESTAURANT_FEATURES, USER_FEATURES
from mlsys.recommender.values import coordinate_problem, float32_problem

POINTER_KEY = "mlsys:features:current"
SEQ_KEY = "mlsys:features:seq"
NAMESPACES_KEY = "mlsys:features:namespaces"
FORMAT = "mlsys-online-store/1"

USER_DTYPE = np.dtype([("features", "<f4", (len(USER_FEATURES),))])
RESTAURANT_DTYPE = np.dtype(
    [("features", "<f4", (len(RESTAURANT_FEATURES),)), ("latitude", "<f8"), ("longitude", "<f8")]
)

FloatMatrix = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]


class FeatureStoreError(MlsysError):
    """The online store is unreachable, empty or holds something we do not understand."""


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


def connect(url: str, timeout_s: float = 0.05, max_connections: int = 16) -> Any:
    """A redis-py client that fails fast instead of retrying.

    Small timeouts and no retries turn "Redis is down" into an exception within ~timeout_s; the
    API answers 503 and the next request simply tries again, which is all the recovery we need.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    return redis.Redis(connection_pool=pool)


def _decode(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def schema() -> dict[str, Any]:
    """The binary layout, written into `<ns>:meta` so another reader can decode the values."""
    return {
        "format": FORMAT,
        "byte_order": "little",
        "entities": {
            "user": {
                "key": "{ns}:u:{user_id}",
                "fields": [[name, "float32"] for name in USER_FEATURES],
                "bytes": USER_DTYPE.itemsize,
            },
            "restaurant": {
                "key": "{ns}:r:{restaurant_id}",
                "fields": [[name, "float32"] for name in RESTAURANT_FEATURES]
                + [["latitude", "float64"], ["longitude", "float64"]],
                "bytes": RESTAURANT_DTYPE.itemsize,
            },
        },
    }


def current_namespace(client: Any) -> str | None:
    return _decode(client.get(POINTER_KEY))


def read_meta(client: Any, namespace: str | None = None) -> dict[str, Any] | None:
    ns = namespace or current_namespace(client)
    if ns is None:
        return None
    raw = client.get(f"{ns}:meta")
    return None if raw is None else dict(json.loads(raw))


# ---------------------------------------------------------------- materialize (offline -> online)


def _pairs(prefix: str, rows: npt.NDArray[Any], start: int = 0) -> list[bytes]:
    """Flat [key, value, key, value, ...] for MSET; rows[i] is entity start+i."""
    buf = rows.tobytes()
    width = rows.dtype.itemsize
    flat: list[bytes] = []
    for i in range(len(rows)):
        flat.append(f"{prefix}{start + i}".encode())
        flat.append(buf[i * width : (i + 1) * width])
    return flat


def _write(client: Any, prefix: str, rows: npt.NDArray[Any], batch: int, bar: Any) -> None:
    """Pipelined MSETs of `batch` keys; a few batches per round trip keep Redis busy."""
    pipe = client.pipeline(transaction=False)
    pending = 0
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        pipe.execute_command("MSET", *_pairs(prefix, chunk, start))
        pending += 1
        if pending == 4:
            pipe.execute()
            pending = 0
        if bar is not None:
            bar.update(len(chunk))
    if pending:
        pipe.execute()


def materialize(
    data_dir: str | Path,
    client: Any,
    *,
    keep: int = 1,
    batch: int = 10_000,
    progress: bool = True,
) -> dict[str, Any]:
    """Load both feature views into a new namespace, switch the pointer, prune old namespaces."""
    from tqdm import tqdm

    from mlsys.recommender.data import open_dataset

    started = time.perf_counter()
    dataset = open_dataset(data_dir)
    users = np.empty(dataset.n_users, dtype=USER_DTYPE)
    users["features"] = dataset.user_features()
    restaurants = np.empty(dataset.n_restaurants, dtype=RESTAURANT_DTYPE)
    restaurants["features"] = dataset.restaurant_features()
    locations = dataset.restaurant_locations()
    restaurants["latitude"] = locations[:, 0]
    restaurants["longitude"] = locations[:, 1]
    read_s = time.perf_counter() - started

    ns = f"f{int(client.incr(SEQ_KEY))}"
    # Registered before writing, so a crash mid-load leaves a namespace the next load prunes.
    client.rpush(NAMESPACES_KEY, ns)
    total = len(users) + len(restaurants)
    with tqdm(
        total=total, unit="key", unit_scale=True, desc=f"load {ns}", disable=not progress
    ) as bar:
        _write(client, f"{ns}:u:", users, batch, bar)
        _write(client, f"{ns}:r:", restaurants, batch, bar)

    manifest = dataset.manifest or {}
    files = manifest.get("files", {})
    meta = {
        "namespace": ns,
        "schema": schema(),
        "source": {
            "path": str(Path(data_dir).resolve()),
            "dataset_checksum": dataset.checksum,
            "scale": manifest.get("scale"),
            "seed": manifest.get("seed"),
            "user_features_sha256": files.get("user_features.parquet", {}).get("sha256"),
            "restaurant_features_sha256": files.get("restaurant_features.parquet", {}).get(
                "sha256"
            ),
        },
        "counts": {"users": len(users), "restaurants": len(restaurants)},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "read_seconds": round(read_s, 2),
        "load_seconds": round(time.perf_counter() - started, 2),
    }
    client.set(f"{ns}:meta", json.dumps(meta))
    client.set(POINTER_KEY, ns)  # the switch: one atomic command
    meta["pruned"] = prune(client, keep=keep)
    return meta


def _scan_unlink(client: Any, ns: str) -> int:
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{ns}:*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            deleted += int(client.unlink(*batch))
            batch = []
    if batch:
        deleted += int(client.unlink(*batch))
    return deleted


def prune(client: Any, keep: int = 1) -> list[str]:
    """Delete all but the newest `keep` namespaces (never the current one)."""
    current = current_namespace(client)
    names = [_decode(n) for n in client.lrange(NAMESPACES_KEY, 0, -1)]
    doomed = [n for n in names[: max(0, len(names) - keep)] if n and n != current]
    for ns in doomed:
        _scan_unlink(client, ns)
        client.lrem(NAMESPACES_KEY, 0, ns)
    return doomed


# ---------------------------------------------------------------- single-entity updates


def _require_namespace(client: Any) -> str:
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


def set_user(client: Any, user_id: int, features: Sequence[float], *, create: bool = False) -> str:
    """Overwrite one user's features in the current namespace; returns the key written.

    An unknown user is an error unless `create`: a typo in an id must not add an entity
    (SET ... XX makes the check and the write one atomic command).
    """
    ns = _require_namespace(client)
    row = np.empty(1, dtype=USER_DTYPE)
    row["features"][0] = _check_values("features", features, len(USER_FEATURES))
    key = f"{ns}:u:{int(user_id)}"
    if not client.set(key, row.tobytes(), xx=not create):
        raise UnknownEntity("user_id", f"user {user_id} is not in the store (create it explicitly)")
    return key


def set_restaurant(
    client: Any,
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
    ns = _require_namespace(client)
    key = f"{ns}:r:{int(restaurant_id)}"
    _check_coordinate("latitude", latitude)
    _check_coordinate("longitude", longitude)
    new_features = (
        None if features is None else _check_values("features", features, len(RESTAURANT_FEATURES))
    )

    def update(pipe: Any) -> None:
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


# ---------------------------------------------------------------- the request-time read


@dataclass(frozen=True)
class Rows:
    """What one request reads: the user row (None if unknown) and the known candidates' rows."""

    namespace: str
    user: FloatMatrix | None  # (30,)
    positions: npt.NDArray[np.intp]  # index into the request's candidate list, per known row
    features: FloatMatrix  # (k, 10)
    latitude: Float64Array  # (k,)
    longitude: Float64Array  # (k,)
    unknown: int  # candidates not in the store

    @classmethod
    def in_memory(
        cls,
        user: FloatMatrix,
        candidate_ids: npt.NDArray[np.int64],
        restaurants: FloatMatrix,
        locations: Float64Array,
    ) -> Rows:
        """What `OnlineStore.fetch` reads, from feature tables held in memory (the replay, the
        reference profile): every candidate known."""
        return cls("memory", user, np.arange(len(candidate_ids)), restaurants[candidate_ids],
                   locations[candidate_ids, 0], locations[candidate_ids, 1], 0)  # fmt: skip


class OnlineStore:
    """The serving side of the store: one pipelined round trip per request.

    The namespace is cached and re-validated on every request inside the same transaction
    (MULTI; GET pointer; GET user; MGET candidates; EXEC), which Redis runs atomically: if the
    pointer moved (a reload finished), the reads are repeated under the new namespace. So a
    request never mixes namespaces and pays a second round trip only right after a reload.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._ns: str | None = None

    def namespace(self) -> str:
        ns = current_namespace(self.client)
        if ns is None:
            raise FeatureStoreError("the online store is empty: run `mlsys features load` first")
        self._ns = ns
        return ns

    def fetch(self, user_id: int, candidate_ids: Sequence[int]) -> Rows:
        ns = self._ns or self.namespace()
        for _ in range(3):
            pipe = self.client.pipeline(transaction=True)
            pipe.get(POINTER_KEY)
            pipe.get(f"{ns}:u:{user_id}")
            if candidate_ids:
                # map() over C-level callables: no Python bytecode runs per candidate.
                prefix = f"{ns}:r:"
                pipe.execute_command("MGET", *map(prefix.__add__, map(str, candidate_ids)))
            replies = pipe.execute()
            pointer = _decode(replies[0])
            if pointer is None:
                raise FeatureStoreError("the online store is empty: run `mlsys features load`")
            if pointer == ns:
                break
            ns = self._ns = pointer
        else:  # pragma: no cover - three reloads within one request
            raise FeatureStoreError("the feature namespace kept changing; try again")
        return _rows(ns, replies[1], replies[2] if candidate_ids else [])


def _rows(ns: str, user_blob: bytes | None, blobs: list[bytes | None]) -> Rows:
    user = None if user_blob is None else np.frombuffer(user_blob, dtype=USER_DTYPE)["features"][0]
    n = len(blobs)
    missing = blobs.count(None)
    if missing:
        known = np.fromiter(map(is_not, blobs, repeat(None)), dtype=bool, count=n)
        positions = np.flatnonzero(known)
        payload = b"".join(compress(blobs, known))  # type: ignore[arg-type]
    else:
        positions = np.arange(n)
        payload = b"".join(blobs)  # type: ignore[arg-type]
    rows = np.frombuffer(payload, dtype=RESTAURANT_DTYPE)
    return Rows(
        namespace=ns,
        user=user,
        positions=positions,
        features=rows["features"],
        latitude=rows["latitude"],
        longitude=rows["longitude"],
        unknown=missing,
    )


def iter_namespaces(client: Any) -> Iterator[str]:
    for n in client.lrange(NAMESPACES_KEY, 0, -1):
        name = _decode(n)
        if name:
            yield name
