"""The geo index of the online store: which grid cells can hold a restaurant within `max_dist`.

Retrieval (a request with no candidate list) reads the restaurants near the user from Redis.
Each namespace keeps the catalogue twice (`online_store.py`): one key per restaurant, for the
callers that send ids, and one key per grid cell holding every restaurant of that cell as
packed rows (`CELL_DTYPE`: id, features, location), for retrieval. A request reads the cells
of its covering in the same round trip as the user, then keeps the rows within `max_dist`
exactly (`ranking.reachable`).

The grid: bands of latitude `HEIGHT_DEG` tall (360 / 2^15 degrees, ~1.22 km), each cut into
2^(15 - m) cells of longitude, m the smallest with cells at least about as wide as tall
(`lon_shift`): square-ish cells of ~1.2 x 1.2-1.3 km at Bangkok, never thinner near the poles,
the band at a pole one cell. The covering is computed, not looked up: on our sphere
(`geo.EARTH_RADIUS_M`) a point at latitude p lies within d of the user (latitude q) when its
longitude is within arccos((cos(d/R) - sin p sin q) / (cos p cos q)) of the user's, widest at
p* = arcsin(sin q / cos(d/R)); so each band of the cap is read across the widest longitude
range any of its latitudes needs, and no other cell. Exact up to rounding (1 m of slack), for
any point on Earth, in ~0.2 ms with no state; tests compare it with brute force.

Why this grid and not Redis's GEOSEARCH or H3 cells (figures in docs/funnel.md, from
`benchmarks/funnel.py`): GEOSEARCH answers ids, so a request needs a second round trip for
~4,700 rows by key (14.8 ms median against 1.4 ms for cells at 100k restaurants, same run).
H3 cells as keys would read the same ~135 values, but finding which cells cover a circle
costs ~1.2 ms per request in h3's Python API (`grid_disk` and a centre per cell; 2 ms for
`h3shape_to_cells_experimental` on a polygon) against 0.24 ms here, and caching the disks
needs ~20 kB per (cell, distance) while requests spread over thousands of them.
"""

from __future__ import annotations

import math

import numpy as np

from mlsys.recommender.geo import EARTH_RADIUS_M

BITS = 15
HEIGHT_DEG = 360.0 / (1 << BITS)  # ~0.011 degrees, ~1.22 km
BANDS = int(180.0 / HEIGHT_DEG)  # 16,384 bands of latitude
TAG_BITS = 5  # a hash tag spans 32 x 32 cells (~39 km): a request's cells lie in 1-4 slots
SLACK_M = 1.0

CELL_DTYPE = np.dtype(
    [("id", "<i8"), ("features", "<f4", (10,)), ("latitude", "<f8"), ("longitude", "<f8")]
)


def band_of(latitude: float) -> int:
    return min(BANDS - 1, max(0, math.floor((latitude + 90.0) / HEIGHT_DEG)))


def lon_shift(band: int) -> int:
    """m: the band's cells are 2^m x `HEIGHT_DEG` of longitude wide, the smallest m that
    makes them at least 0.7x as wide (in metres) as tall at the band's poleward edge: cells
    stay square-ish (0.7-1.4x) at every latitude, and a band touching a pole is one cell."""
    south = -90.0 + band * HEIGHT_DEG
    poleward = max(abs(south), abs(south + HEIGHT_DEG))
    cos = math.cos(math.radians(poleward))
    if cos <= 1.0 / (1 << BITS):
        return BITS
    return min(BITS, max(0, math.ceil(math.log2(0.7 / cos))))


def cell_of(latitude: float, longitude: float) -> tuple[int, int]:
    """(band, column) of the cell holding the point."""
    band = band_of(latitude)
    m = lon_shift(band)
    column = math.floor(((longitude + 180.0) % 360.0) / (HEIGHT_DEG * (1 << m)))
    return band, min(column, (1 << (BITS - m)) - 1)


def cell_suffix(band: int, column: int) -> str:
    """`{g<band/32>.<column/32>}:<band>.<column>`: a cell key after `<ns>:c:`. The hash tag is
    the 32 x 32 block (columns counted at the finest width), so one request's cells lie in a
    few slots of a cluster: a few MGETs, not one per cell."""
    fine = column << lon_shift(band)
    return f"{{g{band >> TAG_BITS}.{fine >> TAG_BITS}}}:{band}.{column}"


def covering(latitude: float, longitude: float, max_dist: float) -> list[tuple[int, int]]:
    """Every cell that may hold a point within `max_dist` metres of the point (see above)."""
    return [(band, j) for band, _, columns in _spans(latitude, longitude, max_dist)
            for j in columns]  # fmt: skip


def covering_suffixes(latitude: float, longitude: float, max_dist: float) -> list[str]:
    """`cell_suffix` of each cell of `covering`, made a band at a time (the request path)."""
    out: list[str] = []
    for band, m, columns in _spans(latitude, longitude, max_dist):
        prefix = f"{{g{band >> TAG_BITS}."
        row = f"}}:{band}."
        out += [f"{prefix}{(j << m) >> TAG_BITS}{row}{j}" for j in columns]
    return out


def _spans(latitude: float, longitude: float, max_dist: float) -> list[tuple[int, int, range]]:
    """(band, m, its columns in reach) for each band the cap touches."""
    delta = min(math.pi, (max_dist + SLACK_M) / EARTH_RADIUS_M)  # the cap's angular radius
    q = math.radians(latitude)
    south = band_of(max(-90.0, latitude - math.degrees(delta)))
    north = band_of(min(90.0, latitude + math.degrees(delta)))
    sin_q, cos_q, cos_d = math.sin(q), math.cos(q), math.cos(delta)
    widest = math.asin(max(-1.0, min(1.0, sin_q / cos_d))) if cos_d > 0 else 0.0
    lon = (longitude + 180.0) % 360.0
    spans: list[tuple[int, int, range]] = []
    for band in range(south, north + 1):
        lo = math.radians(-90.0 + band * HEIGHT_DEG)
        p = min(max(widest, lo), lo + math.radians(HEIGHT_DEG))
        m = lon_shift(band)
        n = 1 << (BITS - m)
        denominator = math.cos(p) * cos_q
        if denominator <= 1e-15:
            half = 180.0
        else:
            c = (cos_d - math.sin(p) * sin_q) / denominator
            if c > 1.0:
                continue  # rounding at the cap's edge: no point of this band is within reach
            half = 180.0 if c <= -1.0 else math.degrees(math.acos(c))
        width = HEIGHT_DEG * (1 << m)
        first = math.floor((lon - half) / width)
        last = math.floor((lon + half) / width)
        if last - first + 1 >= n:
            spans.append((band, m, range(n)))
        elif first < 0 or last >= n:  # across the antimeridian: two runs
            spans.append((band, m, range(first % n, n)))
            spans.append((band, m, range(0, last % n + 1)))
        else:
            spans.append((band, m, range(first, last + 1)))
    return spans
