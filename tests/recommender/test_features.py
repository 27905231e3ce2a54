"""The online store against a real redis-server: materialize, reload switch, single updates."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlsys.cli import main
from mlsys.platform.redis_client import connect, is_cluster
from mlsys.platform.redis_server import LocalCluster, RedisServer
from mlsys.recommender import features as F
from mlsys.recommender.data import open_dataset

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
    meta = F.materialize(tiny_data, client, progress=False)
    ds = open_dataset(tiny_data)
    assert F.current_namespace(client) == meta["namespace"] == "f1"
    stored = F.read_meta(client)
    assert stored is not None
    assert stored["counts"] == {"users": ds.n_users, "restaurants": ds.n_restaurants}
    assert stored["source"]["dataset_checksum"] == ds.checksum
    assert stored["schema"]["entities"]["user"]["bytes"] == 120
    assert stored["schema"]["entities"]["restaurant"]["bytes"] == 56
    assert key_count(client) == ds.n_users + ds.n_restaurants + 4  # + meta, pointer, seq, list

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
    F.materialize(tiny_data, client, progress=False)
    store = F.OnlineStore(client)
    F.set_user(client, 3, [9.0] * 30)  # an update in f1 that a reload replaces
    assert store.fetch(3, [1]).namespace == "f1"

    meta = F.materialize(tiny_data, client, progress=False)
    assert meta["namespace"] == "f2" and meta["pruned"] == ["f1"]
    assert not list(client.scan_iter(match="f1:*"))
    rows = store.fetch(3, [1])  # the store cached f1: it must follow the pointer
    assert rows.namespace == "f2"
    np.testing.assert_array_equal(rows.user, open_dataset(tiny_data).user_features()[3])


def test_half_written_namespace_is_pruned_by_next_load(
    fresh_redis: RedisServer, tiny_data: Path
) -> None:
    client = connect(fresh_redis.url, timeout_s=5)
    F.materialize(tiny_data, client, progress=False)
    # simulate a loader that died mid-way: registered, some keys written, pointer untouched
    client.incr(F.SEQ_KEY)
    client.rpush(F.NAMESPACES_KEY, "f2")
    client.set("f2:u:0", b"x" * 120)
    assert F.current_namespace(client) == "f1"
    meta = F.materialize(tiny_data, client, progress=False)
    assert meta["namespace"] == "f3" and sorted(meta["pruned"]) == ["f1", "f2"]
    assert [n for n in F.iter_namespaces(client)] == ["f3"]


def test_single_entity_updates(fresh_redis: RedisServer, tiny_data: Path) -> None:
    client = connect(fresh_redis.url, timeout_s=5)
    with pytest.raises(F.FeatureStoreError, match="empty"):
        F.set_user(client, 1, [0.0] * 30)
    F.materialize(tiny_data, client, progress=False)
    store = F.OnlineStore(client)
    F.set_user(client, 1, np.arange(30.0).tolist())
    np.testing.assert_array_equal(store.fetch(1, []).user, np.arange(30.0, dtype=np.float32))

    before = store.fetch(1, [4])
    F.set_restaurant(client, 4, latitude=13.9)
    after = store.fetch(1, [4])
    assert after.latitude[0] == 13.9 and after.longitude[0] == before.longitude[0]
    np.testing.assert_array_equal(after.features, before.features)

    with pytest.raises(F.InvalidFeatures) as err:
        F.set_user(client, 1, [0.0] * 29)
    assert err.value.field == "features"
    with pytest.raises(F.InvalidFeatures) as err:
        F.set_restaurant(client, 4, latitude=91)
    assert err.value.field == "latitude"
    # An unknown id is an error unless creation is asked for, and then it needs every part.
    with pytest.raises(F.UnknownEntity) as unknown:
        F.set_restaurant(client, 10**6, [0.5] * 10, 13.0, 100.5)
    assert unknown.value.field == "restaurant_id"
    with pytest.raises(F.UnknownEntity):
        F.set_user(client, 10**7, [0.0] * 30)
    assert store.fetch(10**7, []).user is None
    with pytest.raises(F.InvalidFeatures) as err:
        F.set_restaurant(client, 10**6, latitude=13.0, create=True)  # nothing to keep
    assert err.value.field == "restaurant_id"
    F.set_restaurant(client, 10**6, [0.5] * 10, 13.0, 100.5, create=True)
    rows = store.fetch(1, [10**6, 10**7])
    assert rows.unknown == 1 and rows.positions.tolist() == [0]
    F.set_user(client, 10**7, [0.0] * 30, create=True)
    assert store.fetch(10**7, []).user is not None


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
    with pytest.raises(F.InvalidFeatures) as err:
        F.set_restaurant(client, 10, **kwargs)
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
    assert "redis at" in capsys.readouterr().err
