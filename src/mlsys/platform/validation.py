"""Request bodies in, field-named errors out: the one JSON path every route parses through.

A JSON body that is valid JSON can still break a handler that trusts it: a 400-digit integer
overflows `float()`, and nesting a few hundred levels deep exhausts the interpreter's stack.
Both used to surface as 500s with a traceback in the log. Here each becomes a 422 naming the
field (or `body`), and the guards cost nothing on ordinary requests:

- depth: `json.loads` is recursive, so a body is first measured by its bracket count (a C-level
  scan); only a body with more brackets than `MAX_DEPTH` is walked to find its real depth,
  and a body nested past the interpreter's limit fails inside `json.loads` as RecursionError,
  which is caught;
- number size: integers of more than 4,300 digits are refused by Python's own parser
  (`sys.int_max_str_digits`), which bounds the CPU a body can cost; `number()` compares a
  value with its bounds before converting it, so a huge integer is "out of range", not an
  OverflowError. Non-finite floats (`1e400` parses as inf, `NaN` is accepted by `json`) are
  refused there too.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import JSONResponse

MAX_DEPTH = 32


class InvalidRequest(Exception):
    """A request field the handler refuses; `field` is what the 4xx body names."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def error_response(
    status: int, error: str, field: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The error body every route answers with: what went wrong, where, and how to fix it."""
    body = {"error": error, "field": field, "message": message}
    return JSONResponse(body, status_code=status, headers=headers)


def invalid(exc: InvalidRequest) -> JSONResponse:
    return error_response(exc.status, "invalid_request", exc.field, exc.message)


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than `limit`; iterative, stops at the first excess."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def parse_json_object(body: bytes, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The body as a JSON object, or InvalidRequest naming `body`."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise InvalidRequest("body", f"JSON nests deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("body", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("body", "must be a JSON object")
    if body.count(b"[") + body.count(b"{") > max_depth and _depth_exceeds(data, max_depth):
        raise InvalidRequest("body", f"JSON nests deeper than {max_depth} levels")
    return data


def number(
    data: dict[str, Any],
    name: str,
    default: float | None,
    low: float = -math.inf,
    high: float = math.inf,
) -> float:
    """A finite number field within [low, high]; the error names the field."""
    value = data.get(name, default)
    if value is None:
        raise InvalidRequest(name, "is required")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(name, "must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(name, "must be a finite number")
    # Compared before float(): Python compares a huge int with a float exactly, no overflow.
    if not low <= value <= high or abs(value) > 1e300:
        raise InvalidRequest(name, f"must be within [{low:g}, {high:g}]")
    return float(value)
