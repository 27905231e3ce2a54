"""Draw one garment photo from its latents: silhouette, fabric, prints, details, camera.

The garment is built in *units* of shoulder width (neck centre at the origin, y down) from
the shape latents (`latents.Shape`), then rasterised at twice the output resolution and
halved, which anti-aliases every edge for the price of one box filter. The order follows how
a photo comes to be:

    silhouette mask -> fabric colour -> prints (tags, distractors) -> folds and seams
    -> buttons -> camera (rotation, perspective, zoom, crop) onto a background with a shadow
    -> lighting -> blur and sensor noise -> JPEG

The silhouette comes from `garment.build_geometry`, the colours and prints from `fabric`;
this module samples an item's non-shape draws and makes the photo. Everything is drawn with
Pillow and numpy from one `numpy.random.Generator`, so an item's bytes depend only on its
seed. Nothing here may depend on the category except through the
shape latents: that is what keeps `latents.posterior` exact.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mlsys.tagger.data.fabric import (
    COLOR_WEIGHTS,
    FloatImage,
    Rgb,
    base_fabric,
    checker,
    floral,
    jitter,
    lowres_noise,
    pick,
    polka,
    stripes,
)
from mlsys.tagger.data.garment import Point, build_geometry
from mlsys.tagger.data.latents import Shape

OUTPUT_SIZE = 256
SUPERSAMPLE = 2

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


# --------------------------------------------------------------------------- backgrounds


BG_LIGHT: tuple[Rgb, ...] = (
    (236, 236, 234), (245, 243, 238), (222, 218, 210), (205, 205, 208), (238, 230, 218),
    (250, 250, 250), (214, 222, 226), (232, 224, 228),
)  # fmt: skip
BG_DARK: tuple[Rgb, ...] = ((120, 86, 60), (90, 90, 94), (60, 62, 66), (150, 120, 90))


def background(rng: np.random.Generator, size: int) -> tuple[FloatImage, str]:
    kind = str(rng.choice(["solid", "gradient", "wood", "sheet", "tiles", "carpet"],
                          p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.1]))  # fmt: skip
    base = np.asarray(jitter(rng, pick(rng, BG_DARK if rng.random() < 0.15 else BG_LIGHT), 6),
                      np.float32)  # fmt: skip
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "solid":
        img = np.broadcast_to(base, (size, size, 3)).copy()
    elif kind == "gradient":
        other = np.asarray(jitter(rng, pick(rng, BG_LIGHT), 10), np.float32)
        ang = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + (xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang), 0, 1)
        img = base * (1 - t[..., None]) + other * t[..., None]
    elif kind == "wood":
        wood = np.asarray(jitter(rng, pick(rng, ((168, 124, 84), (196, 160, 118), (120, 84, 58),
                                                   (210, 190, 160))), 8), np.float32)  # fmt: skip
        plank = rng.uniform(0.12, 0.25)
        idx = (xx // plank).astype(int)
        shade = 1 + 0.08 * np.sin(idx * 12.9898) + 0.04 * np.sin(yy * rng.uniform(30, 70)
                                                                  + idx * 3.1)  # fmt: skip
        grain = 0.03 * np.sin((yy * 200 + 8 * np.sin(xx * 40)) * rng.uniform(0.5, 1.5))
        img = wood * (shade + grain)[..., None]
        img *= np.where((xx % plank) < 0.006, 0.7, 1.0)[..., None]
    elif kind == "sheet":
        img = base * (1 + 0.06 * lowres_noise(rng, size, size, 5))[..., None]
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
    striped = bool(rng.random() < STRIPE_RATE) and not tags["checker"]
    return Item(
        shape=shape, color=color, tags=tags, stripes=striped,
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
    fabric, base_rgb = base_fabric(rng, item.color, lh, lw)
    px = scale * ss / (size * 0.8 / 1.6)  # print sizes follow the garment's on-screen scale
    px = float(np.clip(px, 0.7 * ss, 1.4 * ss))
    if item.stripes:
        stripes(rng, fabric, base_rgb, px)
    if item.tags["checker"]:
        checker(rng, fabric, base_rgb, px)
    if item.tags["floral"]:
        floral(rng, fabric, base_rgb, px)
    if item.tags["polka dot"]:
        polka(rng, fabric, base_rgb, px)
    if rng.random() < HEATHER_RATE:
        fabric *= (1 + 0.05 * rng.normal(0, 1, (lh, lw)).astype(np.float32))[..., None]

    # Folds, inside-back regions, seams and outlines: one multiplicative shade layer.
    metallic = item.color in ("GOLD", "SILVER")
    shade = 1 + (0.16 if metallic else 0.05) * lowres_noise(rng, lh, lw, int(rng.integers(4, 8)))
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
    bcol = pick(rng, ((245, 245, 240), (30, 30, 30), (200, 180, 140), (120, 80, 50),
                       jitter(rng, base_rgb, 25)))  # fmt: skip
    ring = tuple(int(c * 0.6) for c in bcol)
    for bx, by, br in g.buttons:
        cx, cy, rr = ox + s2 * bx, oy + s2 * by, s2 * br
        d.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=(*bcol, 255), outline=(*ring, 255),
                  width=max(1, int(rr * 0.25)))  # fmt: skip
    if item.hanger:
        hanger = Image.new("RGBA", (lw, lh), (0, 0, 0, 0))
        hd = ImageDraw.Draw(hanger)
        hcol = pick(rng, ((150, 105, 65), (30, 30, 32), (235, 235, 235), (170, 170, 176)))
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
