"""POST /tag: one photo in, the two likeliest categories and every pattern tag out.

The image arrives either as a multipart form field (any file part; `file` preferred) or as the
raw request body. Defences, in the order a request meets them:

- more than `max_in_flight` /tag requests already in this worker -> 503 with Retry-After,
  before the body is read: bodies waiting for the decoder are bounded in number, so in memory;
- body over 10 MB -> 413, counted while the body streams in, so a 1 GB upload costs at most
  10 MB of memory (the Content-Length header is checked first when there is one);
- a multipart body with more than `MAX_PARTS` parts, or malformed -> 400 naming `file`;
- not an image (unknown format) -> 415;
- over 40 megapixels, or more decoded memory than the serving budget (64 MiB, estimated
  from the header by mode) -> 413; a side over 20x the other -> 422: all judged from the
  image header before any pixel is decoded (`preprocess.decode_image`), so a decompression
  bomb never allocates its raster;
- truncated or corrupt image -> 422.

Everything CPU-bound, multipart parsing included, runs in a worker thread, at most
`concurrency` at a time per worker process: the event loop stays free for other routes
(before, 100,000 empty multipart parts parsed on the loop stalled /recommend for 28 s), and
at most `concurrency` images are decoded at once, which bounds the worker's peak memory.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
from pydantic import BaseModel, Field
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mlsys.platform import answer_ids
from mlsys.platform.event_log import EventLog
from mlsys.platform.live_model import LiveModel
from mlsys.platform.openapi import Operation
from mlsys.platform.server import Component
from mlsys.platform.settings import Settings, spool_dir_for
from mlsys.platform.validation import InvalidRequest, error_response, invalid
from mlsys.tagger.data.photo_stats import tag_record
from mlsys.tagger.inference import TaggerModel, probe
from mlsys.tagger.preprocess import (
    CorruptImageError,
    ImageShapeError,
    ImageTooLargeError,
    NotAnImageError,
    decode_image,
)

MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
MAX_PARTS = 8  # a photo upload has one file part, perhaps a few text fields
MIN_DECODE_SIDE = 1024
# What one image may take to decode in a worker, which already holds ~470-500 MiB (torch,
# both models, ONNX Runtime): 64 MiB keeps its peak under 600 MB with a margin
# (perf_test/hostile_bench.py; at 96 MiB a 12 MP PNG reached 572 MiB, 599.9 MB). An 8 MP RGB
# PNG fits; a 40 MP JPEG fits at its reduced scale. Offline tools keep
# preprocess.MAX_DECODED_BYTES (192 MiB): they decode one image at a time.
SERVING_DECODE_BYTES = 64 * 1024 * 1024


class _BodyTooLarge(Exception):
    pass


async def read_limited(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """The whole body, or `_BodyTooLarge` as soon as it passes `limit` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        parts.append(chunk)
    return b"".join(parts)


class _Parts:
    """python-multipart callbacks that keep each part's headers and data, up to `limit` parts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[tuple[dict[bytes, bytes], list[bytes]]] = []
        self._field = b""
        self._value = b""

    def begin(self) -> None:
        if len(self.parts) >= self.limit:
            raise InvalidRequest("file", f"multipart body has more than {self.limit} parts", 400)
        self.parts.append(({}, []))

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self.parts[-1][0][self._field.lower()] = self._value
        self._field = self._value = b""

    def data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1][1].append(data[start:end])


def image_from_multipart(content_type: str, body: bytes, max_parts: int = MAX_PARTS) -> bytes:
    """The file part of a multipart/form-data body (field `file` first, else the first file),
    or InvalidRequest naming `file`. Linear in the body, and stops at the part past the cap."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequest("file", "multipart content-type has no boundary", 400)
    parts = _Parts(max_parts)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": parts.begin,
            "on_header_field": parts.header_field,
            "on_header_value": parts.header_value,
            "on_header_end": parts.header_end,
            "on_part_data": parts.data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidRequest("file", f"malformed multipart body ({exc})", 400) from None
    fallback: bytes | None = None
    for headers, chunks in parts.parts:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        name = disposition.get(b"name")
        if name == b"file":
            return b"".join(chunks)
        if fallback is None and (b"filename" in disposition or name in (b"image", b"photo")):
            fallback = b"".join(chunks)
    if fallback is None:
        message = "multipart body has no file part (send it as field 'file')"
        raise InvalidRequest("file", message, 400)
    return fallback


