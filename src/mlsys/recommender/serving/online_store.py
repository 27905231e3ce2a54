"""The online feature store: user and restaurant feature views materialized into Redis.

Why Redis, and why this layout (measurements in docs/serving-report.md):

- The API must read every request's features from a database so updates show up at once. A
  request needs one user row and ~1,000 restaurant rows by primary key, nothing else: a
  key-value lookup, which Redis answers from memory in one round trip (MGET) for ~1.7 ms.
- One binary string per entity, no hashes or JSON: a value is the row's raw little-endian bytes,
  so decoding 1,000 rows is one `b"".join` plus one `np.frombuffer`, with no per-field parsing.

      <ns>:u:<user_id>                 30 x float32 (f00..f29)                        120 bytes
      <ns>:u:cold                      the cold-start profile (the mean user), same layout
      <ns>:r:{r<bucket>}:<restaurant_id>  10 x float32, float64 lat, float64 lon     56 bytes
      <ns>:c:{g<block>}:<band>.<col>   the geo index: the cell's restaurants, 64 bytes each
                                       (int64 id + the restaurant's 56), `geo_cells.py`
      <ns>:meta                        JSON: schema, source dataset and checksum, counts, created_at

  float32 features are exact (the parquet columns hold float32-rounded doubles) and coordinates
  keep float64 so distances are not rounded.
- The same layout serves one node and a Redis Cluster. Users spread over every hash slot by
  their whole key, so 100M users spread over the masters. Restaurants carry a hash tag, one of
  16 buckets (restaurant_id mod 16), so a request's ~1,000 candidates become 16 MGETs, each
  within one slot, sent as one batch per node (`platform.redis_client.on_nodes`).
- Reloads never expose half-written data: `materialize.py` writes a whole new namespace
  (`f<N>`, N from INCR) and only then flips the pointer `mlsys:features:current` with one SET.
  Every key a request reads is inside one namespace, so it cannot mix two loads; see
  `OnlineStore.fetch` for how each mode also never reads a namespace that is being deleted.
  Old namespaces, and half-written ones from crashed loads, are deleted with SCAN + UNLINK
  right after the switch (`keep=1`), so Redis holds two copies only while a reload runs.
- Retrieval (a request without candidates, `OnlineStore.retrieve`) reads the grid cells
  around the user in the same single round trip; why this grid, and not GEOSEARCH or H3, is
  in `geo_cells.py`.
- A user the store does not know is ranked with the cold-start profile, read in the same
  round trip; `Rows.cold_start` says so (the API's `X-Cold-Start: user`).
- Single-entity updates (`entity_updates.py`) overwrite one key in the current
  namespace (a restaurant also in its cell), so the very next request sees them. An update
  racing a reload lands in the old namespace and is lost with it; re-apply updates after a
  reload.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from itertools import compress, repeat
from operator import is_not
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from mlsys.errors import MlsysError
from mlsys.files import JsonIn
from mlsys.platform.redis_client import (
    Command,
    RedisClient,
    is_cluster,
    key_slot,
    on_nodes,
    quick_ack,
)
from mlsys.recommender.model import RESTAURANT_FEATURES, USER_FEATURES
from mlsys.recommender.ranking import FloatMatrix, Rows
from mlsys.recommender.serving import geo_cells

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


class FeatureStoreError(MlsysError):
    """The online store is unreachable, empty or holds something we do not understand."""


def decode(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def schema() -> JsonIn:
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
            "cold_start_user": {"key": "<ns>:u:cold", "as": "user", "value": "the mean user"},
            "geo_cell": {
                "key": "<ns>:c:{g<band/32>.<column at the finest width/32>}:<band>.<column>",
                "grid": "geo_cells.py: bands of 360/2^15 degrees, columns 2^m bands wide",
                "fields": [["restaurant_id", "int64"]]
                + [[name, "float32"] for name in RESTAURANT_FEATURES]
                + [["latitude", "float64"], ["longitude", "float64"]],
                "bytes": geo_cells.CELL_DTYPE.itemsize,
            },
        },
    }


def current_namespace(client: RedisClient) -> str | None:
    return decode(client.get(POINTER_KEY))


def read_meta(client: RedisClient, namespace: str | None = None) -> JsonIn | None:
    ns = namespace or current_namespace(client)
    if ns is None:
        return None
    raw = client.get(f"{ns}:meta")
    return None if raw is None else dict(json.loads(raw))


# ---------------------------------------------------------------- keys


def user_key(ns: str, user_id: int) -> str:
    return f"{ns}:u:{int(user_id)}"


def restaurant_prefix(ns: str, bucket: int) -> str:
    return f"{ns}:r:{{r{bucket}}}:"


def cold_user_key(ns: str) -> str:
    """The cold-start profile: what a user the store does not know is ranked as."""
    return f"{ns}:u:cold"


def cell_key(ns: str, cell: tuple[int, int]) -> str:
    return f"{ns}:c:{geo_cells.cell_suffix(*cell)}"


def cell_records(ids: npt.ArrayLike, restaurants: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Restaurant rows (`RESTAURANT_DTYPE`) as the geo index's cells hold them, id first."""
    records = np.empty(len(restaurants), dtype=geo_cells.CELL_DTYPE)
    records["id"] = ids
    for name in ("features", "latitude", "longitude"):
        records[name] = restaurants[name]
    return records


