"""Answer ids: made by the server, unguessable, and carrying the moment they were made.

An answer's id keys its impression and every click on it, so a client must never choose it
(a client's `X-Request-ID` once did, and one user re-asking with one id turned 51 impressions
into 2,501 clicks). The id is a ULID's layout in 22 URL-safe characters: 48 bits of
milliseconds since the epoch, then 80 random bits from `secrets` (guessing one live id among a
million in a 600 s feedback window takes about 2^60 tries).

The time is what lets a click be judged when its answer is not in the log yet. Impressions
reach the log's Redis from each worker's spool, so after an outage an answer can exist that no
store has seen: a click on an unknown id minted within the feedback window may be on such an
answer, and is held (202, pending) and judged once the spools have shipped; an id from before
the window, from the future or not of this form cannot be one of ours and is refused at once.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time

LENGTH = 22  # 16 bytes in unpadded base64url
PATTERN = "[A-Za-z0-9_-]{22}"
CLOCK_SKEW_MS = 5_000  # another worker's (or replica's) clock may run this far ahead


def mint(now_ms: int | None = None) -> str:
    """A fresh answer id: 6 bytes of milliseconds, 10 random bytes."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    raw = ms.to_bytes(6, "big") + secrets.token_bytes(10)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def minted_ms(answer_id: str) -> int | None:
    """When `answer_id` was made, or None when it is not an id of this form."""
    if len(answer_id) != LENGTH:
        return None
    try:
        raw = base64.urlsafe_b64decode(answer_id + "==")
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw[:6], "big")


def could_be_in_flight(answer_id: str, window_s: float, now_ms: int | None = None) -> bool:
    """Whether an id the log does not know may still be an answer on its way to the log:
    minted by this form, within the last `window_s` seconds (and not in the future)."""
    made = minted_ms(answer_id)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return made is not None and now - window_s * 1000 <= made <= now + CLOCK_SKEW_MS
