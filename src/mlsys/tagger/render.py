"""Draw one garment photo from its latents: silhouette, fabric, prints, details, camera.

The garment is built in *units* of shoulder width (neck centre at the origin, y down) from
the shape latents (`latents.Shape`), then rasterised at twice the output resolution and
halved, which anti-aliases every edge for the price of one box filter. The order follows how
a photo comes to be:

    silhouette mask -> fabric colour -> prints (tags, distractors) -> folds and seams
    -> buttons -> camera (rotation, perspective, zoom, crop) onto a background with a shadow
    -> lighting -> blur and sensor noise -> JPEG

Everything is drawn with Pillow and numpy from one `numpy.random.Generator`, so an item's
bytes depend only on its seed. Nothing here may depend on the category except through the
shape latents: that is what keeps `latents.posterior` exact.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter

from mlsys.tagger.latents import DRESS_LENGTH, Shape

Point = tuple[float, float]
Rgb = tuple[int, int, int]
FloatImage = npt.NDArray[np.float32]

OUTPUT_SIZE = 256
SUPERSAMPLE = 2

# color1 -> a base sRGB colour; items jitter around it.
COLOR_RGB: dict[str, Rgb] = {
    "APRICOT": (244, 172, 128), "BLACK": (24, 24, 27), "BLUE": (38, 82, 172),
    "BODY": (226, 190, 163), "BROWN": (106, 68, 44), "BURGUNDY": (112, 22, 42),
    "CORAL": (246, 112, 92), "CREAM": (243, 233, 207), "DARK-GREEN": (24, 72, 46),
    "GOLD": (206, 166, 66), "GREEN": (62, 150, 72), "GREY": (130, 130, 134),
    "KHAKI": (189, 174, 128), "LIGHT-BLUE": (160, 199, 236), "LILAC": (200, 168, 222),
    "MINT": (166, 228, 198), "MUSTARD": (214, 164, 38), "NAVY": (26, 36, 78),
    "ORANGE": (240, 122, 30), "PINK": (246, 168, 196), "PURPLE": (108, 48, 140),
    "RED": (200, 30, 42), "ROSE": (214, 122, 140), "SILVER": (190, 192, 198),
    "TURQUOISE": (40, 190, 192), "WHITE": (244, 244, 241), "YELLOW": (246, 220, 62),
}  # fmt: skip
# Marketplace-like shares: black and white dominate, then blues and multi-colour.
COLOR_WEIGHTS: dict[str, float] = {
    "BLACK": 14, "WHITE": 12, "BLUE": 7, "VARIOUS": 8, "NAVY": 5, "RED": 5, "PINK": 5,
    "GREY": 4, "BEIGE": 0, "CREAM": 3, "LIGHT-BLUE": 4, "GREEN": 3, "BODY": 2, "BROWN": 2,
    "BURGUNDY": 2, "KHAKI": 2, "YELLOW": 2, "ORANGE": 1.5, "PURPLE": 2, "ROSE": 2,
    "CORAL": 1.5, "MINT": 1.5, "LILAC": 1.5, "MUSTARD": 1.5, "DARK-GREEN": 1.5,
    "TURQUOISE": 1, "APRICOT": 1, "GOLD": 0.7, "SILVER": 0.7,
}  # fmt: skip
COLOR_WEIGHTS.pop("BEIGE")
PRINT_PALETTE: tuple[Rgb, ...] = tuple(COLOR_RGB.values())
FLOWER_COLORS: tuple[Rgb, ...] = (
    (226, 40, 60), (246, 150, 180), (250, 250, 245), (250, 215, 60), (120, 80, 200),
    (60, 110, 210), (245, 120, 40), (200, 60, 140), (255, 190, 200), (180, 30, 50),
)  # fmt: skip
LEAF_COLORS: tuple[Rgb, ...] = ((60, 130, 60), (40, 90, 50), (110, 160, 80), (30, 70, 60))

# Tag prevalence (independent) and distractors (not tags).
TAG_RATES = {"polka dot": 0.11, "floral": 0.13, "checker": 0.09}
STRIPE_RATE = 0.10
HEATHER_RATE = 0.15


@dataclass
class Item:
    """Everything drawn for one image besides the shape (kept for the latents table)."""

    shape: Shape
    color: str
    tags: dict[str, int]
    stripes: bool
    hanger: bool
    background: str
    jpeg_quality: int
    blur: float
    extras: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- small helpers


def _jitter(rng: np.random.Generator, rgb: Rgb, amount: float = 10.0) -> Rgb:
    scale = rng.uniform(0.9, 1.08)
    out = np.asarray(rgb, dtype=np.float64) * scale + rng.normal(0, amount, 3)
    c = np.clip(out, 0, 255).astype(int)
    return (int(c[0]), int(c[1]), int(c[2]))


def _pick(rng: np.random.Generator, options: tuple[Rgb, ...]) -> Rgb:
    return options[int(rng.integers(len(options)))]


def _contrasting(rng: np.random.Generator, base: Rgb) -> Rgb:
    """A print colour that differs from the base by a visible but varying amount."""
    lum = 0.299 * base[0] + 0.587 * base[1] + 0.114 * base[2]
    r = rng.random()
    if r < 0.35:
        return (246, 246, 242) if lum < 150 else (28, 28, 32)
    for _ in range(8):
        c = _pick(rng, PRINT_PALETTE)
        if sum(abs(a - b) for a, b in zip(c, base, strict=True)) > 140:
            return _jitter(rng, c, 6)
    return (246, 246, 242) if lum < 128 else (28, 28, 32)


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


def _mirror(points: list[Point]) -> list[Point]:
    return [(-x, y) for x, y in reversed(points)]


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


# --------------------------------------------------------------------------- fabric and prints


def _base_fabric(rng: np.random.Generator, color: str, h: int, w: int) -> tuple[FloatImage, Rgb]:
    """Fabric colour field; VARIOUS is colour-blocked or tie-dyed from 2-4 palette colours."""
    if color != "VARIOUS":
        rgb = _jitter(rng, COLOR_RGB[color], 7)
        return np.broadcast_to(np.asarray(rgb, np.float32), (h, w, 3)).copy(), rgb
    k = int(rng.integers(2, 5))
    idx = rng.choice(len(PRINT_PALETTE), size=k, replace=False)
    cols = np.asarray([_jitter(rng, PRINT_PALETTE[i], 6) for i in idx], np.float32)
    mode = rng.random()
    yy, xx = np.mgrid[0:h, 0:w]
    if mode < 0.35:  # horizontal colour blocks
        edges = np.sort(rng.uniform(0, 1, k - 1)) * h
        label = np.searchsorted(edges, yy)
    elif mode < 0.55:  # diagonal / vertical split
        ang = rng.uniform(-1.2, 1.2)
        proj = xx * math.cos(ang) + yy * math.sin(ang)
        edges = np.sort(rng.uniform(proj.min(), proj.max(), k - 1))
        label = np.searchsorted(edges, proj)
    else:  # tie-dye / watercolour blobs
        low = rng.random((6, 6, k)).astype(np.float32)
        up = np.stack(
            [np.asarray(Image.fromarray(low[:, :, j]).resize((w, h), Image.Resampling.BICUBIC))
             for j in range(k)], axis=-1)  # fmt: skip
        label = up.argmax(-1)
    fabric = cols[np.clip(label, 0, k - 1)]
    rgb = (int(cols[0][0]), int(cols[0][1]), int(cols[0][2]))
    return fabric.astype(np.float32), rgb


def _blend(fabric: FloatImage, cover: FloatImage, color: npt.ArrayLike, alpha: float) -> None:
    a = (cover * alpha)[..., None]
    fabric *= 1 - a
    fabric += a * np.asarray(color, np.float32)


def _draw_cover(h: int, w: int, draw_fn: object) -> FloatImage:
    img = Image.new("L", (w, h), 0)
    draw_fn(ImageDraw.Draw(img))  # type: ignore[operator]
    return np.asarray(img, np.float32) / 255.0


def _polka(rng: np.random.Generator, fabric: FloatImage, base: Rgb, px: float) -> None:
    h, w = fabric.shape[:2]
    r = rng.uniform(2.5, 8.0) * px
    spacing = r * rng.uniform(2.5, 4.8)
    grid = rng.random() < 0.6
    multi = rng.random() < 0.15
    color = _contrasting(rng, base)
    centers = []
    if grid:
        off = rng.uniform(0, spacing, 2)
        for j, y in enumerate(np.arange(-spacing + off[1], h + spacing, spacing * 0.87)):
            shift = spacing / 2 if j % 2 else 0.0
            for x in np.arange(-spacing + off[0] + shift, w + spacing, spacing):
                centers.append((x, y, r))
    else:
        n = int(h * w / spacing**2)
        xs, ys = rng.uniform(0, w, n), rng.uniform(0, h, n)
        sizes = r * (rng.uniform(0.6, 1.4, n) if multi else np.ones(n))
        centers = list(zip(xs, ys, sizes, strict=True))

    def draw(d: ImageDraw.ImageDraw) -> None:
        for x, y, rr in centers:
            d.ellipse((x - rr, y - rr, x + rr, y + rr), fill=255)

    _blend(fabric, _draw_cover(h, w, draw), color, rng.uniform(0.55, 1.0))


def _floral(rng: np.random.Generator, fabric: FloatImage, base: Rgb, px: float) -> None:
    h, w = fabric.shape[:2]
    size = rng.uniform(5.0, 15.0) * px
    spacing = size * rng.uniform(2.0, 3.6)
    petals = [_pick(rng, FLOWER_COLORS) for _ in range(int(rng.integers(1, 4)))]
    centre_col = _pick(rng, ((250, 210, 60), (120, 70, 30), (250, 250, 240), (230, 120, 40)))
    leaf = _pick(rng, LEAF_COLORS)
    alpha = rng.uniform(0.65, 1.0)
    n = int(h * w / spacing**2) + 1
    xs, ys = rng.uniform(-size, w + size, n), rng.uniform(-size, h + size, n)
    sizes = size * rng.uniform(0.7, 1.3, n)
    kinds = rng.integers(0, len(petals), n)
    npetal = rng.integers(4, 8, n)
    rot = rng.uniform(0, 2 * math.pi, n)
    leaves = rng.random() < 0.7
    if leaves:
        cover = _draw_cover(h, w, lambda d: [
            d.ellipse((x + s * 0.6 * math.cos(a + 2.2) - s * 0.45, y + s * 0.6 * math.sin(a + 2.2)
                       - s * 0.25, x + s * 0.6 * math.cos(a + 2.2) + s * 0.45,
                       y + s * 0.6 * math.sin(a + 2.2) + s * 0.25), fill=255)
            for x, y, s, a in zip(xs, ys, sizes, rot, strict=True)])  # fmt: skip
        _blend(fabric, cover, leaf, alpha)
    for k, col in enumerate(petals):
        sel = kinds == k

        def draw(d: ImageDraw.ImageDraw, sel: npt.NDArray[np.bool_] = sel) -> None:
            for x, y, s, m, a in zip(xs[sel], ys[sel], sizes[sel], npetal[sel], rot[sel],
                                     strict=True):  # fmt: skip
                pr = s * 0.42
                for j in range(int(m)):
                    t = a + 2 * math.pi * j / m
                    cx, cy = x + s * 0.5 * math.cos(t), y + s * 0.5 * math.sin(t)
                    d.ellipse((cx - pr, cy - pr, cx + pr, cy + pr), fill=255)

        _blend(fabric, _draw_cover(h, w, draw), _jitter(rng, col, 8), alpha)
    cover = _draw_cover(h, w, lambda d: [
        d.ellipse((x - s * 0.24, y - s * 0.24, x + s * 0.24, y + s * 0.24), fill=255)
        for x, y, s in zip(xs, ys, sizes, strict=True)])  # fmt: skip
    _blend(fabric, cover, centre_col, alpha)


def _checker(rng: np.random.Generator, fabric: FloatImage, base: Rgb, px: float) -> None:
    h, w = fabric.shape[:2]
    cell = rng.uniform(4.0, 16.0) * px
    color = _contrasting(rng, base)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ox, oy = rng.uniform(0, 2 * cell, 2)
    a = ((xx + ox) // cell % 2).astype(np.float32)
    b = ((yy + oy) // cell % 2).astype(np.float32)
    kind = rng.random()
    if kind < 0.4:  # gingham: two translucent stripe sets, three tones
        cover = 0.5 * a + 0.5 * b
        _blend(fabric, cover, color, rng.uniform(0.8, 1.0))
    elif kind < 0.7:  # checkerboard
        cover = np.abs(a - b)
        _blend(fabric, cover, color, rng.uniform(0.5, 1.0))
    else:  # plaid / tartan: a wide check plus thin over-stripes in a third colour
        cover = 0.5 * a + 0.5 * b
        _blend(fabric, cover, color, rng.uniform(0.6, 0.9))
        second = _contrasting(rng, color)
        thin = max(1.5 * px, cell * 0.12)
        lines = (((xx + ox + cell / 2) % (2 * cell)) < thin) | (((yy + oy + cell / 2) % (2 * cell))
                                                                  < thin)  # fmt: skip
        _blend(fabric, lines.astype(np.float32), second, rng.uniform(0.6, 1.0))


def _stripes(rng: np.random.Generator, fabric: FloatImage, base: Rgb, px: float) -> None:
    """A non-tag print: plain stripes must not be read as checker."""
    h, w = fabric.shape[:2]
    width = rng.uniform(2.0, 10.0) * px
    period = width * rng.uniform(2.0, 4.0)
    coord = np.arange(h if rng.random() < 0.65 else w, dtype=np.float32)
    band = ((coord + rng.uniform(0, period)) % period < width).astype(np.float32)
    cover = np.broadcast_to(band[:, None], (h, w)) if len(coord) == h else \
        np.broadcast_to(band[None, :], (h, w))  # fmt: skip
    _blend(fabric, np.ascontiguousarray(cover), _contrasting(rng, base), rng.uniform(0.4, 1.0))


def _lowres_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> FloatImage:
    low = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC), np.float32)


# --------------------------------------------------------------------------- backgrounds


BG_LIGHT: tuple[Rgb, ...] = (
    (236, 236, 234), (245, 243, 238), (222, 218, 210), (205, 205, 208), (238, 230, 218),
    (250, 250, 250), (214, 222, 226), (232, 224, 228),
)  # fmt: skip
BG_DARK: tuple[Rgb, ...] = ((120, 86, 60), (90, 90, 94), (60, 62, 66), (150, 120, 90))


def background(rng: np.random.Generator, size: int) -> tuple[FloatImage, str]:
    kind = str(rng.choice(["solid", "gradient", "wood", "sheet", "tiles", "carpet"],
                          p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.1]))  # fmt: skip
    base = np.asarray(_jitter(rng, _pick(rng, BG_DARK if rng.random() < 0.15 else BG_LIGHT), 6),
                      np.float32)  # fmt: skip
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "solid":
        img = np.broadcast_to(base, (size, size, 3)).copy()
    elif kind == "gradient":
        other = np.asarray(_jitter(rng, _pick(rng, BG_LIGHT), 10), np.float32)
        ang = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + (xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang), 0, 1)
        img = base * (1 - t[..., None]) + other * t[..., None]
    elif kind == "wood":
        wood = np.asarray(_jitter(rng, _pick(rng, ((168, 124, 84), (196, 160, 118), (120, 84, 58),
                                                   (210, 190, 160))), 8), np.float32)  # fmt: skip
        plank = rng.uniform(0.12, 0.25)
        idx = (xx // plank).astype(int)
        shade = 1 + 0.08 * np.sin(idx * 12.9898) + 0.04 * np.sin(yy * rng.uniform(30, 70)
                                                                  + idx * 3.1)  # fmt: skip
        grain = 0.03 * np.sin((yy * 200 + 8 * np.sin(xx * 40)) * rng.uniform(0.5, 1.5))
        img = wood * (shade + grain)[..., None]
        img *= np.where((xx % plank) < 0.006, 0.7, 1.0)[..., None]
    elif kind == "sheet":
        img = base * (1 + 0.06 * _lowres_noise(rng, size, size, 5))[..., None]
    elif kind == "tiles":
        tile = rng.uniform(0.18, 0.35)
        grout = ((xx % tile) < 0.01) | ((yy % tile) < 0.01)
        img = np.broadcast_to(base, (size, size, 3)).copy()
        img[grout] *= 0.8
    else:
        img = base * (1 + 0.07 * rng.normal(0, 1, (size, size)).astype(np.float32))[..., None]
    return img.astype(np.float32), kind


# --------------------------------------------------------------------------- the photo


def sample_item(rng: np.random.Generator, shape: Shape) -> Item:
    names = list(COLOR_WEIGHTS)
    w = np.asarray([COLOR_WEIGHTS[n] for n in names])
    color = names[int(rng.choice(len(names), p=w / w.sum()))]
    tags = {t: int(rng.random() < p) for t, p in TAG_RATES.items()}
    stripes = bool(rng.random() < STRIPE_RATE) and not tags["checker"]
    return Item(
        shape=shape, color=color, tags=tags, stripes=stripes,
        hanger=bool(rng.random() < 0.3), background="",
        jpeg_quality=int(rng.integers(60, 96)),
        blur=float(rng.uniform(0.3, 1.2)) if rng.random() < 0.45 else 0.0,
    )  # fmt: skip


def _to_px(points: list[Point], scale: float, ox: float, oy: float) -> list[Point]:
    return [(ox + scale * x, oy + scale * y) for x, y in points]


def render(rng: np.random.Generator, item: Item, size: int = OUTPUT_SIZE) -> Image.Image:
    """The item's photo as an RGB image of `size` x `size`."""
    g = build_geometry(rng, item.shape, item.hanger)
    pts = np.asarray(g.all_points())
    xmin, ymin = pts.min(0)
    xmax, ymax = pts.max(0)
    if item.hanger:
        ymin = min(ymin, -0.38)
    wu, hu = xmax - xmin, ymax - ymin
    # Framing: the garment fills most of the frame; wide ones may lose their sleeve tips.
    fill_h = rng.uniform(0.68, 0.88)
    fill_w = rng.uniform(0.78, 1.02)
    scale = min(size * fill_h / hu, size * fill_w / wu)  # output px per unit
    ss = SUPERSAMPLE
    s2 = scale * ss
    pad = 4 * ss
    lw, lh = int(wu * s2) + 2 * pad, int(hu * s2) + 2 * pad
    ox, oy = pad - xmin * s2, pad - ymin * s2

    # Silhouette.
    mask = Image.new("L", (lw, lh), 0)
    md = ImageDraw.Draw(mask)
    for poly in (g.body, *g.fabric, *g.overlays):
        md.polygon(_to_px(poly, s2, ox, oy), fill=255)
    mask_np = np.asarray(mask, np.float32) / 255.0

    # Fabric, prints.
    fabric, base_rgb = _base_fabric(rng, item.color, lh, lw)
    px = scale * ss / (size * 0.8 / 1.6)  # print sizes follow the garment's on-screen scale
    px = float(np.clip(px, 0.7 * ss, 1.4 * ss))
    if item.stripes:
        _stripes(rng, fabric, base_rgb, px)
    if item.tags["checker"]:
        _checker(rng, fabric, base_rgb, px)
    if item.tags["floral"]:
        _floral(rng, fabric, base_rgb, px)
    if item.tags["polka dot"]:
        _polka(rng, fabric, base_rgb, px)
    if rng.random() < HEATHER_RATE:
        fabric *= (1 + 0.05 * rng.normal(0, 1, (lh, lw)).astype(np.float32))[..., None]

    # Folds, inside-back regions, seams and outlines: one multiplicative shade layer.
    metallic = item.color in ("GOLD", "SILVER")
    shade = 1 + (0.16 if metallic else 0.05) * _lowres_noise(rng, lh, lw, int(rng.integers(4, 8)))
    dark = Image.new("L", (lw, lh), 0)
    dd = ImageDraw.Draw(dark)
    for poly in g.dark:
        dd.polygon(_to_px(poly, s2, ox, oy), fill=int(rng.uniform(90, 130)))
    lines = Image.new("L", (lw, lh), 0)
    ld = ImageDraw.Draw(lines)
    seam_w = max(1, round(1.1 * s2 / 100))
    for seam, width in g.seams:
        ld.line(_to_px(seam, s2, ox, oy), fill=150, width=max(1, int(seam_w * width)))
    for fold in g.folds:
        ld.line(_to_px(fold, s2, ox, oy), fill=70, width=seam_w * 3)
    for poly in g.overlays:
        p = _to_px(poly, s2, ox, oy)
        ld.line([*p, p[0]], fill=210, width=seam_w * 2)
    if g.belt is not None:
        dd.polygon(_to_px(g.belt, s2, ox, oy), fill=int(rng.uniform(60, 160)))
    lines = lines.filter(ImageFilter.GaussianBlur(seam_w * 0.8))
    line_np = np.asarray(lines, np.float32) / 255.0
    dark_np = np.asarray(dark, np.float32) / 255.0
    lum = float(np.dot(base_rgb, (0.299, 0.587, 0.114)))
    lift = max(0.0, 70.0 - lum) / 70.0 * 45.0  # seams on black fabric read as highlights
    fabric *= (shade * (1 - 0.55 * line_np) * (1 - dark_np))[..., None]
    fabric += (lift * (line_np + 0.4 * dark_np))[..., None]

    layer = np.zeros((lh, lw, 4), np.float32)
    layer[..., :3] = fabric
    layer[..., 3] = mask_np * 255

    # Buttons and hanger on top / behind.
    img = Image.fromarray(np.clip(layer, 0, 255).astype(np.uint8), "RGBA")
    d = ImageDraw.Draw(img)
    bcol = _pick(rng, ((245, 245, 240), (30, 30, 30), (200, 180, 140), (120, 80, 50),
                       _jitter(rng, base_rgb, 25)))  # fmt: skip
    ring = tuple(int(c * 0.6) for c in bcol)
    for bx, by, br in g.buttons:
        cx, cy, rr = ox + s2 * bx, oy + s2 * by, s2 * br
        d.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=(*bcol, 255), outline=(*ring, 255),
                  width=max(1, int(rr * 0.25)))  # fmt: skip
    if item.hanger:
        hanger = Image.new("RGBA", (lw, lh), (0, 0, 0, 0))
        hd = ImageDraw.Draw(hanger)
        hcol = _pick(rng, ((150, 105, 65), (30, 30, 32), (235, 235, 235), (170, 170, 176)))
        hw_px = max(2, int(s2 * rng.uniform(0.015, 0.04)))
        hook_top = oy + s2 * -0.36
        cx = ox
        hd.line([(cx, oy + s2 * (g.hanger_y - 0.02)), (cx, hook_top + s2 * 0.08)], fill=hcol,
                width=hw_px)  # fmt: skip
        r = s2 * 0.06
        hd.arc((cx - r, hook_top, cx + r, hook_top + 2 * r), 180, 90, fill=hcol, width=hw_px)
        hd.line([(ox - s2 * 0.56, oy + s2 * (g.hanger_y + 0.03)), (cx, oy + s2 * (g.hanger_y -
                 0.06)), (ox + s2 * 0.56, oy + s2 * (g.hanger_y + 0.03))], fill=hcol,
                width=hw_px * 2)  # fmt: skip
        img = Image.alpha_composite(hanger, img)
    img = img.reduce(ss)
    item.extras["scale_px_per_unit"] = round(scale, 2)

    # Camera: rotation, slight perspective, zoom and offset into the frame.
    angle = math.radians(rng.uniform(-8, 8))
    zoom = rng.uniform(0.95, 1.05)
    gw, gh = img.size
    tx = rng.uniform(-0.06, 0.06) * size
    ty = rng.uniform(-0.04, 0.04) * size
    p1, p2 = rng.uniform(-4e-4, 4e-4, 2)
    c, s = math.cos(angle) * zoom, math.sin(angle) * zoom
    to_centre = np.array([[1, 0, -gw / 2], [0, 1, -gh / 2], [0, 0, 1]])
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    persp = np.array([[1, 0, 0], [0, 1, 0], [p1, p2, 1]])
    to_frame = np.array([[1, 0, size / 2 + tx], [0, 1, size / 2 + ty], [0, 0, 1]])
    forward = to_frame @ persp @ rot @ to_centre
    inv = np.linalg.inv(forward)
    inv /= inv[2, 2]
    placed = img.transform((size, size), Image.Transform.PERSPECTIVE, tuple(inv.ravel()[:8]),
                           Image.Resampling.BICUBIC)  # fmt: skip

    bg, item.background = background(rng, size)
    alpha_img = placed.getchannel("A")
    shadow = alpha_img.filter(ImageFilter.GaussianBlur(rng.uniform(3, 8)))
    sx, sy = int(rng.integers(-3, 5)), int(rng.integers(2, 7))
    shadow_np = np.roll(np.asarray(shadow, np.float32) / 255.0, (sy, sx), (0, 1))
    bg *= (1 - rng.uniform(0.2, 0.45) * shadow_np)[..., None]
    arr = np.asarray(placed, np.float32)
    a = arr[..., 3:4] / 255.0
    # Soft darkening just inside the garment edge: fabric curls away from the light there.
    edge = np.asarray(alpha_img.filter(ImageFilter.GaussianBlur(2.5)), np.float32)[..., None] / 255
    photo = bg * (1 - a) + arr[..., :3] * (0.82 + 0.18 * edge) * a

    # Lighting: direction, vignette, exposure, white balance.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    ang = rng.uniform(0, 2 * math.pi)
    light = 1 + rng.uniform(0, 0.25) * (xx * math.cos(ang) + yy * math.sin(ang))
    light *= 1 - rng.uniform(0, 0.35) * (xx**2 + yy**2)
    light *= rng.uniform(0.85, 1.12)
    wb = np.asarray([1 + rng.uniform(-0.06, 0.06), 1.0, 1 + rng.uniform(-0.06, 0.06)], np.float32)
    photo = photo * light[..., None] * wb
    noise_sigma = rng.uniform(0, 3.5)
    if noise_sigma > 0.5:
        photo += rng.normal(0, noise_sigma, (size, size, 1)).astype(np.float32)
    out = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8), "RGB")
    if item.blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(item.blur))
    return out


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
