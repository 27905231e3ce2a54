"""The online feature store: user and restaurant feature views materialized into Redis.

Why Redis, and why this layout (measurements in docs/serving-report.md):

- The API must read every request's features from a database so updates show up at once. A
  request needs one user row and ~1,000 restaurant rows by primary key, nothing else: a
  key-value lookup, which Redis answers from memory in one round trip (MGET) for ~1.7 ms.
- One binary string per entity, no hashes or JSON: a value is the row's raw little-endian bytes,
  so decoding 1,000 rows is one `b"".join` plus one `np.frombuffer`, with no per-field parsing.

      <ns>:u:<user_id>                 30 x float32 (f00..f29)                        120 bytes
      <ns>:r:{r<bucket>}:<restaurant_id>  10 x float32, float64 lat, float64 lon     56 bytes
      <ns>:meta                        JSON: schema, source dataset and checksum, counts, created_at

  float32 features are exact (the parquet columns hold float32-rounded doubles) and coordinates
  keep float64 so distances are not rounded.
- The same layout serves one node and a Redis Cluster. Users spread over every hash slot by
  their whole key, so 100M users spread over the masters. Restaurants carry a hash tag, one of
  16 buckets (restaurant_id mod 16), so a request's ~1,000 candidates become 16 MGETs, each
  within one slot, sent as one batch per node (`platform.redis_client.on_nodes`).
- Reloads never expose half-written data: `materialize` writes a whole new namespace
  (`f<N>`, N from INCR) and only then flips the pointer `mlsys:features:current` with one SET.
  Every key a request reads is inside one namespace, so it cannot mix two loads; see
  `OnlineStore.fetch` for how each mode also never reads a namespace that is being deleted.
  Old namespaces, and half-written ones from crashed loads, are deleted with SCAN + UNLINK
  right after the switch (`keep=1`), so Redis holds two copies only while a reload runs.
- Single-entity updates (`set_user`, `set_restaurant`) overwrite one key in the current
  namespace, so the very next request sees them. An update racing a reload lands in the old
  namespace and is lost with it; re-apply updates after a reload.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import compress, repeat
from operator import is_not
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mlsys.errors import MlsysError
from mlsys.platform.redis_client import is_cluster, key_slot, on_nodes
from mlsys.recommender.model import RESTAURANT_FEATURES, USER_FEATURES
from mlsys.recommender.values import coordinate_problem, float32_problem

POINTER_KEY = "mlsys:features:current"
SEQ_KEY = "mlsys:features:seq"
NAMESPACES_KEY = "mlsys:features:namespaces"
FORMAT = "mlsys-online-store/2"
RESTAURANT_BUCKETS = 16  # hash tags: a request's restaurants are this many MGETs in a cluster
_BUCKET_SLOTS = [key_slot(f"{{r{b}}}") for b in range(RESTAURANT_BUCKETS)]
_POINTER_SLOT = key_slot(POINTER_KEY)

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


def _decode(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def schema() -> dict[str, Any]:
    """The binary layout, written into `<ns>:meta` so another reader can decode the values."""
    return {
        "format": FORMAT,
        "byte_order": "little",
        "entities": {
            "user": {
                "key": "<ns>:u:<user_id>",
                "fields": [[name, "float32"] for name in USER_FEATURES],
                "bytes": USER_DTYPE.itemsize,
            },
            "restaurant": {
                "key": "<ns>:r:{r<bucket>}:<restaurant_id>",
                "bucket": f"restaurant_id mod {RESTAURANT_BUCKETS}",
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


def user_key(ns: str, user_id: int) -> str:
    return f"{ns}:u:{int(user_id)}"


def restaurant_prefix(ns: str, bucket: int) -> str:
    return f"{ns}:r:{{r{bucket}}}:"


def restaurant_key(ns: str, restaurant_id: int) -> str:
    rid = int(restaurant_id)
    return restaurant_prefix(ns, rid % RESTAURANT_BUCKETS) + str(rid)


_CLUSTER_WINDOW = 1_000_000  # keys grouped by slot at a time: bounded memory, big MSETs


def _write(
    client: Any, key_of: Callable[[int], str], rows: npt.NDArray[Any], batch: int, bar: Any
) -> None:
    """MSETs of up to `batch` keys, pipelined a few per round trip to keep Redis busy; keys are
    made a window at a time, so memory stays bounded whatever the table's size.

    A cluster takes an MSET only within one hash slot, so there each window (a million keys)
    is grouped by slot first and redis-py's cluster pipeline routes each MSET to its node.
    """
    buf = rows.tobytes()
    width = rows.dtype.itemsize
    cluster = is_cluster(client)
    step = _CLUSTER_WINDOW if cluster else batch
    pipe = client.pipeline(transaction=False)
    pending = 0
    for start in range(0, len(rows), step):
        keys = [key_of(i) for i in range(start, min(start + step, len(rows)))]
        groups = [np.arange(len(keys))]
        if cluster:
            slots = np.fromiter(map(key_slot, keys), np.int64, count=len(keys))
            order = np.argsort(slots, kind="stable")
            by_slot = np.split(order, np.flatnonzero(np.diff(slots[order])) + 1)
            groups = [g for part in by_slot for g in np.array_split(part, -(-len(part) // batch))]
        for group in groups:
            flat: list[Any] = []
            for j in group.tolist():
                i = start + j
                flat += (keys[j], buf[i * width : (i + 1) * width])
            pipe.execute_command("MSET", *flat)
            pending += 1
            if pending >= (2_000 if cluster else 4):
                pipe.execute()
                pending = 0
            if bar is not None:
                bar.update(len(group))
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
        _write(client, partial(user_key, ns), users, batch, bar)
        _write(client, partial(restaurant_key, ns), restaurants, batch, bar)

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
    """SCAN + UNLINK of one namespace; in a cluster, on each master for the keys it holds (an
    UNLINK of many keys must stay within one slot there, so each key is its own command)."""
    if is_cluster(client):
        nodes = [client.get_redis_connection(n) for n in client.get_primaries()]
    else:
        nodes = [client]
    deleted = 0
    for node in nodes:
        batch: list[bytes] = []
        for key in node.scan_iter(match=f"{ns}:*", count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                deleted += _unlink(node, batch, one_by_one=node is not client)
                batch = []
        if batch:
            deleted += _unlink(node, batch, one_by_one=node is not client)
    return deleted


def _unlink(client: Any, keys: list[bytes], *, one_by_one: bool) -> int:
    if not one_by_one:
        return int(client.unlink(*keys))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return int(sum(pipe.execute()))


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
    key = user_key(ns, user_id)
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
    key = restaurant_key(ns, restaurant_id)
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
    """The serving side of the store: one round trip per request, to each node involved.

    Why a request can never mix two loads or meet a namespace half deleted:

    - One node: the namespace is cached and re-validated on every request inside the same
      transaction (MULTI; GET pointer; GET user; MGET candidates; EXEC), which Redis runs
      atomically. If the pointer moved (a reload finished), the reads are repeated under the
      new namespace, so a request pays a second round trip only right after a reload.
    - A cluster: no transaction spans nodes, so the pointer is read in the same parallel round
      as the rows, and the rows are read under the cached namespace. Every key lies inside it,
      so the rows cannot mix loads. A key that comes back missing may be unknown, or may belong
      to a namespace that a reload retired and started deleting meanwhile: then the pointer is
      read once more, and if it moved, the request is read again under the new one. (Pointers
      only ever move forward, so an unchanged pointer proves the namespace was current
      throughout.) Known entities cost no second round trip.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._ns: str | None = None
        self._cluster = is_cluster(client)

    def namespace(self) -> str:
        ns = current_namespace(self.client)
        if ns is None:
            raise FeatureStoreError("the online store is empty: run `mlsys features load` first")
        self._ns = ns
        return ns

    def fetch(self, user_id: int, candidate_ids: Sequence[int]) -> Rows:
        ns = self._ns or self.namespace()
        read = self._read_cluster if self._cluster else self._read_node
        for _ in range(3):
            pointer, user, blobs = read(ns, user_id, candidate_ids)
            if pointer == ns and self._cluster and (user is None or None in blobs):
                pointer = current_namespace(self.client)
            if pointer is None:
                raise FeatureStoreError("the online store is empty: run `mlsys features load`")
            if pointer == ns:
                return _rows(ns, user, blobs)
            ns = self._ns = pointer
        raise FeatureStoreError(  # pragma: no cover - three reloads within one request
            "the feature namespace kept changing; try again"
        )

    def _read_node(
        self, ns: str, user_id: int, candidate_ids: Sequence[int]
    ) -> tuple[str | None, bytes | None, list[bytes | None]]:
        pipe = self.client.pipeline(transaction=True)
        pipe.get(POINTER_KEY)
        pipe.get(user_key(ns, user_id))
        if candidate_ids:
            # map() over C-level callables: no Python bytecode runs per candidate.
            prefixes = [restaurant_prefix(ns, b) for b in range(RESTAURANT_BUCKETS)]
            buckets = map(RESTAURANT_BUCKETS.__rmod__, candidate_ids)
            keys = map(str.__add__, map(prefixes.__getitem__, buckets), map(str, candidate_ids))
            pipe.execute_command("MGET", *keys)
        replies = pipe.execute()
        return _decode(replies[0]), replies[1], replies[2] if candidate_ids else []

    def _read_cluster(
        self, ns: str, user_id: int, candidate_ids: Sequence[int]
    ) -> tuple[str | None, bytes | None, list[bytes | None]]:
        ukey = user_key(ns, user_id)
        groups: list[tuple[int, tuple[Any, ...]]] = [
            (_POINTER_SLOT, ("GET", POINTER_KEY)),
            (key_slot(ukey), ("GET", ukey)),
        ]
        ids = np.asarray(candidate_ids, dtype=np.int64)
        buckets = ids % RESTAURANT_BUCKETS
        order = np.argsort(buckets, kind="stable")
        counts = np.bincount(buckets, minlength=RESTAURANT_BUCKETS)
        in_order = ids[order].tolist()
        start = 0
        for bucket in np.flatnonzero(counts).tolist():
            stop = start + int(counts[bucket])
            prefix = restaurant_prefix(ns, bucket)
            keys = map(prefix.__add__, map(str, in_order[start:stop]))
            groups.append((_BUCKET_SLOTS[bucket], ("MGET", *keys)))
            start = stop
        replies = on_nodes(self.client, groups)
        by_bucket = [blob for reply in replies[2:] for blob in reply]
        inverse = np.empty(len(ids), dtype=np.intp)
        inverse[order] = np.arange(len(ids))
        blobs = list(map(by_bucket.__getitem__, inverse.tolist()))
        return _decode(replies[0]), replies[1], blobs


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
