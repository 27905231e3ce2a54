"""Great-circle distance between users and restaurants; the one place the Earth radius lives.

Haversine on a sphere of radius 6,359,000 m: the Gaussian radius of curvature sqrt(M N) of the
WGS-84 ellipsoid at 13.9 N, the centre of the service area (13.6-14.2 N near Bangkok). Over
that area it is within 0.32% of the WGS-84 geodesic in every direction (tests compare with
geographiclib). The familiar IUGG mean radius, 6,371,008.8 m, is up to 0.505% long
north-south there, because the meridian's radius of curvature at this latitude is only
~6,339 km. Serving (`max_dist`, `displacement`), the data report and the tests all use this.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

EARTH_RADIUS_M = 6_359_000.0

FloatArray = npt.NDArray[np.float64]


def haversine_m(
    lat1: float | FloatArray, lon1: float | FloatArray, lat2: FloatArray, lon2: FloatArray
) -> FloatArray:
    """Distance in metres from (lat1, lon1) to each (lat2, lon2); degrees in, vectorised."""
    p1 = np.radians(lat1)
    p2 = np.radians(lat2)
    dphi = p2 - p1
    dlmb = np.radians(lon2) - np.radians(lon1)
    a = np.sin(dphi * 0.5) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb * 0.5) ** 2
    return np.asarray(2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0))), np.float64)
