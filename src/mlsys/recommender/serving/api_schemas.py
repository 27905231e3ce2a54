"""What the recommender's routes accept and answer: the bodies as pydantic models (they
validate requests and are what /openapi.json publishes), the path ids, and the operations of
the OpenAPI document. A rejected request gets 422 naming the first offending field
(`platform/validation.py`)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from mlsys.platform import answer_ids
from mlsys.platform.openapi import Operation, Param
from mlsys.platform.validation import INTEGRAL_ITEMS, InvalidRequest, JsonInt, parse_body
from mlsys.recommender.data.values import FLOAT32_MAX
from mlsys.recommender.model import RESTAURANT_FEATURES, USER_FEATURES
from mlsys.recommender.ranking import Query

INT64_MAX = (1 << 63) - 1
MAX_CANDIDATES = 10_000
# Retrieval reads every restaurant of the cells within max_dist, so its radius bounds a
# request's memory: 20 km is twice the kit's largest max_dist, ~31,000 rows (2 MB) at the
# kit's density (docs/funnel.md).
MAX_RETRIEVAL_DIST_M = 20_000.0
# An entity id in a path: up to 18 digits, so always below int64's maximum; the same pattern
# is what /openapi.json publishes.
ID_PATTERN = r"u?([0-9]{1,18})"
_ID = re.compile(ID_PATTERN)


def parse_user_id(raw: str, field: str = "user_id") -> int:
    """`u000123` (the spec's example) and `123` (requests.parquet) are both user 123.

    `fullmatch`, not `match(...$)`: `$` also matches before a trailing newline, which made
    `/recommend/1140%0A` user 1140.
    """
    m = _ID.fullmatch(raw)
    if m is None:
        raise InvalidRequest(field, "must be an integer id like 123 or u000123 (<= 18 digits)")
    return int(m.group(1))


Int64 = Annotated[StrictInt, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]
Float32 = Annotated[float, Field(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class RecommendRequest(BaseModel):
    """The body of POST /recommend/{user_id}: validates requests and is what /openapi.json
    publishes. Strict: a string is not a number, a bool not an id. Without candidates the
    radius is bounded (`MAX_RETRIEVAL_DIST_M`), which the document says with if/then."""

    model_config = ConfigDict(
        **STRICT,
        json_schema_extra={
            "if": {"properties": {"candidate_restaurant_ids": {"type": "null"}}},
            "then": {"properties": {"max_dist": {"maximum": MAX_RETRIEVAL_DIST_M}}},
        },
    )
    candidate_restaurant_ids: Annotated[list[Int64], INTEGRAL_ITEMS] | None = Field(
        default=None, max_length=MAX_CANDIDATES,
        description="the restaurants to rank; absent or null: every restaurant within "
        f"max_dist (then at most {MAX_RETRIEVAL_DIST_M:,.0f} m), retrieved from the geo index",
    )  # fmt: skip
    latitude: float = Field(ge=-90, le=90, description="degrees, where the user is")
    longitude: float = Field(ge=-180, le=180, description="degrees")
    size: JsonInt = Field(
        default=20, ge=1, le=INT64_MAX, description="at most this many restaurants"
    )
    max_dist: float = Field(default=5000.0, ge=0, description="metres; farther ones are dropped")
    sort_dist: StrictBool = Field(default=False, description="by distance, not by score")


class Restaurant(BaseModel):
    id: int
    score: float = Field(description="click probability")
    displacement: float = Field(description="metres from the user")


class RecommendResponse(BaseModel):
    restaurants: list[Restaurant]
    answer_id: str = Field(
        description="this answer's id, made by the server (also X-Answer-ID): what a click "
        "on one of its restaurants names in POST /feedback"
    )


class UserUpdate(BaseModel):
    """PUT /admin/features/users/{user_id}: all 30 features (float32 range)."""

    model_config = STRICT
    features: list[Float32] = Field(min_length=len(USER_FEATURES), max_length=len(USER_FEATURES))


class RestaurantUpdate(BaseModel):
    """PUT /admin/features/restaurants/{restaurant_id}: any of features and location; a new
    restaurant (?create=true) needs all three."""

    model_config = STRICT
    features: list[Float32] | None = Field(
        default=None, min_length=len(RESTAURANT_FEATURES), max_length=len(RESTAURANT_FEATURES)
    )
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)


ANSWER_ID_PATTERN = answer_ids.PATTERN


class Feedback(BaseModel):
    """POST /feedback: user `user_id` clicked `restaurant_id` in the answer `answer_id` (the
    answer_id of that /recommend response, which the server made)."""

    model_config = STRICT
    answer_id: str = Field(pattern=f"^{ANSWER_ID_PATTERN}$")
    user_id: Int64 = Field(description="the user the answer was for")
    restaurant_id: Int64


class FeedbackRecorded(BaseModel):
    recorded: bool = Field(
        description="checked and counted now; false while the log is unreachable (the click "
        "is kept and checked when it is back: status pending)"
    )
    status: str = Field(description="recorded or pending")
    position: int | None = Field(
        default=None, description="1-based position of the restaurant in that answer"
    )
    credited: str | None = Field(
        default=None, description="the arm the click counts for: champion or challenger"
    )


class Updated(BaseModel):
    updated: str = Field(description="the Redis key written")


def parse_query(user_id: int, body: bytes, max_candidates: int = MAX_CANDIDATES) -> Query:
    """Validate a /recommend body; the error names the first offending field.

    `max_candidates` may lower the published limit (Settings.max_candidates), never raise it.
    """
    req = parse_body(RecommendRequest, body)
    if req.candidate_restaurant_ids is None and req.max_dist > MAX_RETRIEVAL_DIST_M:
        raise InvalidRequest(
            "max_dist",
            f"without candidate_restaurant_ids, at most {MAX_RETRIEVAL_DIST_M:,.0f} m "
            "(the restaurants within it are read from the geo index)",
        )
    if (
        req.candidate_restaurant_ids is not None
        and len(req.candidate_restaurant_ids) > max_candidates
    ):
        raise InvalidRequest(
            "candidate_restaurant_ids",
            f"has {len(req.candidate_restaurant_ids)} ids, at most {max_candidates} allowed",
        )
    return Query(
        user_id=user_id,
        candidate_ids=req.candidate_restaurant_ids,
        latitude=req.latitude,
        longitude=req.longitude,
        size=req.size,
        max_dist=req.max_dist,
        sort_dist=req.sort_dist,
    )


_ID_SCHEMA = {"type": "string", "pattern": f"^{ID_PATTERN}$"}
_CREATE = Param("create", "query", {"enum": ["true", "false"]},
                "add the entity if the store does not hold it", required=False)  # fmt: skip
OPERATIONS = [
    Operation(
        "/recommend/{user_id}", "POST",
        "Rank the candidates, or the restaurants near the user, for a user",
        request=RecommendRequest, response=RecommendResponse,
        errors=(404, 408, 413, 422, 503),
        params=[Param("user_id", "path", _ID_SCHEMA, "123 or u000123")],
        headers={"X-Model-Version": "NAME/VERSION of the model that answered (interleaving: "
                                    "champion,challenger)",
                 "X-Arm": "champion, challenger or interleaved",
                 "X-Experiment": "the rollout experiment, when one runs",
                 "X-Answer-ID": "this answer's id, made by the server (also in the body)",
                 "X-Unknown-Candidates": "candidates not in the store, skipped",
                 "X-Candidates": "restaurants considered: the request's list, or those "
                                 "retrieved near the user",
                 "X-Cold-Start": "user: the store does not know this user; ranked with the "
                                 "cold-start profile (the mean user)"},
    ),
    Operation(
        "/feedback", "POST", "Record a click on a restaurant of an earlier answer",
        request=Feedback, response=FeedbackRecorded, status=202,
        errors=(404, 408, 409, 413, 422, 503),
    ),
    Operation(
        "/admin/features/users/{user_id}", "PUT", "Overwrite a user's features",
        request=UserUpdate, response=Updated, errors=(401, 404, 408, 413, 422, 503),
        params=[Param("user_id", "path", _ID_SCHEMA), _CREATE],
    ),
    Operation(
        "/admin/features/restaurants/{restaurant_id}", "PUT",
        "Overwrite a restaurant's features and/or location",
        request=RestaurantUpdate, response=Updated,
        errors=(401, 404, 408, 409, 413, 422, 503),
        params=[Param("restaurant_id", "path", _ID_SCHEMA), _CREATE],
    ),
]  # fmt: skip