class TagEndpoint:
    """Holds the loaded model; one instance per server worker."""

    def __init__(
        self,
        live: LiveModel[TaggerModel],
        max_body_bytes: int = MAX_BODY_BYTES,
        max_pixels: int = MAX_PIXELS,
        *,
        concurrency: int = 1,
        max_in_flight: int = 8,
        log: TagLog | None = None,
    ) -> None:
        self.live = live
        self.log = log
        self.max_body = max_body_bytes
        self.max_pixels = max_pixels
        self.concurrency = concurrency
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._limiter: anyio.CapacityLimiter | None = None  # made on the worker's event loop

    def _tag(
        self, model: TaggerModel, content_type: str, body: bytes, label: str, request_id: str,
        correlation_id: str,
    ) -> dict[str, Any]:  # fmt: skip
        data = body
        if content_type.lower().startswith("multipart/"):
            data = image_from_multipart(content_type, body)
        if not data:
            raise InvalidRequest(
                "body", "send an image as the request body or as multipart field 'file'", 400
            )
        # A JPEG may decode at a reduced scale only while both sides stay >= min_side: at
        # least twice the model's input (enough for its resize) and 1,024 px, so any image
        # whose short side is under 2,048 px, the training images included, decodes exactly
        # as training and `mlsys predict` decode it; a 40 MP photo decodes at 1/4 scale.
        min_side = max(MIN_DECODE_SIDE, 2 * model.config.size)
        img = decode_image(
            data, self.max_pixels, max_decoded_bytes=SERVING_DECODE_BYTES, min_side=min_side
        )
        answer = model.describe(model.predict_images([img]))
        if self.log is not None:
            self.log.write(data, img, answer, label, request_id, correlation_id)
        return answer

    async def handle(self, request: Request) -> Response:
        if self.in_flight >= self.max_in_flight:
            return error_response(
                503,
                "busy",
                "body",
                f"{self.max_in_flight} images are already being tagged here; retry shortly",
                headers={"retry-after": "1"},
            )
        self.in_flight += 1
        try:
            return await self._handle(request)
        finally:
            self.in_flight -= 1

    async def _handle(self, request: Request) -> Response:
        try:
            body = await read_limited(
                request.stream(), request.headers.get("content-length"), self.max_body
            )
        except _BodyTooLarge:
            message = f"request body exceeds {self.max_body} bytes"
            return error_response(413, "payload_too_large", "body", message)
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.concurrency)
        content_type = request.headers.get("content-type", "")
        served = self.live.current  # read once: one request, one model version
        try:
            # The answer's id is the server's (a seller's label will name it); the client's
            # X-Request-ID only correlates.
            answer_id = answer_ids.mint()
            correlation_id = request.scope.get("state", {}).get("request_id", "")
            result = await anyio.to_thread.run_sync(
                self._tag, served.model, content_type, body, served.label, answer_id,
                correlation_id, limiter=self._limiter,
            )  # fmt: skip
        except InvalidRequest as exc:
            return invalid(exc)
        except NotAnImageError as exc:
            return error_response(415, "unsupported_media_type", "image", str(exc))
        except ImageTooLargeError as exc:
            return error_response(413, "image_too_large", "image", str(exc))
        except ImageShapeError as exc:
            return error_response(422, "unsupported_dimensions", "image", str(exc))
        except CorruptImageError as exc:
            return error_response(422, "corrupt_image", "image", str(exc))
        headers = {"x-model-version": served.label, "x-answer-id": answer_id}
        return JSONResponse({**result, "answer_id": answer_id}, headers=headers)


