"""/openapi.json: the OpenAPI 3.1 document of the routes a server runs, made from the models
that validate them.

Each `Component` declares its `Operation`s: path, method, the pydantic model its handler
parses the body with (`validation.parse_body`), the model of its answer, its error statuses.
The document is built from those same models (their JSON Schema, which OpenAPI 3.1 uses as
is), so what it says and what the server enforces cannot drift apart; a test runs
schemathesis against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from mlsys.files import JsonIn
from mlsys.platform.validation import ErrorBody

REF = "#/components/schemas/{model}"
STATUS_TEXT = {
    202: "Accepted",
    400: "Bad request (names the field)",
    401: "Missing or wrong admin token",
    404: "Not found",
    408: "The request body did not arrive in time",
    409: "Conflicts with the stored state (an entity created from only some parts, a click "
    "recorded twice)",
    413: "Body or image too large",
    415: "Not an image",
    422: "Invalid field (names it)",
    503: "A dependency is unavailable, or the server is busy; retry",
}


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "path" or "query"
    schema: JsonIn
    description: str = ""
    required: bool = True


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    summary: str
    request: type[BaseModel] | None = None
    # Raw (non-JSON) bodies: media type -> schema (e.g. the tagger's image upload)
    request_media: dict[str, JsonIn] = field(default_factory=dict)
    response: type[BaseModel] | None = None
    response_media: str = "application/json"
    errors: Sequence[int] = ()  # answered with ErrorBody, unless `other` says otherwise
    other: dict[int, type[BaseModel]] = field(default_factory=dict)  # status -> its body
    params: Sequence[Param] = ()
    headers: dict[str, str] = field(default_factory=dict)  # response header -> description
    status: int = 200  # of the success answer (e.g. 202 Accepted)


def document(title: str, version: str, operations: Sequence[Operation]) -> JsonIn:
    models = {m for op in operations for m in (op.request, op.response) if m is not None}
    models.update(m for op in operations for m in op.other.values())
    models.add(ErrorBody)
    keyed = sorted(models, key=lambda m: m.__name__)
    refs, schemas = models_json_schema([(m, "validation") for m in keyed], ref_template=REF)
    ref = {m: refs[(m, "validation")] for m in keyed}
    paths: dict[str, JsonIn] = {}
    for op in operations:
        responses: JsonIn = {}
        ok: JsonIn = {"description": STATUS_TEXT.get(op.status, "OK")}
        if op.response is not None:
            ok["content"] = {op.response_media: {"schema": ref[op.response]}}
        elif op.response_media != "application/json":
            ok["content"] = {op.response_media: {"schema": {"type": "string"}}}
        if op.headers:
            ok["headers"] = {h: {"description": d, "schema": {"type": "string"}}
                             for h, d in op.headers.items()}  # fmt: skip
        responses[str(op.status)] = ok
        for status in sorted({*op.errors, *op.other}):
            responses[str(status)] = {
                "description": STATUS_TEXT.get(status, "Error"),
                "content": {"application/json": {"schema": ref[op.other.get(status, ErrorBody)]}},
            }
        entry: JsonIn = {"summary": op.summary, "responses": responses}
        if op.params:
            entry["parameters"] = [
                {"name": p.name, "in": p.where, "required": p.required, "schema": p.schema,
                 "description": p.description}
                for p in op.params
            ]  # fmt: skip
        if op.request is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref[op.request]}},
            }
        elif op.request_media:
            entry["requestBody"] = {
                "required": True,
                "content": {media: {"schema": s} for media, s in op.request_media.items()},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": schemas.get("$defs", {})},
    }
