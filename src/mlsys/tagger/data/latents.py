"""What a garment *is* before it is drawn: its category and the shape latents that show it.

Categories overlap the way they do on a marketplace: a blouse with a point collar, a full
button placket, long sleeves and a shirttail hem is a shirt in all but its label; a mini dress
and a casual dress differ only by length, and their length ranges overlap. Because the
generator draws the label first and the shape second, it knows p(shape | category) exactly and
so the Bayes posterior p(category | shape). That posterior gives the accuracy ceiling:

    ceiling = mean over items of max_c p(c | shape)

which is the expected top-1 accuracy of the best possible classifier that sees the shape
latents perfectly. Everything else the renderer varies (colour, patterns, fabric, hanger,
background, lighting, sleeve angle, widths, ...) is drawn independently of the category given
these latents, so it carries no category information and the posterior is exact. A classifier
sees the latents only through pixels, so the ceiling is an upper bound on image accuracy.

Shape latents (class-informative):
    length   hem length / shoulder width, Normal(mu_c, sigma_c)
    sleeve   one of SLEEVES
    neck     one of NECKS
    placket  one of PLACKETS (button placket: none, half, full)
    hem      one of HEMS
The four discrete latents are independent given the class except for physically impossible
combinations (a collar on spaghetti straps), which are removed and the rest renormalised.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mlsys.tagger.schema import CATEGORIES

SLEEVES = ("straps_thin", "straps_wide", "sleeveless", "cap", "short", "puff", "flutter",
           "three_quarter", "long")  # fmt: skip
NECKS = ("point_collar", "band_collar", "peter_pan", "round", "v", "scoop", "square", "tie")
PLACKETS = ("none", "half", "full")
HEMS = ("straight", "shirttail", "peplum", "ruffle", "tiered")

# Marketplace-ish category shares.
PRIOR: dict[str, float] = {
    "BLOUSES": 0.22, "CASUAL_DRESSES": 0.20, "MINI_DRESSES": 0.18, "SHIRTS": 0.20,
    "TANK_TOPS": 0.20,
}  # fmt: skip

_DRESS_SLEEVE = (0.18, 0.12, 0.12, 0.08, 0.22, 0.08, 0.08, 0.04, 0.08)
_DRESS_NECK = (0.08, 0.03, 0.05, 0.25, 0.25, 0.17, 0.12, 0.05)
_DRESS_PLACKET = (0.75, 0.12, 0.13)
_DRESS_HEM = (0.55, 0.0, 0.05, 0.25, 0.15)


@dataclass(frozen=True)
class ClassModel:
    length_mu: float
    length_sigma: float
    sleeve: tuple[float, ...]
    neck: tuple[float, ...]
    placket: tuple[float, ...]
    hem: tuple[float, ...]


MODELS: dict[str, ClassModel] = {
    "TANK_TOPS": ClassModel(
        1.30,
        0.12,
        (0.40, 0.45, 0.15, 0, 0, 0, 0, 0, 0),
        (0, 0, 0, 0.15, 0.25, 0.45, 0.15, 0),
        (0.92, 0.08, 0.0),
        (0.70, 0.25, 0.0, 0.05, 0.0),
    ),
    "SHIRTS": ClassModel(
        1.42,
        0.09,
        (0, 0, 0.03, 0.02, 0.30, 0, 0, 0.05, 0.60),
        (0.80, 0.12, 0.01, 0.03, 0.03, 0, 0, 0.01),
        (0.03, 0.07, 0.90),
        (0.35, 0.63, 0.0, 0.02, 0.0),
    ),
    "BLOUSES": ClassModel(
        1.30,
        0.11,
        (0.03, 0.02, 0.12, 0.08, 0.15, 0.14, 0.12, 0.14, 0.20),
        (0.16, 0.10, 0.08, 0.20, 0.20, 0.10, 0.06, 0.10),
        (0.50, 0.25, 0.25),
        (0.45, 0.15, 0.20, 0.20, 0.0),
    ),
    "MINI_DRESSES": ClassModel(2.05, 0.17, _DRESS_SLEEVE, _DRESS_NECK, _DRESS_PLACKET, _DRESS_HEM),
    "CASUAL_DRESSES": ClassModel(
        2.70, 0.28, _DRESS_SLEEVE, _DRESS_NECK, _DRESS_PLACKET, _DRESS_HEM
    ),
}

# Above this length the body is drawn with a dress's geometry (waist seam, flared skirt).
DRESS_LENGTH = 1.72
_COLLARS = {"point_collar", "band_collar", "peter_pan", "tie"}


def valid(sleeve: str, neck: str, placket: str, hem: str) -> bool:
    """Combinations that cannot be sewn (or drawn) are excluded from every class alike."""
    if sleeve in ("straps_thin", "straps_wide") and neck in _COLLARS:
        return False
    return not (sleeve == "straps_thin" and placket != "none")


Combo = tuple[int, int, int, int]
COMBOS: list[Combo] = [
    c
    for c in itertools.product(
        range(len(SLEEVES)), range(len(NECKS)), range(len(PLACKETS)), range(len(HEMS))
    )
    if valid(SLEEVES[c[0]], NECKS[c[1]], PLACKETS[c[2]], HEMS[c[3]])
]


def _combo_pmf(model: ClassModel) -> npt.NDArray[np.float64]:
    w = np.array(
        [model.sleeve[s] * model.neck[n] * model.placket[p] * model.hem[h] for s, n, p, h in COMBOS]
    )
    out: npt.NDArray[np.float64] = w / w.sum()
    return out


# pmf[class index, combo index]: p(discrete latents | class), exact.
COMBO_PMF = np.stack([_combo_pmf(MODELS[c]) for c in CATEGORIES])
PRIOR_VEC = np.array([PRIOR[c] for c in CATEGORIES])
_COMBO_INDEX = {c: i for i, c in enumerate(COMBOS)}


@dataclass(frozen=True)
class Shape:
    category: str
    length: float
    sleeve: str
    neck: str
    placket: str
    hem: str


def sample_shape(rng: np.random.Generator) -> Shape:
    c = int(rng.choice(len(CATEGORIES), p=PRIOR_VEC))
    category = CATEGORIES[c]
    model = MODELS[category]
    length = float(rng.normal(model.length_mu, model.length_sigma))
    s, n, p, h = COMBOS[int(rng.choice(len(COMBOS), p=COMBO_PMF[c]))]
    return Shape(category, length, SLEEVES[s], NECKS[n], PLACKETS[p], HEMS[h])


def posterior(shape: Shape) -> npt.NDArray[np.float64]:
    """p(category | shape latents), in CATEGORIES order."""
    combo = _COMBO_INDEX[
        (
            SLEEVES.index(shape.sleeve),
            NECKS.index(shape.neck),
            PLACKETS.index(shape.placket),
            HEMS.index(shape.hem),
        )
    ]
    like = np.empty(len(CATEGORIES))
    for i, c in enumerate(CATEGORIES):
        m = MODELS[c]
        z = (shape.length - m.length_mu) / m.length_sigma
        like[i] = math.exp(-0.5 * z * z) / m.length_sigma * COMBO_PMF[i, combo]
    post = PRIOR_VEC * like
    total = post.sum()
    return post / total if total > 0 else PRIOR_VEC.copy()


def ceiling_report(
    posteriors: npt.NDArray[np.float64], labels: npt.NDArray[np.int64]
) -> dict[str, float]:
    """The accuracy a Bayes-optimal classifier of the shape latents gets on these items.

    expected_top1: mean max posterior (the ceiling; does not depend on which label was drawn)
    realised_top1: share of items whose label is the posterior's argmax (a noisy estimate of it)
    expected_top2: mean of the two largest posteriors summed (the top-2 ceiling)
    ambiguous_share: share of items whose max posterior is below 0.9
    """
    top = np.sort(posteriors, axis=1)[:, ::-1]
    return {
        "expected_top1": round(float(top[:, 0].mean()), 4),
        "realised_top1": round(float((posteriors.argmax(1) == labels).mean()), 4),
        "expected_top2": round(float((top[:, 0] + top[:, 1]).mean()), 4),
        "ambiguous_share": round(float((top[:, 0] < 0.9).mean()), 4),
        "items": len(labels),
    }
