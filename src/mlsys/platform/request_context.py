"""The server's pure-ASGI middleware: every request gets an id (X-Request-ID, echoed back),
a body limit enforced before buffering (413), a body deadline (408), a latency sample by route
template and status, and one JSON access-log line (499 when the client left before the
answer). See `server.py` for where it sits."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlsys.platform.settings import Settings

log = logging.getLogger("mlsys.server")
access = logging.getLogger("mlsys.access")


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


CLIENT_CLOSED = 499  # nginx's status for "the client went away before the response"


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestContext:
    """Request id, body limit, latency metric and access log for every request (pure ASGI:
    Starlette's BaseHTTPMiddleware would add a task and a queue per request)."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        log_requests: bool,
        body_limits: tuple[tuple[str, int], ...] = (),
        body_timeout_s: float = Settings.body_timeout_s,
    ) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.body_limits = body_limits  # (path prefix, limit), checked in order
        self.log_requests = log_requests

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.body_limits:
            if path.startswith(prefix):
                return limit
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from mlsys.platform.metrics import REQUEST_LATENCY

        started = time.perf_counter()
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        fields: dict[str, Any] = {}
        scope.setdefault("state", {})
        scope["state"]["request_id"] = request_id
        scope["state"]["log"] = fields
        status = 500
        started_response = False
        max_body = self.limit_for(scope["path"])

        answered: float | None = None  # when the last body byte went out

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started_response, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = time.perf_counter()

        received = 0
        body_done = False
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s

        async def receive_limited() -> Message:
            """The body in bounded size and time: a slow or endless body gets 408 by the
            deadline instead of holding the request until the client gives up."""
            nonlocal received, body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    raise BodyTooLarge
                body_done = not message.get("more_body", False)
            return message

        try:
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > max_body:
                raise BodyTooLarge
            await self.app(scope, receive_limited, send_wrapper)
        except BodyTooLarge:
            if not started_response:
                body = {
                    "error": "payload_too_large",
                    "field": "body",
                    "message": f"request body exceeds {max_body} bytes",
                }
                await JSONResponse(body, status_code=413)(scope, receive, send_wrapper)
        except BodyTimeout:
            if not started_response:
                body = {
                    "error": "request_timeout",
                    "field": "body",
                    "message": f"request body not complete within {self.body_timeout_s:g} s",
                }
                close = {"connection": "close"}
                response = JSONResponse(body, status_code=408, headers=close)
                await response(scope, receive, send_wrapper)
        except ClientDisconnect:
            status = CLIENT_CLOSED  # nobody to answer; logged, not an error of ours
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": request_id}})
            if not started_response:
                body = {"error": "internal_error", "request_id": request_id}
                await JSONResponse(body, status_code=500)(scope, receive, send_wrapper)
        finally:
            # Up to the answer, not the background work after it (shadow scoring).
            elapsed = (answered or time.perf_counter()) - started
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            REQUEST_LATENCY.labels(endpoint, scope["method"], str(status)).observe(elapsed)
            if self.log_requests:
                access.info(
                    "request",
                    extra={
                        "fields": {
                            "request_id": request_id,
                            "method": scope["method"],
                            "path": scope["path"],
                            "endpoint": endpoint,
                            "status": status,
                            "duration_ms": round(elapsed * 1e3, 3),
                            **fields,
                        }
                    },
                )
