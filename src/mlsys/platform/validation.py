"""Request bodies in, field-named errors out: every JSON body is parsed by a pydantic model.

A route declares its body as a pydantic model; `parse_body` validates the raw bytes with it
(pydantic's Rust JSON parser: 1.3x faster than the `json.loads` plus hand checks it
replaced, for /recommend's ~1,000-id bodies, docs/registry.md), and the same model is what
`/openapi.json` publishes (`openapi.py`), so the document cannot drift from what is
enforced.

What made valid-looking JSON a 500 before (issue 14) is a 422 naming the field here: a
400-digit number in a float field is not a finite number, `1e400` neither (non-finite
floats are refused with `allow_inf_nan=False`), and nesting past the parser's recursion limit
(about 200 levels) is invalid JSON, named `body`, instead of a RecursionError.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import BaseModel, BeforeValidator, StrictInt, ValidationError
from starlette.responses import JSONResponse

M = TypeVar("M", bound=BaseModel)


def _integral(value: object) -> object:
    return int(value) if type(value) is float and value.is_integer() else value


def _integrals(values: object) -> object:
    # One C-level scan of the types; the per-item conversion runs only when a float is there.
    if isinstance(values, list) and float in set(map(type, values)):
        return [_integral(v) for v in values]
    return values


# JSON Schema's integer: 3 and 3.0 alike (schemathesis sends both); a bool, a string or 2.5
# is not one. Models are strict otherwise, so these are the only conversions.
JsonInt = Annotated[StrictInt, BeforeValidator(_integral)]
# For a list of (possibly bounded) StrictInts: `Annotated[list[X], INTEGRAL_ITEMS]`.
INTEGRAL_ITEMS = BeforeValidator(_integrals)


class ErrorBody(BaseModel):
    """Every error answer: what went wrong (`error`), where (`field`), how to fix it."""

    error: str
    field: str | None = None
    message: str


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
    """The error body every route answers with (`ErrorBody`)."""
    body = {"error": error, "field": field, "message": message}
    return JSONResponse(body, status_code=status, headers=headers)


def invalid(exc: InvalidRequest) -> JSONResponse:
    return error_response(exc.status, "invalid_request", exc.field, exc.message)


def parse_body(model: type[M], body: bytes) -> M:
    """The body as `model`, or InvalidRequest naming the first offending field (`body` when
    the JSON itself is broken or not an object)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = first["loc"]
        field = str(loc[0]) if loc else "body"
        message = first["msg"]
        if first["type"] == "missing":
            message = "is required"
        raise InvalidRequest(field, message) from None
