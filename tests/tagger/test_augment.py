"""Training views: repeatable from their seed, and recoloured in a share of them."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from mlsys.tagger.training.augment import augment


def _red_square() -> Image.Image:
    img = Image.new("RGB", (96, 96), (235, 235, 235))
    img.paste((200, 30, 30), (24, 24, 72, 72))
    return img


def test_same_seed_same_view() -> None:
    img = _red_square()
    a = np.asarray(augment(img, random.Random(7)))
    b = np.asarray(augment(img, random.Random(7)))
    assert np.array_equal(a, b)


def test_some_views_lose_the_labelled_colour_and_keep_the_shape() -> None:
    """Recolouring (grayscale or a turned hue) must happen in a minority-to-half of views,
    and never move the garment: the red square stays where it was, only its colour changes."""
    img = _red_square()
    still_red = grey = other = 0
    for seed in range(200):
        view = np.asarray(augment(img, random.Random(seed))).astype(int)
        r, g, b = view[40:56, 40:56].reshape(-1, 3).mean(0)  # centre of the square
        assert abs(r - g) + abs(g - b) > 20 or max(r, g, b) < 180  # still a distinct garment
        if r > g + 60 and r > b + 60:
            still_red += 1
        elif abs(r - g) < 12 and abs(g - b) < 12:
            grey += 1
        else:
            other += 1
    assert 60 < still_red < 140
    assert 25 < grey < 80
    assert 35 < other < 110
