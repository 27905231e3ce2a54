"""uvicorn's httptools protocol with the two guards it lacks: a header deadline and a cap.

uvicorn times out idle keep-alive connections, but not a connection that never finishes its
request headers: it holds one file descriptor until the client leaves. Tens of thousands of
such connections exhausted both workers' descriptors (issue 14), after which even /healthz
was refused. So each worker:

- closes a connection whose request line and headers are not complete within
  `Settings.header_timeout_s` of its first byte (or of the connection, for the first request);
- closes a new connection at once when it already holds `Settings.max_connections`, so the
  descriptors run out on the attacker's side, not ours.

uvicorn's own `limit_concurrency` is different: it still accepts the connection and answers 503
once the headers arrive, so a client that sends none is not affected by it.

The request body has its own deadline, enforced where the body is read (`server.RequestContext`).
Dropped connections are counted in `mlsys_connections_dropped_total{reason}`.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mlsys.platform.settings import Settings


@functools.cache
def _limits() -> tuple[float, int]:
    settings = Settings.from_env()
    return settings.header_timeout_s, settings.max_connections


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Use as `uvicorn.run(..., http="mlsys.platform.protocol:GuardedHttpToolsProtocol")`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s, self.max_connections = _limits()
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            _dropped("connection_cap")
            transport.abort()
            return
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        if self.transport is None:  # refused in connection_made: uvicorn never saw it
            return
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_deadline is None:
            self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_headers_complete()

    def _arm_header_deadline(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            _dropped("header_timeout")
            self.transport.close()


def _dropped(reason: str) -> None:
    from mlsys.platform.metrics import CONNECTIONS_DROPPED

    CONNECTIONS_DROPPED.labels(reason).inc()
