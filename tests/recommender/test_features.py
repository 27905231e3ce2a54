"""The online store against a real redis-server: materialize, reload switch, single updates."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlsys.cli import main
from mlsys.platform.redis_client import connect, is_cluster
from mlsys.platform.redis_server import LocalCluster, RedisServer
from mlsys.recommender.data.dataset import open_dataset
from mlsys.recommender.serving import entity_updates as U
from mlsys.recommender.serving import materialize as M
from mlsys.recommender.serving import online_store as F

pytestmark = pytest.mark.integration


@pytest.fixture(params=["one node", "cluster"])
def fresh_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A private store: these tests reload and mutate, the shared one must stay as loaded. Each
    runs against one node and against a 3-master Redis Cluster named by one node's URL."""
    server: Any = (
        RedisServer(workdir=tmp_path / "redis")
        if request.param == "one node"
        else LocalCluster(tmp_path / "cluster")
    )
    with server:
        yield server


def key_count(client: Any) -> int:
    """DBSIZE, summed over the masters of a cluster."""
    if not is_cluster(client):
        return int(client.dbsize())
    return sum(int(client.get_redis_connection(n).dbsize()) for n in client.get_primaries())


def test_materialize_round_trips_rows_and_writes_meta(
    fresh_redis: RedisServer, tiny_data: Path
) -> None:
    client = connect(fresh_redis.url, timeout_s=5)
    meta = M.materialize(tiny_data, client, progress=False)
    ds = open_dataset(tiny_data)
    assert F.current_namespace(client) == meta["namespace"] == "f1"
    stored = F.read_meta(client)
    assert stored is not None
    cells = stored["counts"].pop("geo_cells")
    assert stored["counts"] == {"users": ds.n_users, "restaurants": ds.n_restaurants}
    assert stored["source"]["dataset_checksum"] == ds.checksum
    assert stored["schema"]["entities"]["user"]["bytes"] == 120
    assert stored["schema"]["entities"]["restaurant"]["bytes"] == 56
    assert stored["schema"]["entities"]["geo_cell"]["bytes"] == 64
    # + the cells, the cold-start profile, meta, pointer, seq, list
    assert key_count(client) == ds.n_users + ds.n_restaurants + cells + 5

    ids = [0, 17, ds.n_restaurants - 1]
    rows = F.OnlineStore(client).fetch(5, ids)
    np.testing.assert_array_equal(rows.user, ds.user_features()[5])
    np.testing.assert_array_equal(rows.features, ds.restaurant_features()[ids])
    np.testing.assert_array_equal(rows.latitude, ds.restaurant_locations()[ids, 0])
    np.testing.assert_array_equal(rows.longitude, ds.restaurant_locations()[ids, 1])


def test_reload_switches_pointer_and_prunes_old_namespace(
    fresh_redis: RedisServer, tiny_data: Path
) -> None:
    client = connect(fresh_redis.url, timeout_s=5)
    M.materialize(tiny_data, client, progress=False)
    store = F.OnlineStore(client)
    U.set_user(client, 3, [9.0] * 30)  # an update in f1 that a reload replaces
    assert store.fetch(3, [1]).namespace == "f1"

    meta = M.materialize(tiny_data, client, progress=False)
    assert meta["namespace"] == "f2" and meta["pruned"] == ["f1"]
    assert not list(client.scan_iter(match="f1:*"))
    rows = store.fetch(3, [1])  # the store cached f1: it must follow the pointer
    assert rows.namespace == "f2"
    np.testing.assert_array_equal(rows.user, open_dataset(tiny_data).user_features()[3])


def test_half_written_namespace_is_pruned_by_next_load(
    fresh_redis: RedisServer, tiny_data: Path
) -> None:
    client = connect(fresh_redis.url, timeout_s=5)
    M.materialize(tiny_data, client, progress=False)
    # simulate a loader that died mid-way: registered, some keys written, pointer untouched
    client.incr(F.SEQ_KEY)
    client.rpush(F.NAMESPACES_KEY, "f2")
    client.set("f2:u:0", b"x" * 120)
    assert F.current_namespace(client) == "f1"
    meta = M.materialize(tiny_data, client, progress=False)
    assert meta["namespace"] == "f3" and sorted(meta["pruned"]) == ["f1", "f2"]
    assert [n for n in F.iter_namespaces(client)] == ["f3"]


