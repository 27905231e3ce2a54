"""POST /tag: one photo in, the two likeliest categories and every pattern tag out.

The image arrives either as a multipart form field (any file part; `file` preferred) or as the
raw request body. Defences, in the order a request meets them:

- body over 10 MB -> 413, counted while the body streams in, so a 1 GB upload costs at most
  10 MB of memory (the Content-Length header is checked first when there is one);
- not an image (unknown format) -> 415;
- over 40 megapixels -> 413, judged from the image header before any pixel is decoded, so a
  decompression bomb (a tiny PNG claiming 50,000 x 50,000) never allocates its raster;
- truncated or corrupt image -> 422.

Decoding and inference run in the thread pool: ONNX Runtime releases the GIL and the event
loop stays free to read the next request.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mlsys.tagger.inference import TaggerModel
from mlsys.tagger.preprocess import (
    CorruptImageError,
    ImageTooLargeError,
    NotAnImageError,
    decode_image,
)

MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000


class _BodyTooLarge(Exception):
    pass


def _error(status: int, error: str, message: str, field: str = "image") -> JSONResponse:
    return JSONResponse({"error": error, "field": field, "message": message}, status_code=status)


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


def image_from_multipart(content_type: str, body: bytes) -> bytes | None:
    """The file part of a multipart/form-data body (field `file` first, else the first file).

    The stdlib MIME parser is enough here: the body is already bounded at 10 MB.
    """
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not msg.is_multipart():
        return None
    fallback: bytes | None = None
    for part in msg.iter_parts():
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        name = part.get_param("name", header="content-disposition")
        if name == "file":
            return payload
        if fallback is None and (part.get_filename() is not None or name in ("image", "photo")):
            fallback = payload
    return fallback


class TagEndpoint:
    """Holds the loaded model; one instance per server worker."""

    def __init__(
        self, model: TaggerModel, max_body_bytes: int = MAX_BODY_BYTES, max_pixels: int = MAX_PIXELS
    ) -> None:
        self.model = model
        self.max_body = max_body_bytes
        self.max_pixels = max_pixels

    def _tag(self, data: bytes) -> dict[str, Any]:
        img = decode_image(data, max_pixels=self.max_pixels)
        probs = self.model.predict_images([img])
        return self.model.describe(probs)

    async def handle(self, request: Request) -> Response:
        try:
            body = await read_limited(
                request.stream(), request.headers.get("content-length"), self.max_body
            )
        except _BodyTooLarge:
            return _error(
                413, "payload_too_large", f"request body exceeds {self.max_body} bytes", "body"
            )
        content_type = request.headers.get("content-type", "")
        data: bytes | None = body
        if content_type.lower().startswith("multipart/"):
            data = image_from_multipart(content_type, body)
            if data is None:
                return _error(
                    400,
                    "missing_file",
                    "multipart body has no file part (send it as field 'file')",
                    "file",
                )
        if not data:
            return _error(
                400,
                "empty_body",
                "send an image as the request body or as multipart field 'file'",
                "body",
            )
        try:
            result = await run_in_threadpool(self._tag, data)
        except NotAnImageError as exc:
            return _error(415, "unsupported_media_type", str(exc))
        except ImageTooLargeError as exc:
            return _error(413, "image_too_large", str(exc))
        except CorruptImageError as exc:
            return _error(422, "corrupt_image", str(exc))
        return JSONResponse(result)


def routes(model: TaggerModel) -> list[BaseRoute]:
    """The tagger's routes, for any Starlette app (the platform server, tests)."""
    return [Route("/tag", TagEndpoint(model).handle, methods=["POST"])]


def component(settings: Any) -> Any:
    """The platform server's hook (`Settings.tagger_model_dir`): POST /tag with its own 10 MB
    body limit (the server-wide default is sized for JSON)."""
    from mlsys.platform.server import Component

    model = TaggerModel(settings.tagger_model_dir, threads=1)

    def model_loaded() -> str | None:
        return None if model.session is not None else "tagger model not loaded"

    return Component(
        name="tagger",
        routes=routes(model),
        checks={"model": model_loaded},
        max_body_bytes=MAX_BODY_BYTES,
    )
