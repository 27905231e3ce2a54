"""Fabric: garment colours, the pattern tags' prints and the non-tag distractors.

Prints are drawn over the whole garment layer as coverage masks and blended into the fabric
colour field; the silhouette's alpha clips them to the garment later. Sizes are in layer
pixels via `px` (pixels per output pixel at the garment's on-screen scale), so a print keeps
its apparent size whatever the zoom.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

Rgb = tuple[int, int, int]
FloatImage = npt.NDArray[np.float32]

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


def jitter(rng: np.random.Generator, rgb: Rgb, amount: float = 10.0) -> Rgb:
    scale = rng.uniform(0.9, 1.08)
    out = np.asarray(rgb, dtype=np.float64) * scale + rng.normal(0, amount, 3)
    c = np.clip(out, 0, 255).astype(int)
    return (int(c[0]), int(c[1]), int(c[2]))


def pick(rng: np.random.Generator, options: tuple[Rgb, ...]) -> Rgb:
    return options[int(rng.integers(len(options)))]


def contrasting(rng: np.random.Generator, base: Rgb) -> Rgb:
    """A print colour that differs from the base by a visible but varying amount."""
    lum = 0.299 * base[0] + 0.587 * base[1] + 0.114 * base[2]
    r = rng.random()
    if r < 0.35:
        return (246, 246, 242) if lum < 150 else (28, 28, 32)
    for _ in range(8):
        c = pick(rng, PRINT_PALETTE)
        if sum(abs(a - b) for a, b in zip(c, base, strict=True)) > 140:
            return jitter(rng, c, 6)
    return (246, 246, 242) if lum < 128 else (28, 28, 32)


# --------------------------------------------------------------------------- fabric and prints


def base_fabric(rng: np.random.Generator, color: str, h: int, w: int) -> tuple[FloatImage, Rgb]:
    """Fabric colour field; VARIOUS is colour-blocked or tie-dyed from 2-4 palette colours."""
    if color != "VARIOUS":
        rgb = jitter(rng, COLOR_RGB[color], 7)
        return np.broadcast_to(np.asarray(rgb, np.float32), (h, w, 3)).copy(), rgb
    k = int(rng.integers(2, 5))
    idx = rng.choice(len(PRINT_PALETTE), size=k, replace=False)
    cols = np.asarray([jitter(rng, PRINT_PALETTE[i], 6) for i in idx], np.float32)
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


def polka(rng: np.random.Generator, fabric: FloatImage, base: Rgb, px: float) -> None:
    h, w = fabric.shape[:2]
    r = rng.uniform(2.5, 8.0) * px
    spacing = r * rng.uniform(2.5, 4.8)
    grid = rng.random() < 0.6
    multi = rng.random() < 0.15
    color = contrasting(rng, base)
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


def floral(rng: np.random.Generator, fabric: FloatImage, base: Rgb, px: float) -> None:
    h, w = fabric.shape[:2]
    size = rng.uniform(5.0, 15.0) * px
    spacing = size * rng.uniform(2.0, 3.6)
    petals = [pick(rng, FLOWER_COLORS) for _ in range(int(rng.integers(1, 4)))]
    centre_col = pick(rng, ((250, 210, 60), (120, 70, 30), (250, 250, 240), (230, 120, 40)))
    leaf = pick(rng, LEAF_COLORS)
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

        _blend(fabric, _draw_cover(h, w, draw), jitter(rng, col, 8), alpha)
    cover = _draw_cover(h, w, lambda d: [
        d.ellipse((x - s * 0.24, y - s * 0.24, x + s * 0.24, y + s * 0.24), fill=255)
        for x, y, s in zip(xs, ys, sizes, strict=True)])  # fmt: skip
    _blend(fabric, cover, centre_col, alpha)


def checker(rng: np.random.Generator, fabric: FloatImage, base: Rgb, px: float) -> None:
    h, w = fabric.shape[:2]
    cell = rng.uniform(4.0, 16.0) * px
    color = contrasting(rng, base)
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
        second = contrasting(rng, color)
        thin = max(1.5 * px, cell * 0.12)
        lines = (((xx + ox + cell / 2) % (2 * cell)) < thin) | (((yy + oy + cell / 2) % (2 * cell))
                                                                  < thin)  # fmt: skip
        _blend(fabric, lines.astype(np.float32), second, rng.uniform(0.6, 1.0))


def stripes(rng: np.random.Generator, fabric: FloatImage, base: Rgb, px: float) -> None:
    """A non-tag print: plain stripes must not be read as checker."""
    h, w = fabric.shape[:2]
    width = rng.uniform(2.0, 10.0) * px
    period = width * rng.uniform(2.0, 4.0)
    coord = np.arange(h if rng.random() < 0.65 else w, dtype=np.float32)
    band = ((coord + rng.uniform(0, period)) % period < width).astype(np.float32)
    cover = np.broadcast_to(band[:, None], (h, w)) if len(coord) == h else \
        np.broadcast_to(band[None, :], (h, w))  # fmt: skip
    _blend(fabric, np.ascontiguousarray(cover), contrasting(rng, base), rng.uniform(0.4, 1.0))


def lowres_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> FloatImage:
    low = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC), np.float32)