def test_single_entity_updates(fresh_redis: RedisServer, tiny_data: Path) -> None:
    client = connect(fresh_redis.url, timeout_s=5)
    with pytest.raises(F.FeatureStoreError, match="empty"):
        U.set_user(client, 1, [0.0] * 30)
    M.materialize(tiny_data, client, progress=False)
    store = F.OnlineStore(client)
    U.set_user(client, 1, np.arange(30.0).tolist())
    np.testing.assert_array_equal(store.fetch(1, []).user, np.arange(30.0, dtype=np.float32))

    before = store.fetch(1, [4])
    U.set_restaurant(client, 4, latitude=13.9)
    after = store.fetch(1, [4])
    assert after.latitude[0] == 13.9 and after.longitude[0] == before.longitude[0]
    np.testing.assert_array_equal(after.features, before.features)

    with pytest.raises(U.InvalidFeatures) as err:
        U.set_user(client, 1, [0.0] * 29)
    assert err.value.field == "features"
    with pytest.raises(U.InvalidFeatures) as err:
        U.set_restaurant(client, 4, latitude=91)
    assert err.value.field == "latitude"
    # An unknown id is an error unless creation is asked for, and then it needs every part.
    with pytest.raises(U.UnknownEntity) as unknown:
        U.set_restaurant(client, 10**6, [0.5] * 10, 13.0, 100.5)
    assert unknown.value.field == "restaurant_id"
    with pytest.raises(U.UnknownEntity):
        U.set_user(client, 10**7, [0.0] * 30)
    unknown_user = store.fetch(10**7, [])
    assert unknown_user.cold_start and unknown_user.user is not None
    with pytest.raises(U.InvalidFeatures) as err:
        U.set_restaurant(client, 10**6, latitude=13.0, create=True)  # nothing to keep
    assert err.value.field == "restaurant_id"
    U.set_restaurant(client, 10**6, [0.5] * 10, 13.0, 100.5, create=True)
    rows = store.fetch(1, [10**6, 10**7])
    assert rows.unknown == 1 and rows.ids.tolist() == [10**6]
    U.set_user(client, 10**7, [0.0] * 30, create=True)
    assert not store.fetch(10**7, []).cold_start


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"features": [1e39] + [0.0] * 9}, "features"),  # finite double, inf as float32
        ({"features": [float("nan")] + [0.0] * 9}, "features"),
        ({"features": [10**400] + [0.0] * 9}, "features"),  # overflows even float64
        ({"latitude": float("nan")}, "latitude"),
        ({"longitude": 999.0}, "longitude"),
    ],
)
def test_updates_refuse_values_the_stored_type_cannot_hold(
    loaded_redis: RedisServer, kwargs: dict[str, Any], field: str
) -> None:
    client = connect(loaded_redis.url, timeout_s=5)
    before = F.OnlineStore(client).fetch(0, [10])
    with pytest.raises(U.InvalidFeatures) as err:
        U.set_restaurant(client, 10, **kwargs)
    assert err.value.field == field
    after = F.OnlineStore(client).fetch(0, [10])
    np.testing.assert_array_equal(after.features, before.features)  # nothing written
    assert after.latitude[0] == before.latitude[0]


def test_cli_load_set_info(fresh_redis: RedisServer, tiny_data: Path, capsys: Any) -> None:
    assert main(["features", "load", str(tiny_data), "--redis", fresh_redis.url]) == 0
    assert "namespace f1" in capsys.readouterr().out
    values = ",".join(["0.25"] * 30)
    assert (
        main(["features", "set", "user", "2", "--redis", fresh_redis.url, "--features", values])
        == 0
    )
    client = connect(fresh_redis.url, timeout_s=5)
    assert F.OnlineStore(client).fetch(2, []).user.tolist() == [0.25] * 30  # type: ignore[union-attr]
    assert (
        main(["features", "set", "user", "2", "--redis", fresh_redis.url, "--features", "1,2"]) == 1
    )
    assert "expected 30 values" in capsys.readouterr().err
    assert main(["features", "info", "--redis", fresh_redis.url]) == 0
    assert json.loads(capsys.readouterr().out)["namespace"] == "f1"


