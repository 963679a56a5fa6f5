"""Figures the course draws more than once. Each function returns a matplotlib ``Figure``.

>>> from bgekit import viz
>>> fig = viz.similarity_heatmap(sims, labels, labels)   # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _short(s: str, n: int = 38) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def similarity_heatmap(matrix: np.ndarray, labels_y: Sequence[str], labels_x: Sequence[str] | None = None,
                       title: str = "cosine similarity", annotate: bool = True, vmin: float | None = None,
                       vmax: float | None = None):
    """A heatmap of a (len(labels_y), len(labels_x)) score matrix, with the values written in."""
    plt = _plt()
    m = np.asarray(matrix, dtype=float)
    labels_x = list(labels_y) if labels_x is None else list(labels_x)
    if m.shape != (len(labels_y), len(labels_x)):
        raise ValueError(f"matrix has shape {m.shape}, expected ({len(labels_y)}, {len(labels_x)}) from the labels")
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * m.shape[1], 0.9 + 0.5 * m.shape[0]))
    im = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(m.shape[1]), [_short(s, 24) for s in labels_x], rotation=45, ha="right")
    ax.set_yticks(range(m.shape[0]), [_short(s) for s in labels_y])
    if annotate:
        mid = (np.nanmax(m) + np.nanmin(m)) / 2
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if m[i, j] > mid else "white")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def score_histograms(groups: Mapping[str, Sequence[float]], title: str = "score distribution",
                     xlabel: str = "score", bins: int = 40, density: bool = True):
    """Overlaid histograms, one per named group (e.g. relevant vs unrelated pairs)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    vals = [np.asarray(v, dtype=float) for v in groups.values()]
    lo = min(v.min() for v in vals if v.size)
    hi = max(v.max() for v in vals if v.size)
    edges = np.linspace(lo, hi, bins + 1)
    for (name, v) in zip(groups, vals):
        ax.hist(v, bins=edges, alpha=0.55, density=density, label=f"{name} (n={v.size}, mean {v.mean():.2f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density" if density else "count")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def umap_scatter(vectors: np.ndarray, labels: Sequence[str], title: str = "UMAP of embeddings",
                 metric: str = "cosine", seed: int = 0, n_neighbors: int | None = None):
    """Project vectors to 2-D with UMAP and colour the points by label."""
    import umap

    plt = _plt()
    x = np.asarray(vectors, dtype=np.float32)
    if len(x) != len(labels):
        raise ValueError(f"{len(x)} vectors but {len(labels)} labels")
    nn = n_neighbors or max(2, min(15, len(x) // 4))
    xy = umap.UMAP(n_neighbors=nn, min_dist=0.3, metric=metric, random_state=seed, n_jobs=1).fit_transform(x)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for lab in dict.fromkeys(labels):
        idx = [i for i, name in enumerate(labels) if name == lab]
        ax.scatter(xy[idx, 0], xy[idx, 1], s=40, label=lab, alpha=0.85)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def curves(series: Mapping[str, Sequence[float]], title: str = "", xlabel: str = "step", ylabel: str = "",
           x: Mapping[str, Sequence[float]] | Sequence[float] | None = None, logx: bool = False, marker: str = ""):
    """Line plot of one or more named series (loss curves, recall@k, ...)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, ys in series.items():
        xs = x.get(name) if isinstance(x, Mapping) else x
        xs = list(range(1, len(ys) + 1)) if xs is None else xs
        ax.plot(xs, ys, marker=marker, label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def flow(steps: Sequence[tuple[str, str]], title: str = "", per_row: int = 4):
    """A pipeline as boxes joined by arrows, read left to right, row by row (e.g. notebook 06's RAG flow).

    Args:
        steps: ``(name, detail)`` per stage, in order; the name is drawn bold in the box, the detail (what the
            stage uses or produces, may hold ``\\n``) under it.
        title: the figure title.
        per_row: boxes per row before the flow wraps to the next row.

    Raises:
        ValueError: no steps, or ``per_row < 1``.
    """
    if not steps or per_row < 1:
        raise ValueError(f"flow needs at least one step and per_row >= 1, got {len(steps)} steps, per_row={per_row}")
    plt = _plt()
    from matplotlib.patches import FancyBboxPatch

    rows = (len(steps) + per_row - 1) // per_row
    fig, ax = plt.subplots(figsize=(2.6 * min(per_row, len(steps)), 1.9 * rows))
    w, h, gap = 2.0, 0.7, 0.6
    centres = [((k % per_row) * (w + gap), -(k // per_row) * 1.9) for k in range(len(steps))]
    for k, ((name, detail), (x, y)) in enumerate(zip(steps, centres)):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05", fc="#e8f0fb",
                                    ec="#3b6ea8"))
        ax.text(x, y, name, ha="center", va="center", fontsize=10, weight="bold")
        ax.text(x, y - h / 2 - 0.12, detail, ha="center", va="top", fontsize=7.5, color="#333")
        if k:
            (x0, y0), same_row = centres[k - 1], k % per_row != 0
            start, end = ((x0 + w / 2, y0), (x - w / 2, y)) if same_row else ((x0, y0 - h / 2 - 0.75), (x, y + h / 2))
            ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", lw=1.4, color="#3b6ea8"))
    xs, ys = [c[0] for c in centres], [c[1] for c in centres]
    ax.set_xlim(min(xs) - w / 2 - 0.2, max(xs) + w / 2 + 0.2)
    ax.set_ylim(min(ys) - h / 2 - 1.0, max(ys) + h / 2 + 0.2)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