class TagLog:
    """Each answer's `photo_stats.tag_record` (the drift monitor reads it) into this worker's
    spool, shipped to the log's Redis off the request path (`platform/event_log.py`). Only a
    full spool costs the record, never the answer; it is counted."""

    def __init__(self, settings: Settings, url: str) -> None:
        # Read here, when the worker builds its app: prometheus_client must not be imported
        # before `mlsys serve` has set its multiprocess folder (platform/metrics.py).
        from mlsys.platform.metrics import LOG_BACKLOG, LOG_RECORDS, TAG_RECORDS
        from mlsys.platform.redis_client import connect_node

        self.events = EventLog(
            connect_node(url, timeout_s=settings.redis_timeout_s), settings.log_stream_mb,
            settings.feedback_window_s, spool_dir_for(settings), name="tagger",
            spool_max_bytes=settings.spool_max_mb << 20,
            on_outcome=lambda outcome, n: LOG_RECORDS.labels("tagger", outcome).inc(n),
            on_backlog=LOG_BACKLOG.labels("tagger").set,
        )  # fmt: skip
        self.logged, self.failed = TAG_RECORDS.labels("logged"), TAG_RECORDS.labels("failed")

    def write(
        self, data: bytes, img: Any, answer: dict[str, Any], label: str, answer_id: str,
        correlation_id: str,
    ) -> None:  # fmt: skip
        record = {
            "request_id": answer_id, "correlation_id": correlation_id,
            "ts_ms": int(time.time() * 1000), **tag_record(data, img, answer, label),
        }  # fmt: skip
        (self.logged if self.events.tag(record) else self.failed).inc()

    def close(self) -> None:
        self.events.close()


def routes(live: LiveModel[TaggerModel], log: TagLog | None = None) -> list[BaseRoute]:
    """The tagger's routes, for any Starlette app (the platform server, tests)."""
    return [Route("/tag", TagEndpoint(live, log=log).handle, methods=["POST"])]


def live_tagger(source: str, refresh_s: float = 5.0) -> LiveModel[TaggerModel]:
    """The tagger a worker serves: a folder, or a registry alias it follows."""
    return LiveModel(
        source,
        lambda folder: TaggerModel(folder, threads=1),
        kind="garment-tagger",
        probe=probe,
        refresh_s=refresh_s,
        label_of_folder=lambda m: m.version,
    )


def component(settings: Settings) -> Component:
    """The platform server's hook (`Settings.tagger_model_dir`): POST /tag with its own 10 MB
    body limit (the server-wide default is sized for JSON)."""
    assert settings.tagger_model_dir is not None
    live = live_tagger(settings.tagger_model_dir, settings.model_refresh_s)
    live.start()
    # Logged where the recommender logs: the log's Redis, else the feature store's when a
    # recommender is served (a tagger alone needs no Redis, so it logs only when given one).
    url = settings.log_redis_url or (settings.redis_url if settings.model_dir else None)
    log = None
    if settings.log_impressions and url is not None:
        log = TagLog(settings, url)

    def close() -> None:
        live.stop()
        if log is not None:
            log.close()

    return Component(
        name="tagger",
        routes=routes(live, log),
        checks={"model": lambda: None},  # live_tagger raised if it could not load
        max_body_bytes=MAX_BODY_BYTES,
        close=close,
        serving=lambda: live.current.label,
        operations=[OPERATION],
    )


class CategoryScore(BaseModel):
    category: str
    probability: float


class TagScore(BaseModel):
    probability: float
    present: bool = Field(description="probability >= threshold")
    threshold: float


class Colour(BaseModel):
    color1: str
    probability: float


class TagResponse(BaseModel):
    categories: list[CategoryScore] = Field(description="the two likeliest, likeliest first")
    tags: dict[str, TagScore] = Field(description="polka dot, floral, checker")
    colour: Colour
    model_version: str
    answer_id: str = Field(
        description="this answer's id, made by the server (also X-Answer-ID): what a seller's "
        "label for the photo will name"
    )


_BINARY = {"type": "string", "format": "binary"}
OPERATION = Operation(
    "/tag", "POST", "Categories and pattern tags of one garment photo",
    request_media={
        **{media: _BINARY for media in ("image/jpeg", "image/png", "image/webp")},
        "multipart/form-data": {"type": "object", "properties": {"file": _BINARY},
                                "required": ["file"]},
    },
    response=TagResponse, errors=(400, 408, 413, 415, 422, 503),
    headers={"X-Model-Version": "NAME/VERSION of the model that answered",
             "X-Answer-ID": "this answer's id, made by the server"},
)  # fmt: skip
