"""Clients for one Redis node or a Redis Cluster, from the same URL, that fail fast.

Why the mode is asked of the server rather than spelt in the URL: an operator points `--redis`
at whatever node the platform gave them; `INFO cluster` says whether it is a cluster, and then
redis-py's `RedisCluster` learns the rest of the topology from it.

Why `on_nodes` exists beside redis-py's cluster pipeline: a request reads ~1,000 restaurant
rows spread over every master. The cluster pipeline routes command by command in Python: 14.3
ms a request for 1,000 GETs, 2.4 ms for 16 MGETs (perf_test/cluster_fetch.py,
docs/scale-out.md). Writing one packed batch to each node's socket and then reading the
replies makes the whole `OnlineStore.fetch` 1.27 ms, the same as one node's 1.26 ms. redis-py
still owns the topology, the connections and the redirections: a reply that says the slot
moved falls back to its cluster pipeline, which follows MOVED and ASK.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

# The boundary with redis-py: its clients (`redis.Redis`, `redis.RedisCluster`, a node's
# connection) type their replies as `Awaitable[Any] | Any`, so a reply is whatever Redis sent.
# Everywhere a client is passed around it is a `RedisClient`; each caller decodes the replies
# it reads into typed values right there.
RedisClient = Any
Reply = Any
Command = tuple[Reply, ...]


def quick_ack(conn: Any) -> None:
    """Ask the kernel to acknowledge the reply about to be read at once (Linux TCP_QUICKACK).

    A reply of many values (an MGET of ~200 geo cells, ~300 kB) leaves Redis as many small
    writes; a client connection in request-response rhythm delays its ACKs (up to 40 ms and
    more), Redis's send buffer fills with unacknowledged data, and the read stalls: 0.7 % of
    retrievals took 50-100 ms (and so met the 50 ms read timeout as 503s) on loopback, none
    with this (docs/funnel.md). Not permanent in the kernel, so it is set before each read."""
    sock = getattr(conn, "_sock", None)
    if sock is not None and _QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
_REFRESH_EVERY_S = 0.25  # at most this often per client while a node is unreachable
_refresh_lock = threading.Lock()
_last_refresh: dict[int, float] = {}


def _fail_fast(timeout_s: float) -> dict[str, Any]:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
    }


def server_is_cluster(url: str, timeout_s: float) -> bool:
    """Asks the node behind `url`; raises redis.ConnectionError when nothing answers."""
    import redis

    probe = redis.Redis.from_url(url, **_fail_fast(max(timeout_s, 0.5)))
    try:
        return int(probe.info("cluster").get("cluster_enabled", 0)) == 1
    finally:
        probe.close()


def connect(url: str, timeout_s: float = 0.05, max_connections: int = 16) -> RedisClient:
    """A `redis.Redis`, or a `redis.RedisCluster` when the node says it is in a cluster.

    Small timeouts and no retries turn "Redis is down" into an exception within ~timeout_s; the
    API answers 503 and the next request simply tries again, which is all the recovery we need.
    `max_connections` bounds each node's pool. Raises redis.ConnectionError when the node does
    not answer, because the mode cannot be known then.
    """
    import redis

    if server_is_cluster(url, timeout_s):
        return redis.RedisCluster.from_url(
            url,
            max_connections=max_connections,
            **_fail_fast(timeout_s),
        )
    return connect_node(url, timeout_s, max_connections)


def connect_node(url: str, timeout_s: float = 0.05, max_connections: int = 16) -> RedisClient:
    """A single-node client without asking the server: for the impression log, whose Lua
    scripts touch several keys and so need one node, and which may still be starting."""
    import redis

    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout_s, **_fail_fast(timeout_s)
    )
    return redis.Redis(connection_pool=pool)


def is_cluster(client: RedisClient) -> bool:
    import redis

    return isinstance(client, redis.RedisCluster)


def close(client: RedisClient) -> None:
    """Drops every pooled connection (a forked worker must not share its parent's sockets)."""
    if is_cluster(client):
        client.close()
    else:
        client.connection_pool.disconnect()


def used_memory(client: RedisClient) -> int:
    """Bytes Redis uses for the data set: summed over the masters of a cluster."""
    if is_cluster(client):
        nodes = [client.get_redis_connection(n) for n in client.get_primaries()]
        return sum(int(node.info("memory")["used_memory"]) for node in nodes)
    return int(client.info("memory")["used_memory"])


def key_slot(key: str) -> int:
    from redis.crc import key_slot as slot

    return int(slot(key.encode()))


def refresh_topology(client: RedisClient) -> None:
    """Re-reads which node serves which slot, after a node failed or a slot moved; at most
    every 0.25 s per client, so a dead node does not turn each request into a rediscovery."""
    now = time.monotonic()
    with _refresh_lock:
        if now - _last_refresh.get(id(client), 0.0) < _REFRESH_EVERY_S:
            return
        _last_refresh[id(client)] = now
    # While the cluster is still failing over this can fail too; the next call retries.
    with contextlib.suppress(Exception):
        client.nodes_manager.initialize()


def unavailable_errors() -> tuple[type[Exception], ...]:
    """What "the store cannot answer now" looks like: a node down or hung, the cluster failing
    over (CLUSTERDOWN) or a slot nobody serves. A server answers these with 503."""
    import redis
    from redis.exceptions import ClusterError, RedisClusterException

    return (redis.ConnectionError, redis.TimeoutError, ClusterError, RedisClusterException)


def _redirected(exc: BaseException) -> bool:
    from redis.exceptions import AskError, TryAgainError

    return isinstance(exc, AskError | TryAgainError) or str(exc).startswith(
        ("MOVED", "ASK", "TRYAGAIN")
    )


def on_nodes(client: RedisClient, groups: Sequence[tuple[int, Command]]) -> list[Reply]:
    """Runs each `(slot, command)` on the master serving `slot` and returns the replies in order.

    One packed write per node, all written before any reply is read, so the nodes work in
    parallel and a request costs one round trip to the slowest node. Every command must touch
    keys of its own slot only (one MGET per hash tag). A connection error refreshes the
    topology and propagates (the caller answers 503); a redirection (a slot moved or moving) is
    retried once through redis-py's cluster pipeline, key by key.
    """
    import redis

    by_node: dict[str, tuple[RedisClient, list[int]]] = {}
    nodes = client.nodes_manager
    try:
        for i, (slot, _) in enumerate(groups):
            node = nodes.get_node_from_slot(slot)
            by_node.setdefault(node.name, (node, []))[1].append(i)
    except redis.exceptions.SlotNotCoveredError as exc:
        refresh_topology(client)
        raise redis.ConnectionError(str(exc)) from exc

    replies: list[Reply] = [None] * len(groups)
    sent: list[tuple[RedisClient, Reply, list[int]]] = []
    try:
        for node, indices in by_node.values():
            pool = node.redis_connection.connection_pool
            conn = pool.get_connection()
            sent.append((pool, conn, indices))
            conn.send_packed_command(conn.pack_commands([groups[i][1] for i in indices]))
        for _, conn, indices in sent:
            for i in indices:
                quick_ack(conn)
                replies[i] = conn.read_response()
    except redis.ResponseError as exc:
        _discard(sent)
        if not _redirected(exc):
            if str(exc).startswith(("CLUSTERDOWN", "MASTERDOWN")):
                refresh_topology(client)
            raise
        refresh_topology(client)
        return _one_key_at_a_time(client, groups)
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        _discard(sent)
        refresh_topology(client)
        raise
    except BaseException:
        _discard(sent)
        raise
    for pool, conn, _ in sent:
        pool.release(conn)
    return replies


def _one_key_at_a_time(client: RedisClient, groups: Sequence[tuple[int, Command]]) -> list[Reply]:
    """The slow path while slots move: redis-py's cluster pipeline, with each MGET split into
    GETs. A slot half migrated answers a multi-key command with TRYAGAIN until it is done, but
    each single key with ASK to wherever it is now, which the pipeline follows."""
    pipe = client.pipeline(transaction=False)
    for _, command in groups:
        keys = command[1:] if str(command[0]).upper() == "MGET" else ()
        for key in keys:
            pipe.get(key)
        if not keys:
            pipe.execute_command(*command)
    flat = iter(pipe.execute())
    replies: list[Reply] = []
    for _, command in groups:
        if str(command[0]).upper() == "MGET":
            replies.append([next(flat) for _ in command[1:]])
        else:
            replies.append(next(flat))
    return replies


def _discard(sent: list[tuple[RedisClient, Reply, list[int]]]) -> None:
    """A connection with replies still unread must never go back to the pool as it is."""
    for pool, conn, _ in sent:
        conn.disconnect()
        pool.release(conn)
