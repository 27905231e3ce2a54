"""argparse types that refuse nonsense with one line naming the option's rule: a NaN, an
infinity, a negative count, a share above 1, an id no API could serve. argparse turns a
ValueError into `mlsys VERB NOUN: error: argument --x: invalid <name> value: ...` and exit 2,
before anything runs."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

MAX_ENTITY_ID = 10**18 - 1  # the API's ids: 1 to 18 digits (api_schemas.ID_PATTERN)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number")
    return value


def finite(text: str) -> float:
    return _number(text)


def non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 0")
    return value


def positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be > 0")
    return value


def share(text: str) -> float:
    """A fraction in [0, 1]."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be between 0 and 1")
    return value


def percent(text: str) -> float:
    """A share of traffic in (0, 100]."""
    value = _number(text)
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: must be in (0, 100]")
    return value


def count(minimum: int = 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: must be >= {minimum}")
        return value

    parse.__name__ = "count"
    return parse


def entity_id(text: str) -> int:
    """A user or restaurant id the API can serve: 0 to 10^18 - 1."""
    value = count(0)(text)
    if value > MAX_ENTITY_ID:
        raise argparse.ArgumentTypeError(f"{text!r}: ids have at most 18 digits")
    return value