def test_cli_reports_unreachable_redis(capsys: Any, tiny_data: Path) -> None:
    from mlsys.platform.redis_server import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    assert main(["features", "load", str(tiny_data), "--redis", url]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--redis {url}" in err[0]  # one line, naming the store


@pytest.fixture(scope="module")
def other_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset's ids with other values (seed 8): every row tells which load it is."""
    from mlsys.recommender.data.generate import generate_clicks

    out = tmp_path_factory.mktemp("clicks") / "tiny-seed8"
    generate_clicks(out, scale="tiny", seed=8, progress=False)
    return out


def test_readers_never_mix_two_loads(fresh_redis: Any, tiny_data: Path, other_tiny: Path) -> None:
    """Reloads alternate between two datasets while a reader fetches: each answer is all one
    load, never a mix and never a row lost to the old namespace's deletion."""
    client = connect(fresh_redis.url, timeout_s=5)
    M.materialize(tiny_data, client, progress=False)
    loads = [open_dataset(d) for d in (tiny_data, other_tiny)]
    tables = [(ds.user_features(), ds.restaurant_features()) for ds in loads]
    stop = threading.Event()
    seen: list[int] = []
    wrong: list[str] = []

    def read() -> None:
        store = F.OnlineStore(connect(fresh_redis.url, timeout_s=5))
        rng = np.random.default_rng(0)
        while not stop.is_set():
            user = int(rng.integers(2000))
            ids = rng.choice(1000, 300, replace=False)
            rows = store.fetch(user, ids.tolist())
            which = [
                i
                for i, (users, rests) in enumerate(tables)
                if rows.user is not None
                and np.array_equal(rows.user, users[user])
                and rows.unknown == 0
                and np.array_equal(rows.features, rests[ids])
            ]
            if len(which) != 1:
                wrong.append(f"{rows.namespace}: user {user}, {rows.unknown} unknown")
            seen.extend(which)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(6):
            M.materialize([other_tiny, tiny_data][i % 2], client, progress=False)
    finally:
        stop.set()
        reader.join()
    assert not wrong, wrong[:5]
    assert set(seen) == {0, 1}


def test_cluster_read_that_meets_a_pruned_namespace_reads_again(
    tmp_path: Path, tiny_data: Path, other_tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a cluster allows and one node does not: the pointer's node answers before a
    reload switches, the rows' nodes after the old namespace is deleted. The rows come back
    missing; the store must see that the pointer moved and read the new load, not report
    unknown entities. (The reload is forced into that gap; the reads are real.)"""
    with LocalCluster(tmp_path / "cluster") as cluster:
        client = connect(cluster.url, timeout_s=5)
        M.materialize(tiny_data, client, progress=False)
        store = F.OnlineStore(client)
        assert store.fetch(7, [1, 2]).namespace == "f1"
        real = F.on_nodes
        calls = []

        def reload_in_the_gap(c: Any, groups: Any) -> list[Any]:
            calls.append(1)
            if len(calls) > 1:
                return real(c, groups)
            M.materialize(other_tiny, client, progress=False)  # switch to f2, delete f1
            replies = real(c, groups)
            replies[0] = b"f1"  # the pointer as read before the switch
            return replies

        monkeypatch.setattr(F, "on_nodes", reload_in_the_gap)
        rows = store.fetch(7, [1, 2])
        other = open_dataset(other_tiny)
        assert rows.namespace == "f2" and rows.unknown == 0
        np.testing.assert_array_equal(rows.user, other.user_features()[7])
        np.testing.assert_array_equal(rows.features, other.restaurant_features()[[1, 2]])


def _within(ds: Any, lat: float, lon: float, max_dist: float) -> set[int]:
    from mlsys.recommender.geo import haversine_m

    loc = ds.restaurant_locations()
    return set(np.flatnonzero(haversine_m(lat, lon, loc[:, 0], loc[:, 1]) <= max_dist).tolist())


def test_retrieval_reads_every_restaurant_within_reach_and_follows_updates(
    fresh_redis: RedisServer, tiny_data: Path
) -> None:
    """Without a candidate list, the geo index returns a superset of the restaurants within
    max_dist (exact filtering is the ranking's), on one node and on a cluster alike; a
    restaurant created or moved a moment ago is where it now is, and only there."""
    from mlsys.recommender.geo import haversine_m

    client = connect(fresh_redis.url, timeout_s=5)
    M.materialize(tiny_data, client, progress=False)
    ds = open_dataset(tiny_data)
    store = F.OnlineStore(client)
    rng = np.random.default_rng(3)
    points = zip(
        rng.uniform(13.6, 14.15, 20),
        rng.uniform(100.3, 100.85, 20),
        rng.choice([300.0, 2_000.0, 5_000.0, 10_000.0], 20),
        strict=True,
    )
    for lat, lon, max_dist in points:
        rows = store.retrieve(3, float(lat), float(lon), float(max_dist))
        near = haversine_m(lat, lon, rows.latitude, rows.longitude) <= max_dist
        assert set(rows.ids[near].tolist()) == _within(ds, lat, lon, max_dist)
        assert len(set(rows.ids.tolist())) == len(rows.ids)  # each restaurant once
        np.testing.assert_array_equal(rows.features, ds.restaurant_features()[rows.ids])
        assert not rows.cold_start and rows.unknown == 0
    # Far from every restaurant: nothing to read.
    assert len(store.retrieve(3, 51.5, -0.12, 10_000.0).ids) == 0

    # Created a moment ago: retrievable on the next request; moved: found at the new place only.
    U.set_restaurant(client, 10**6, [0.5] * 10, 13.9, 100.6, create=True)
    assert 10**6 in store.retrieve(3, 13.9, 100.6, 50.0).ids.tolist()
    U.set_restaurant(client, 10**6, latitude=13.7, longitude=100.4)
    assert 10**6 not in store.retrieve(3, 13.9, 100.6, 2_000.0).ids.tolist()
    moved = store.retrieve(3, 13.7, 100.4, 50.0)
    assert moved.ids.tolist().count(10**6) == 1
    U.set_restaurant(client, 10**6, features=[0.25] * 10)  # same cell: replaced, not added
    again = store.retrieve(3, 13.7, 100.4, 50.0)
    assert again.ids.tolist().count(10**6) == 1
    np.testing.assert_array_equal(again.features[again.ids == 10**6][0], [0.25] * 10)

    unknown = store.retrieve(10**7, 13.9, 100.6, 1_000.0)
    assert unknown.cold_start
    np.testing.assert_allclose(unknown.user, ds.user_features().mean(axis=0), rtol=1e-5)
