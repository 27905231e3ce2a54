"""Exploratory report of a click dataset: what an ML engineer looks at before training.

Written as markdown plus PNGs so it can be read in a browser or a pull request. Click rows are
sampled from the head of every file: rows within a file are i.i.d., so that is an unbiased
sample and costs one small read per file instead of a pass over the whole set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure
from sklearn.cluster import MiniBatchKMeans

from mlsys.recommender.data.dataset import ClickDataset
from mlsys.recommender.data.schema import CLICKS_SCHEMA, REQUESTS_SCHEMA, open_parquet, read_columns
from mlsys.recommender.geo import EARTH_RADIUS_M, haversine_m

FloatArray = npt.NDArray[np.float64]


@dataclass
class ClickSample:
    users: npt.NDArray[np.int64]
    restaurants: npt.NDArray[np.int64]
    clicks: npt.NDArray[np.float32]


def sample_clicks(dataset: ClickDataset, split: str, rows: int) -> ClickSample:
    files = dataset.files(split)
    per_file = max(1, rows // len(files))
    users, rests, clicks = [], [], []
    for cf in files:
        pf = open_parquet(cf.path, CLICKS_SCHEMA)
        batch = next(
            pf.iter_batches(batch_size=per_file, columns=["user_id", "restaurant_id", "click"])
        )
        users.append(batch.column("user_id").to_numpy())
        rests.append(batch.column("restaurant_id").to_numpy())
        clicks.append(batch.column("click").to_numpy().astype(np.float32))
    return ClickSample(np.concatenate(users), np.concatenate(rests), np.concatenate(clicks))


def _save(fig: Figure, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    return name


def _feature_grid(x: npt.NDArray[np.float32], title: str, out: Path, name: str) -> str:
    cols = 10
    rows = (x.shape[1] + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 1.7 * rows), squeeze=False)
    for j, ax in enumerate(axes.flat):
        if j < x.shape[1]:
            counts, edges = np.histogram(x[:, j], bins=60)
            ax.stairs(counts, edges, fill=True, color="#4c72b0")  # one artist, not 60 bars
            ax.set_title(f"f{j:02d}", fontsize=8)
            ax.tick_params(labelsize=6)
        else:
            ax.axis("off")
    fig.suptitle(title)
    return _save(fig, out, name)


def _kmeans(x: npt.NDArray[np.float32], k: int, seed: int) -> MiniBatchKMeans:
    return MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=4096).fit(x)


def _elbow(
    x: npt.NDArray[np.float32], seed: int = 0
) -> tuple[FloatArray, FloatArray, MiniBatchKMeans]:
    """Relative inertia for k = 2..15 (the elbow) and the k = 10 fit, on a sample."""
    ks = np.arange(2, 16)
    fits = [_kmeans(x, int(k), seed) for k in ks]
    inertia = np.array([f.inertia_ for f in fits], dtype=np.float64)
    return inertia / inertia[0], ks.astype(np.float64), fits[int(np.flatnonzero(ks == 10)[0])]


def _percentiles(x: npt.ArrayLike) -> str:
    return " | ".join(f"{v:.0f}" for v in np.percentile(np.asarray(x, np.float64), [5, 50, 95]))


def _pca2(x: npt.NDArray[np.float32]) -> FloatArray:
    centred = x.astype(np.float64) - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return np.asarray(centred @ vt[:2].T, np.float64)


def write_data_report(
    dataset: ClickDataset, out: Path, sample_rows: int = 1_000_000, seed: int = 0
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    users = dataset.user_features()
    rests = dataset.restaurant_features()
    locs = dataset.restaurant_locations()
    lines = [f"# Data report: `{dataset.root}`", ""]
    m = dataset.manifest
    origin = (
        f"mlsys generator v{m['generator_version']}, scale `{m['scale']}`, seed {m['seed']}"
        if m
        else "the kit (no manifest)"
    )
    lines += [
        f"Origin: {origin}.",
        "",
        "| table | rows |",
        "|---|---|",
        f"| users (30 features) | {dataset.n_users:,} |",
        f"| restaurants (10 features + lat/lon) | {dataset.n_restaurants:,} |",
        f"| train clicks ({len(dataset.files('train'))} files) | {dataset.rows('train'):,} |",
        f"| test clicks ({len(dataset.files('test'))} files) | {dataset.rows('test'):,} |",
        "",
    ]

    # Clicks: rate, and how well the generative score separates them.
    train = sample_clicks(dataset, "train", sample_rows)
    test = sample_clicks(dataset, "test", max(1, sample_rows // 10))
    score = np.einsum(
        "ij,ij->i",
        users[train.users, :10].astype(np.float64),
        rests[train.restaurants].astype(np.float64),
    )
    p = 1.0 / (1.0 + np.exp(-score))
    bayes = float(np.mean(np.maximum(p, 1 - p)))
    majority = max(float(train.clicks.mean()), 1 - float(train.clicks.mean()))
    lines += [
        "## Clicks",
        "",
        f"Sampled {len(train.clicks):,} train and {len(test.clicks):,} test rows "
        "(the head of every file).",
        "",
        "| | value |",
        "|---|---|",
        f"| click rate, train | {train.clicks.mean():.4f} |",
        f"| click rate, test | {test.clicks.mean():.4f} |",
        f"| accuracy of always predicting the majority class | {majority:.4f} |",
        f"| Bayes-optimal accuracy (knowing the generator's score) | {bayes:.4f} |",
        "",
        "The click probability is `sigmoid(user.f00..f09 . restaurant.f00..f09)`: only the",
        "first ten user features matter, through an interaction the model must learn. The gap",
        "between the majority baseline and the Bayes accuracy is what a model can win.",
        "",
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    bins = np.linspace(np.percentile(score, 0.5), np.percentile(score, 99.5), 40)
    idx = np.clip(np.digitize(score, bins) - 1, 0, len(bins) - 2)
    rate = np.bincount(idx, weights=train.clicks, minlength=len(bins) - 1) / np.maximum(
        np.bincount(idx, minlength=len(bins) - 1), 1
    )
    centres = (bins[:-1] + bins[1:]) / 2
    axes[0].plot(centres, rate, "o", ms=3, label="observed click rate")
    axes[0].plot(centres, 1 / (1 + np.exp(-centres)), "-", label="sigmoid(score)")
    axes[0].set(xlabel="generator score  u[:10] . r", ylabel="click rate", title="Click rule")
    axes[0].legend()
    axes[1].hist(score, bins=80, color="#4c72b0")
    axes[1].set(xlabel="generator score", ylabel="rows", title="Score distribution (sample)")
    lines += [f"![click rule]({_save(fig, out, 'click_rule.png')})", ""]

    # Features.
    lines += ["## Features", ""]
    user_sample = users[rng.choice(len(users), min(len(users), 100_000), replace=False)]
    user_png = _feature_grid(user_sample, "User features (100k sample)", out, "user_features.png")
    rest_png = _feature_grid(rests, "Restaurant features", out, "restaurant_features.png")
    stats = np.column_stack([users.mean(0), users.std(0), users.min(0), users.max(0)])
    lines += [
        f"User features: mean of means {stats[:, 0].mean():+.3f}, "
        f"mean std {stats[:, 1].mean():.3f}, "
        f"range [{stats[:, 2].min():.2f}, {stats[:, 3].max():.2f}]. Raw scale is fed to the model "
        "(the task fixes the input), so no normalisation is applied.",
        "",
        f"![user features]({user_png})",
        "",
        f"![restaurant features]({rest_png})",
        "",
    ]

    # Cluster structure.
    sample_u = users[rng.choice(len(users), min(len(users), 20_000), replace=False)]
    inertia, ks, user_kmeans = _elbow(sample_u, seed)
    xy = _pca2(sample_u)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(ks, inertia, "o-")
    axes[0].set(xlabel="k", ylabel="inertia / inertia(k=2)", title="k-means elbow (user features)")
    axes[1].scatter(xy[:, 0], xy[:, 1], c=user_kmeans.labels_, s=2, cmap="tab10")
    axes[1].set(title="Users, first two principal components", xlabel="PC1", ylabel="PC2")
    u_of = user_kmeans.predict(users[train.users])
    r_of = _kmeans(rests, 10, seed).labels_[train.restaurants]
    pair = u_of * 10 + r_of
    shown = np.bincount(pair, minlength=100)
    clicked = np.bincount(pair, weights=train.clicks, minlength=100)
    with np.errstate(invalid="ignore", divide="ignore"):
        heat = np.where(shown > 0, clicked / shown, np.nan).reshape(10, 10)
    im = axes[2].imshow(heat, cmap="RdBu_r", vmin=0, vmax=1)
    axes[2].set(
        title="Click rate by user x restaurant cluster",
        xlabel="restaurant cluster",
        ylabel="user cluster",
    )
    fig.colorbar(im, ax=axes[2])
    lines += [
        "## Cluster structure",
        "",
        "Both tables are mixtures of 10 tight Gaussian clusters (spread 2, noise 0.1): the elbow",
        "flattens at k = 10 and the principal components show well separated blobs. The click",
        "rate is set almost entirely by the pair of clusters (the heat map is nearly all 0 or 1),",
        "so a model that tells the ~100 cluster pairs apart approaches the Bayes accuracy.",
        "",
        f"![clusters]({_save(fig, out, 'clusters.png')})",
        "",
    ]

    # Requests.
    if dataset.has_requests:
        pf = open_parquet(dataset.requests_path, REQUESTS_SCHEMA)
        req = read_columns(dataset.requests_path, pf, list(REQUESTS_SCHEMA))
        lat = req.column("latitude").to_numpy()
        lng = req.column("longitude").to_numpy()
        max_dist = req.column("max_dist").to_numpy()
        sizes = req.column("size").to_numpy()
        cands = req.column("candidate_restaurant_ids").combine_chunks()
        flat = np.asarray(cands.flatten().to_numpy(), np.int64)
        lengths = np.diff(cands.offsets.to_numpy())
        owner = np.repeat(np.arange(len(lat)), lengths)
        dist = haversine_m(lat[owner], lng[owner], locs[flat, 0], locs[flat, 1])
        within = np.bincount(owner, weights=(dist <= max_dist[owner]), minlength=len(lat))
        returned = np.minimum(within, sizes)
        fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
        axes[0].hist(sizes, bins=np.arange(50, 1100, 100), rwidth=0.8)
        axes[0].set(title="size", xlabel="restaurants asked for")
        axes[1].hist(max_dist, bins=np.arange(4500, 11000, 1000), rwidth=0.8)
        axes[1].set(title="max_dist", xlabel="metres")
        axes[2].hist(within, bins=40)
        axes[2].set(title="candidates within max_dist", xlabel="candidates (of 1,000)")
        axes[3].scatter(locs[:, 1], locs[:, 0], s=0.2, alpha=0.3, label="restaurants")
        axes[3].scatter(lng[:500], lat[:500], s=2, c="red", label="requests (500)")
        axes[3].set(title="locations", xlabel="longitude", ylabel="latitude")
        axes[3].legend(markerscale=5)
        lines += [
            "## Requests",
            "",
            f"{len(lat):,} requests with {int(lengths.mean()):,} candidates each on average; "
            f"`sort_dist` true in {req.column('sort_dist').to_numpy().mean():.1%}.",
            f"Distances are great-circle (haversine, Earth radius {EARTH_RADIUS_M:,.1f} m).",
            "",
            "| | p5 | median | p95 |",
            "|---|---|---|---|",
            f"| candidates within max_dist | {_percentiles(within)} |",
            f"| restaurants returned, min(size, within) | {_percentiles(returned)} |",
            "",
            "Restaurants and users are uniform over a ~60 km box, so a 5-10 km radius keeps only a",
            "few percent of the 1,000 candidates: filtering by distance before scoring saves",
            "most of the model's work at serving time.",
            "",
            f"![requests]({_save(fig, out, 'requests.png')})",
            "",
        ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