def restaurant_key(ns: str, restaurant_id: int) -> str:
    rid = int(restaurant_id)
    return restaurant_prefix(ns, rid % RESTAURANT_BUCKETS) + str(rid)


# ---------------------------------------------------------------- the request-time read


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

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self._ns: str | None = None
        self._cluster = is_cluster(client)
        self._keys: _Keys | None = None

    def namespace(self) -> str:
        ns = current_namespace(self.client)
        if ns is None:
            raise FeatureStoreError("the online store is empty: run `mlsys features load` first")
        self._ns = ns
        return ns

    def fetch(self, user_id: int, candidate_ids: Sequence[int]) -> Rows:
        """The user's row (or the cold-start profile) and the candidates' rows, by id."""
        return self._read(user_id, _ById(candidate_ids))

    def retrieve(self, user_id: int, latitude: float, longitude: float, max_dist: float) -> Rows:
        """The user's row (or the cold-start profile) and every restaurant of the cells that
        may hold one within `max_dist` (`geo_cells.covering`); the caller filters by exact
        distance."""
        cells = geo_cells.covering_suffixes(latitude, longitude, max_dist)
        return self._read(user_id, _ByCell(cells))

    def _read(self, user_id: int, wanted: _Wanted) -> Rows:
        ns = self._ns or self.namespace()
        read = self._read_cluster if self._cluster else self._read_node
        for _ in range(3):
            pointer, user, cold, blobs = read(ns, user_id, wanted)
            # In a cluster a missing key may be one a reload's prune deleted meanwhile; the
            # cold-start profile exists in every namespace, so its absence says so for cells
            # (an empty cell is no key at all, and most coverings have some).
            stale = user is None or cold is None or (isinstance(wanted, _ById) and None in blobs)
            if pointer == ns and self._cluster and stale:
                pointer = current_namespace(self.client)
            if pointer is None:
                raise FeatureStoreError("the online store is empty: run `mlsys features load`")
            if pointer == ns:
                return wanted.rows(ns, user, cold, blobs, dedupe=self._cluster)
            ns = self._ns = pointer
        raise FeatureStoreError(  # pragma: no cover - three reloads within one request
            "the feature namespace kept changing; try again"
        )

    def _read_node(self, ns: str, user_id: int, wanted: _Wanted) -> _Replies:
        """MULTI; GET pointer; GET user; GET cold-start profile; MGET rows; EXEC as one buffer
        on one socket.

        redis-py would pack the MGET's 1,000 keys in Python and hand the kernel several
        buffers (a profile under load put a third of the worker's CPU there); the keys' RESP
        encodings are the same on every request of a namespace, so `_Keys` makes each once and
        a request joins them in C."""
        keys = self._keys if self._keys is not None and self._keys.ns == ns else _Keys(ns)
        self._keys = keys
        user = user_key(ns, user_id).encode()
        cold = cold_user_key(ns).encode()
        parts = [_MULTI, _GET_POINTER, b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(user), user),
                 b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(cold), cold)]  # fmt: skip
        n = len(wanted)
        if n:
            parts.append(b"*%d\r\n$4\r\nMGET\r\n" % (n + 1))
            parts.append(wanted.encoded(keys))
        parts.append(_EXEC)
        queued = len(parts) - 2 - (1 if n else 0)  # MULTI's OK, then one QUEUED each
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([b"".join(parts)], check_health=False)
            for _ in range(queued + 1):
                conn.read_response()
            quick_ack(conn)  # the rows: many values, read without the delayed-ACK stall
            replies = conn.read_response()
        except BaseException:
            conn.disconnect()  # a reply half read would answer the next request
            raise
        finally:
            pool.release(conn)
        if not isinstance(replies, list) or any(isinstance(r, Exception) for r in replies):
            raise FeatureStoreError(f"the store answered the read with {replies!r:.200}")
        return decode(replies[0]), replies[1], replies[2], replies[3] if n else []

    def _read_cluster(self, ns: str, user_id: int, wanted: _Wanted) -> _Replies:
        """The same reads in one parallel round, a batch per node (`on_nodes`): one MGET per
        hash tag, and the rows put back in the order asked."""
        ukey, ckey = user_key(ns, user_id), cold_user_key(ns)
        groups: list[tuple[int, Command]] = [
            (_POINTER_SLOT, ("GET", POINTER_KEY)),
            (key_slot(ukey), ("GET", ukey)),
            (key_slot(ckey), ("GET", ckey)),
        ]
        batches, inverse = wanted.by_slot(ns)
        groups += [(slot, ("MGET", *keys)) for slot, keys in batches]
        replies = on_nodes(self.client, groups)
        in_batches = [blob for reply in replies[3:] for blob in reply]
        blobs = list(map(in_batches.__getitem__, inverse))
        return decode(replies[0]), replies[1], replies[2], blobs


