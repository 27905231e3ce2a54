"""uvicorn's httptools protocol with the guards it lacks: a header deadline, a connection cap,
a header-size cap, and JSON for the errors it answers itself.

uvicorn times out idle keep-alive connections, but not a connection that never finishes its
request headers: it holds one file descriptor until the client leaves. Tens of thousands of
such connections exhausted both workers' descriptors (issue 14), after which even /healthz
was refused. So each worker:

- closes a connection whose request line and headers are not complete within
  `Settings.header_timeout_s` of its first byte (or of the connection, for the first request);
- closes a new connection at once when it already holds `Settings.max_connections`, so the
  descriptors run out on the attacker's side, not ours.

- answers 431 (and closes) once a request's line and headers pass `Settings.max_header_bytes`
  (64 KiB) before they end: httptools keeps a header value whole until it ends, so without it
  one 64 MB header cost a worker 122 MB;
- answers the parser's own rejections (a malformed request line, a bad header) with the JSON
  error every other 4xx has, not uvicorn's plain text.

uvicorn's own `limit_concurrency` is different: it still accepts the connection and answers 503
once the headers arrive, so a client that sends none is not affected by it. What uvicorn
answers before it reaches this class (nothing here) stays its own.

The request body has its own deadline, enforced where the body is read (`server.RequestContext`).
Dropped connections are counted in `mlsys_connections_dropped_total{reason}`.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mlsys.platform.settings import Settings


@functools.cache
def _limits() -> tuple[float, int, int]:
    settings = Settings.from_env()
    return settings.header_timeout_s, settings.max_connections, settings.max_header_bytes


def _json_response(status: int, reason: bytes, body: dict[str, str]) -> bytes:
    payload = json.dumps(body).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s") % (status, reason, len(payload), payload)  # fmt: skip


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Use as `uvicorn.run(..., http="mlsys.platform.protocol:GuardedHttpToolsProtocol")`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s, self.max_connections, self.max_header_bytes = _limits()
        self._header_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # of the current request, until its headers are complete
        self._head_done = True
        self._rejected = False

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        super().data_received(data)
        if not self._head_done and not self._rejected:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                message = f"the request line and headers pass {self.max_header_bytes} bytes"
                self._reject(431, b"Request Header Fields Too Large", "headers_too_large", message)

    def send_400_response(self, msg: str) -> None:
        """The parser's rejections, as JSON (uvicorn's own sends plain text)."""
        self._reject(400, b"Bad Request", "bad_request", f"not a valid HTTP request: {msg}")

    def _reject(self, status: int, reason: bytes, error: str, message: str) -> None:
        self._rejected = True
        _dropped(error)
        if not self.transport.is_closing():
            body = {"error": error, "field": "request", "message": message}
            self.transport.write(_json_response(status, reason, body))
            self.transport.close()

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
        self._head_bytes, self._head_done = 0, False
        if self._header_deadline is None:
            self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._head_done = True
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
