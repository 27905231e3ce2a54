"""Answer ids: the server's, unguessable, and dated (platform/answer_ids.py)."""

from __future__ import annotations

import re

from mlsys.platform import answer_ids


def test_ids_are_unique_url_safe_and_carry_their_minute() -> None:
    made = {answer_ids.mint(now_ms=1_800_000_000_000) for _ in range(10_000)}
    assert len(made) == 10_000  # 80 random bits each
    assert all(re.fullmatch(answer_ids.PATTERN, i) for i in made)
    assert {answer_ids.minted_ms(i) for i in made} == {1_800_000_000_000}


def test_only_ids_minted_within_the_window_could_still_be_on_their_way() -> None:
    now = 1_800_000_000_000
    fresh = answer_ids.mint(now_ms=now - 30_000)
    stale = answer_ids.mint(now_ms=now - 700_000)
    future = answer_ids.mint(now_ms=now + 60_000)
    assert answer_ids.could_be_in_flight(fresh, 600, now_ms=now)
    assert not answer_ids.could_be_in_flight(stale, 600, now_ms=now)
    assert not answer_ids.could_be_in_flight(future, 600, now_ms=now)
    for forged in ("A" * 22, "feedback-test-1", "", "!" * 22):
        assert not answer_ids.could_be_in_flight(forged, 600, now_ms=now), forged