_Replies = tuple[str | None, bytes | None, bytes | None, list[bytes | None]]


class _ById:
    """The caller's candidates: one key each, in the request's order."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def encoded(self, keys: _Keys) -> bytes:
        return keys.join(self.ids)

    def by_slot(self, ns: str) -> tuple[list[tuple[int, list[str]]], list[int]]:
        """One MGET per bucket (hash tag), and where each id's reply lands among them."""
        ids = np.asarray(self.ids, dtype=np.int64)
        buckets = ids % RESTAURANT_BUCKETS
        order = np.argsort(buckets, kind="stable")
        counts = np.bincount(buckets, minlength=RESTAURANT_BUCKETS)
        in_order = ids[order].tolist()
        batches: list[tuple[int, list[str]]] = []
        start = 0
        for bucket in np.flatnonzero(counts).tolist():
            stop = start + int(counts[bucket])
            prefix = restaurant_prefix(ns, bucket)
            batches.append((_BUCKET_SLOTS[bucket], [prefix + str(i) for i in in_order[start:stop]]))
            start = stop
        inverse = np.empty(len(ids), dtype=np.intp)
        inverse[order] = np.arange(len(ids))
        return batches, inverse.tolist()

    def rows(
        self, ns: str, user: bytes | None, cold: bytes | None, blobs: list[bytes | None],
        dedupe: bool = False,
    ) -> Rows:  # fmt: skip
        profile, cold_start = _profile(user, cold)
        n = len(blobs)
        missing = blobs.count(None)
        if missing:
            known = np.fromiter(map(is_not, blobs, repeat(None)), dtype=bool, count=n)
            ids = np.asarray(self.ids, dtype=np.int64)[known]
            payload = b"".join(compress(blobs, known))  # type: ignore[arg-type]
        else:
            ids = np.asarray(self.ids, dtype=np.int64)
            payload = b"".join(blobs)  # type: ignore[arg-type]
        rows = np.frombuffer(payload, dtype=RESTAURANT_DTYPE)
        return Rows(ns, profile, ids, rows["features"], rows["latitude"], rows["longitude"],
                    missing, cold_start)  # fmt: skip


