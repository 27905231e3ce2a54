"""A garment's silhouette and details, in units of shoulder width, from its shape latents.

The neck centre is the origin and y points down. `build_geometry` turns (length, sleeve,
neck, placket, hem) plus class-independent noise (widths, waist, flare, sleeve angle) into
polygons: the body, sleeves and straps, overlays with an outline (collars, bows, flounces),
dark regions (the inside back seen through a neckline), seams, gathers and buttons. A length
at or above `DRESS_LENGTH` gets a dress's body (waist seam, flared skirt), so the geometry is a
function of the latents alone and the category posterior stays exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mlsys.tagger.data.latents import DRESS_LENGTH, Shape

Point = tuple[float, float]


def _lerp(a: Point, b: Point, t: float) -> Point:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def _quad(a: Point, ctrl: Point, b: Point, n: int = 8) -> list[Point]:
    """Points along a quadratic Bezier from a to b (a excluded, b included)."""
    out = []
    for i in range(1, n + 1):
        t = i / n
        out.append(
            (
                (1 - t) ** 2 * a[0] + 2 * (1 - t) * t * ctrl[0] + t * t * b[0],
                (1 - t) ** 2 * a[1] + 2 * (1 - t) * t * ctrl[1] + t * t * b[1],
            )
        )
    return out


def _ellipse_arc(
    cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 12
) -> list[Point]:
    return [(cx + rx * math.cos(a0 + (a1 - a0) * i / n), cy + ry * math.sin(a0 + (a1 - a0) * i / n))
            for i in range(n + 1)]  # fmt: skip


# --------------------------------------------------------------------------- garment geometry


@dataclass
class Geometry:
    """The garment in units: fabric polygons, inside-of-garment regions, seams and buttons."""

    body: list[Point]
    fabric: list[list[Point]] = field(default_factory=list)  # sleeves, straps, collars, bows
    overlays: list[list[Point]] = field(default_factory=list)  # fabric drawn with an outline
    dark: list[list[Point]] = field(default_factory=list)  # inside back seen through the neck
    seams: list[tuple[list[Point], float]] = field(default_factory=list)  # (polyline, width)
    folds: list[list[Point]] = field(default_factory=list)  # soft gathers
    buttons: list[tuple[float, float, float]] = field(default_factory=list)
    hanger_y: float = 0.0
    belt: list[Point] | None = None

    def all_points(self) -> list[Point]:
        pts = list(self.body)
        for poly in (*self.fabric, *self.overlays):
            pts.extend(poly)
        return pts


def _sleeve(
    rng: np.random.Generator, kind: str, s: Point, a: Point, theta: float, g: Geometry
) -> None:
    """Right sleeve from shoulder `s` and armpit `a`, pointing `theta` radians off vertical."""
    d = (math.sin(theta), math.cos(theta))
    n = (math.cos(theta), -math.sin(theta))
    m = _lerp(s, a, 0.5)
    ho = math.dist(s, a) / 2

    def at(t: float, w: float, length: float) -> tuple[Point, Point]:
        c = (m[0] + d[0] * length * t, m[1] + d[1] * length * t)
        return (c[0] + n[0] * w, c[1] + n[1] * w), (c[0] - n[0] * w, c[1] - n[1] * w)

    steps = 8
    if kind == "cap":
        length = rng.uniform(0.10, 0.15)
        widths = [ho * (1 - 0.1 * t) for t in np.linspace(0, 1, steps)]
    elif kind == "short":
        length = rng.uniform(0.28, 0.42)
        widths = [ho * (1 - rng.uniform(0.1, 0.2) * t) for t in np.linspace(0, 1, steps)]
    elif kind == "puff":
        length = rng.uniform(0.26, 0.36)
        bulge = rng.uniform(0.45, 0.7)
        widths = [ho * (1 - 0.35 * t) + ho * bulge * math.sin(math.pi * min(t * 1.1, 1.0))
                  for t in np.linspace(0, 1, steps)]  # fmt: skip
    elif kind == "flutter":
        length = rng.uniform(0.24, 0.34)
        widths = [ho * (1 + rng.uniform(0.5, 0.8) * t**1.3) for t in np.linspace(0, 1, steps)]
    elif kind == "three_quarter":
        length = rng.uniform(0.68, 0.85)
        widths = [ho * (1 - 0.42 * t) for t in np.linspace(0, 1, steps)]
    else:  # long
        length = rng.uniform(1.0, 1.25)
        bishop = rng.random() < 0.35
        widths = [ho * (1 - 0.5 * t) + (ho * 0.35 * math.sin(math.pi * t * 0.9) if bishop else 0)
                  for t in np.linspace(0, 1, steps)]  # fmt: skip
        widths[-1] = ho * 0.42
    ts = np.linspace(0, 1, steps)
    outer, inner = [], []
    for t, w in zip(ts, widths, strict=True):
        o, i = at(float(t), w, length)
        outer.append(o)
        inner.append(i)
    outer[0], inner[0] = s, a
    if kind == "flutter":  # wavy end
        e_o, e_i = outer[-1], inner[-1]
        wave = []
        for k in range(1, 12):
            p = _lerp(e_o, e_i, k / 12)
            amp = 0.025 * math.sin(k / 12 * math.pi * 5)
            wave.append((p[0] + d[0] * amp, p[1] + d[1] * amp))
        poly = [*outer, *wave, *reversed(inner)]
    else:
        poly = [*outer, *reversed(inner)]
    g.fabric.append(poly)
    g.seams.append(([s, a], 1.0))
    if kind in ("long", "three_quarter"):  # cuff seam
        o, i = at(0.88 if kind == "long" else 0.93, widths[-1] * 1.02, length)
        g.seams.append(([o, i], 1.0))
        if kind == "long" and rng.random() < 0.5:
            c = _lerp(o, i, 0.3)
            e = at(0.94, 0, length)[0]
            g.buttons.append((_lerp(c, e, 0.5)[0], _lerp(c, e, 0.5)[1], 0.014))
    if kind == "puff":  # gathers at the shoulder and a band at the end
        for f in (0.3, 0.5, 0.7):
            p0 = _lerp(s, a, f)
            p1 = at(0.45, (f - 0.5) * 2 * ho * 1.2, length)[0]
            g.folds.append([p0, p1])
        o, i = at(0.9, widths[-1], length)
        g.seams.append(([o, i], 1.0))
    if kind == "flutter":
        for f in (0.25, 0.5, 0.75):
            p0 = _lerp(s, a, f)
            p1 = _lerp(outer[-1], inner[-1], f)
            g.folds.append([_lerp(p0, p1, 0.3), p1])


def _hem_curve(
    rng: np.random.Generator, hem: str, hw: float, y_side: float, y_mid: float, g: Geometry
) -> list[Point]:
    """Hem from the right side to the left side."""
    pts: list[Point] = []
    n = 16
    for k in range(n + 1):
        x = hw - 2 * hw * k / n
        u = x / hw
        y = y_mid + (y_side - y_mid) * u * u
        if hem in ("ruffle", "peplum"):
            y += 0.02 * math.sin(k * math.pi * rng.uniform(0.9, 1.1))
        pts.append((x, y))
    if hem == "ruffle":
        up = rng.uniform(0.09, 0.16)
        g.seams.append(([(p[0] * 0.97, p[1] - up) for p in pts], 1.0))
        for k in range(1, n, 3):
            g.folds.append([(pts[k][0] * 0.97, pts[k][1] - up + 0.01), pts[k]])
    return pts


def build_geometry(rng: np.random.Generator, shape: Shape, hanger: bool) -> Geometry:
    """The garment's outline and details from its latents (and class-independent noise)."""
    length = max(shape.length, 0.9)
    dress = length >= DRESS_LENGTH
    nw = rng.uniform(0.13, 0.19)
    sd = rng.uniform(0.03, 0.08)
    ah = rng.uniform(0.36, 0.46)
    cw = rng.uniform(0.45, 0.53)
    if dress:
        wy = rng.uniform(0.72, 0.92)
        ww = rng.uniform(0.34, 0.45)
        hw = ww + rng.uniform(0.10, 0.38) * (length - wy)
    else:
        wy = min(rng.uniform(0.62, 0.8), length - 0.35)
        ww = cw * rng.uniform(0.84, 1.0)
        hw = cw * rng.uniform(0.95, 1.12)
    right: list[Point] = []
    g = Geometry(body=[])
    sleeve = shape.sleeve
    neck = shape.neck
    top_y = 0.0  # where the front neckline starts (below the collar for collared tops)

    if sleeve == "straps_thin":
        bt = rng.uniform(0.2, 0.3)
        sx = rng.uniform(0.22, 0.3)
        bx = cw * 0.95
        right.append((bx, bt))
        right.append((cw, ah * 0.9))
        for side in (1, -1):
            x0, x1 = side * sx, side * (sx * 0.85)
            strap = [(x0 - 0.015, bt + 0.01), (x0 + 0.015, bt + 0.01), (x1 + 0.015, -0.02),
                     (x1 - 0.015, -0.02)]  # fmt: skip
            g.fabric.append(strap)
        # The front top edge is the neckline.
        if neck == "v":
            top = [(bx, bt), (0.0, bt + rng.uniform(0.12, 0.2)), (-bx, bt)]
        elif neck in ("scoop", "round"):
            depth = rng.uniform(0.04, 0.1) if neck == "round" else rng.uniform(0.1, 0.16)
            top = [(bx, bt), *_quad((bx, bt), (0.0, bt + 2 * depth), (-bx, bt), 10)]
        else:  # square: straight across
            top = [(bx, bt), (-bx, bt)]
        top_y = bt
    else:
        if sleeve == "straps_wide":
            sw = rng.uniform(0.07, 0.16)
            right.append((nw, 0.0))
            right.append((nw + sw, 0.0))
            right.extend(_quad((nw + sw, 0.0), (nw + sw + 0.02, ah * 0.85), (cw, ah), 8))
        elif sleeve == "sleeveless":
            sh = rng.uniform(0.38, 0.45)
            right.append((nw, 0.0))
            right.append((sh, sd))
            right.extend(_quad((sh, sd), (sh - 0.02, ah * 0.8), (cw, ah), 8))
        else:
            right.append((nw, 0.0))
            right.append((0.5, sd))
            right.append((cw, ah))
        top = [(nw, 0.0), *_quad((nw, 0.0), (0.0, 0.06), (-nw, 0.0), 8)]
    # Sides and hem.
    if dress:
        right.append((ww, wy))
        g.seams.append(([(ww, wy), (-ww, wy)], 1.0))
        if shape.hem == "tiered":
            tiers = 3
            span = (length - wy) / tiers
            for k in range(1, tiers):
                y = wy + span * k
                x = ww + (hw - ww) * k / tiers
                right.append((x, y - 0.005))
                right.append((x + 0.05, y + 0.005))
                g.seams.append(([(x, y), (-x, y)], 1.0))
                for j in range(-3, 4):
                    g.folds.append([(j * x / 4, y + 0.02), (j * x / 3.6, y + span * 0.7)])
        right.append((hw, length - 0.02))
        hem_pts = _hem_curve(rng, "ruffle" if shape.hem == "ruffle" else "straight", hw,
                             length - 0.02, length + 0.02, g)  # fmt: skip
        for j in range(-2, 3):  # skirt drape
            if rng.random() < 0.7:
                g.folds.append([(j * ww * 0.4, wy + 0.08), (j * hw * 0.45, length - 0.05)])
        if shape.hem == "peplum":
            py = wy + 0.02
            pl = rng.uniform(0.2, 0.28)
            flounce = [(ww, py), (ww + 0.14, py + pl)]
            flounce += [(x, py + pl + 0.02 * math.sin(i * 2.6)) for i, x in
                        enumerate(np.linspace(ww + 0.14, -ww - 0.14, 14))]  # fmt: skip
            flounce.append((-ww, py))
            g.overlays.append(flounce)
        if rng.random() < 0.3:
            g.belt = [(ww + 0.01, wy - 0.035), (ww + 0.01, wy + 0.035), (-ww - 0.01, wy + 0.035),
                      (-ww - 0.01, wy - 0.035)]  # fmt: skip
    else:
        right.append((ww, wy))
        if shape.hem == "peplum":
            g.seams.append(([(ww, wy), (-ww, wy)], 1.0))
            hw = ww + rng.uniform(0.12, 0.2)
            for j in range(-3, 4):
                g.folds.append([(j * ww / 3.5, wy + 0.02), (j * hw / 3.2, length - 0.03)])
        y_side = length - (rng.uniform(0.09, 0.15) if shape.hem == "shirttail" else 0.0)
        right.append((hw, y_side))
        hem_pts = _hem_curve(rng, shape.hem, hw, y_side, length + (0.015 if shape.hem ==
                             "straight" else 0.0), g)  # fmt: skip
    left = [(-x, y) for x, y in right]
    g.body = [*top, *left[1:], *list(reversed(hem_pts))[1:-1], *list(reversed(right))[:-1]]

    # Sleeves.
    if sleeve not in ("straps_thin", "straps_wide", "sleeveless"):
        spread = rng.uniform(0.10, 0.38) if hanger else rng.uniform(0.35, 1.05)
        if sleeve in ("short", "cap", "puff", "flutter"):
            spread = max(spread, 0.45 if not hanger else 0.2)
        for side in (1, -1):
            sub = Geometry(body=[])
            _sleeve(rng, sleeve, (0.5, sd), (cw, ah), spread + rng.normal(0, 0.04), sub)
            flip = -1 if side < 0 else 1
            g.fabric.extend([[(flip * x, y) for x, y in p] for p in sub.fabric])
            g.seams.extend([([(flip * x, y) for x, y in p], w) for p, w in sub.seams])
            g.folds.extend([[(flip * x, y) for x, y in p] for p in sub.folds])
            g.buttons.extend([(flip * x, y, r) for x, y, r in sub.buttons])

    # Necklines and collars.
    placket_top = 0.05
    straps = sleeve in ("straps_thin", "straps_wide")
    if neck == "point_collar":
        cs = rng.uniform(0.13, 0.22)
        spread_c = rng.uniform(0.0, 0.05)
        meet = 0.08
        g.dark.append([(-nw + 0.01, -0.02), (nw - 0.01, -0.02), (0.0, meet)])
        stand = [(-nw - 0.03, 0.01), (-nw + 0.0, -0.05), (nw - 0.0, -0.05), (nw + 0.03, 0.01),
                 (nw - 0.01, -0.015), (-nw + 0.01, -0.015)]  # fmt: skip
        g.overlays.append(stand)
        for side in (1, -1):
            flap = [(side * (nw + 0.03), -0.01), (side * 0.012, meet),
                    (side * (0.07 + 0.35 * cs + spread_c), meet + cs),
                    (side * (nw + 0.06 + 0.25 * cs + spread_c), 0.04 + 0.3 * cs)]  # fmt: skip
            g.overlays.append(flap)
        placket_top = meet
    elif neck == "band_collar":
        g.overlays.append(_ellipse_arc(0, 0.0, nw + 0.035, 0.09, 0, 2 * math.pi, 24))
        g.dark.append(_ellipse_arc(0, -0.005, nw * 0.92, 0.06, 0, 2 * math.pi, 24))
        placket_top = 0.09
    elif neck == "peter_pan":
        depth = rng.uniform(0.05, 0.09)
        g.dark.append([(nw, 0.0), *_quad((nw, 0.0), (0.0, 2 * depth), (-nw, 0.0), 10)])
        r = rng.uniform(0.08, 0.12)
        for side in (1, -1):
            g.overlays.append(_ellipse_arc(side * nw * 0.62, depth * 0.6, nw * 0.72, r, 0,
                                           2 * math.pi, 18))  # fmt: skip
        placket_top = depth + r * 0.8
    elif neck in ("round", "scoop", "v", "square", "tie") and sleeve != "straps_thin":
        inner = nw
        cap = nw if straps else 9.0  # a neckline cannot be wider than the straps
        if neck == "round" or neck == "tie":
            depth = rng.uniform(0.07, 0.12)
            cut = [(inner, 0.0), *_quad((inner, 0.0), (0.0, 2 * depth), (-inner, 0.0), 12)]
        elif neck == "scoop":
            inner = min(cap, nw * rng.uniform(1.1, 1.35))
            depth = rng.uniform(0.18, 0.3)
            cut = [(inner, 0.0), *_quad((inner, 0.0), (inner * 0.3, 2 * depth), (0, depth), 8),
                   *_quad((0, depth), (-inner * 0.3, 2 * depth), (-inner, 0.0), 8)]  # fmt: skip
        elif neck == "v":
            depth = rng.uniform(0.22, 0.38)
            cut = [(inner, 0.0), (0.0, depth), (-inner, 0.0)]
        else:
            inner = min(cap, nw * rng.uniform(1.05, 1.25))
            depth = rng.uniform(0.13, 0.22)
            cut = [(inner, 0.0), (inner, depth), (-inner, depth), (-inner, 0.0)]
        if not straps:
            cut = [*cut, *_quad((-inner, 0.0), (0.0, 0.05), (inner, 0.0), 6)]
        g.dark.append(cut)
        g.seams.append(([(x * 1.08, y + 0.022) for x, y in cut[: len(cut) if straps else -6]],
                        1.3))  # fmt: skip
        placket_top = depth + 0.01
        if neck == "tie":
            cx, cy = 0.0, depth + 0.01
            lw, lh = rng.uniform(0.09, 0.14), rng.uniform(0.05, 0.08)
            tail = rng.uniform(0.2, 0.34)
            for side in (1, -1):
                g.overlays.append([(cx, cy), (side * lw, cy - lh), (side * lw * 1.1, cy + lh),
                                   (cx, cy)])  # fmt: skip
                g.overlays.append([(side * 0.01, cy), (side * 0.05, cy + tail),
                                   (side * 0.1, cy + tail - 0.02), (side * 0.03, cy)])  # fmt: skip
            g.overlays.append(_ellipse_arc(cx, cy, 0.025, 0.025, 0, 2 * math.pi, 10))
            placket_top = cy + 0.04
    else:
        placket_top = top_y + 0.05

    # Button placket.
    if shape.placket != "none":
        hem_y = length - 0.02
        end = hem_y if shape.placket == "full" else placket_top + rng.uniform(0.25, 0.4)
        end = min(end, hem_y)
        g.seams.append(([(0.035, placket_top), (0.035, end)], 1.0))
        g.seams.append(([(-0.035, placket_top), (-0.035, end)], 1.0))
        step = rng.uniform(0.11, 0.16)
        r = rng.uniform(0.014, 0.022)
        y = placket_top + step * 0.5
        while y < end - 0.03:
            g.buttons.append((0.0, y, r))
            y += step
    g.hanger_y = sd + 0.01
    return g