class _ByCell:
    """The covering's cells: one key each, holding that cell's restaurants as packed rows."""

    def __init__(self, suffixes: list[str]) -> None:
        self.suffixes = suffixes

    def __len__(self) -> int:
        return len(self.suffixes)

    def encoded(self, keys: _Keys) -> bytes:
        return b"".join(map(keys.cell, self.suffixes))

    def by_slot(self, ns: str) -> tuple[list[tuple[int, list[str]]], list[int]]:
        """One MGET per hash tag (the cells' 32 x 32 block)."""
        by_tag: dict[str, list[int]] = {}
        for i, suffix in enumerate(self.suffixes):
            by_tag.setdefault(suffix[: suffix.index("}") + 1], []).append(i)
        batches: list[tuple[int, list[str]]] = []
        inverse = [0] * len(self.suffixes)
        at = 0
        for tag, members in by_tag.items():
            batches.append((key_slot(tag), [f"{ns}:c:{self.suffixes[i]}" for i in members]))
            for i in members:
                inverse[i] = at
                at += 1
        return batches, inverse

    def rows(
        self, ns: str, user: bytes | None, cold: bytes | None, blobs: list[bytes | None],
        dedupe: bool = False,
    ) -> Rows:  # fmt: skip
        """Concatenated in the covering's order, so a node and a cluster give
        the same rows in the same order. In a cluster a restaurant being moved between cells
        can be in both for a moment (the two cells' writes are not one transaction there):
        the first copy is kept."""
        profile, cold_start = _profile(user, cold)
        rows = np.frombuffer(b"".join(b for b in blobs if b), dtype=geo_cells.CELL_DTYPE)
        if dedupe and len(rows):
            _, first = np.unique(rows["id"], return_index=True)
            if len(first) < len(rows):
                rows = rows[np.sort(first)]
        return Rows(ns, profile, rows["id"], rows["features"], rows["latitude"],
                    rows["longitude"], 0, cold_start)  # fmt: skip


_Wanted = _ById | _ByCell


def _profile(user: bytes | None, cold: bytes | None) -> tuple[FloatMatrix | None, bool]:
    """The user's own features; else the cold-start profile, if the namespace has one."""
    if user is not None:
        return np.frombuffer(user, dtype=USER_DTYPE)["features"][0], False
    if cold is not None:
        return np.frombuffer(cold, dtype=USER_DTYPE)["features"][0], True
    return None, False


_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"
_GET_POINTER = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(POINTER_KEY), POINTER_KEY.encode())


class _Keys:
    """The RESP encoding of each restaurant key of one namespace (`$16 CRLF f3:r:{r7}:123 CRLF`),
    made on first use and kept while the namespace is current: key names only, never data,
    so an update is still read by the next request. At most `limit` are kept (the catalogue's
    100k take ~10 MB); past that, an id is encoded each time it is asked for."""

    def __init__(self, ns: str, limit: int = 1_000_000) -> None:
        self.ns = ns
        self.limit = limit
        self.prefixes = [restaurant_prefix(ns, b).encode() for b in range(RESTAURANT_BUCKETS)]
        self.cell_prefix = f"{ns}:c:".encode()
        self.encoded: dict[int, bytes] = {}

    def cell(self, suffix: str) -> bytes:
        """A cell key's RESP encoding (`geo_cells.cell_suffix` after `<ns>:c:`)."""
        key = self.cell_prefix + suffix.encode()
        return b"$%d\r\n%s\r\n" % (len(key), key)

    def encode(self, restaurant_id: int) -> bytes:
        key = self.prefixes[restaurant_id % RESTAURANT_BUCKETS] + b"%d" % restaurant_id
        return b"$%d\r\n%s\r\n" % (len(key), key)

    def join(self, ids: Sequence[int]) -> bytes:
        """The MGET's arguments for `ids`, in order."""
        parts = list(map(self.encoded.get, ids))
        if None in parts:
            for i, known in enumerate(parts):
                if known is None:
                    part = parts[i] = self.encode(ids[i])
                    if len(self.encoded) < self.limit:
                        self.encoded[ids[i]] = part
        return b"".join(cast(list[bytes], parts))


def iter_namespaces(client: RedisClient) -> Iterator[str]:
    for n in client.lrange(NAMESPACES_KEY, 0, -1):
        name = decode(n)
        if name:
            yield name
