"""Report figures as PNG bytes (matplotlib's object API with the Agg canvas: no pyplot state).

Every function returns the PNG bytes of one figure, or None when there is nothing to plot.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from npeff.errors import NpeffUserError


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The PNG bytes of a matplotlib figure (Agg, tight bounding box): every report figure."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _finite_log2(x: np.ndarray | None) -> np.ndarray:
    if x is None:
        return np.zeros(0)
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x[np.isfinite(x) & (x > 0)]
    return np.log2(x)


def ratio_histograms(kl_ratio: np.ndarray | None, norm_ratio: np.ndarray | None) -> bytes | None:
    """Histograms of log2 KL ratio and log2 PEF-norm ratio over components (paper Fig. 3)."""
    kl, nr = _finite_log2(kl_ratio), _finite_log2(norm_ratio)
    if kl.size == 0 and nr.size == 0:
        return None
    both = np.concatenate([kl, nr])
    lo, hi = float(both.min()), float(both.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 31)
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for data, label, color in (
        (kl, "log2 KL ratio", "#d95f02"),
        (nr, "log2 PEF-norm ratio", "#1b9e77"),
    ):
        if data.size:
            ax.hist(
                data,
                bins=bins,
                alpha=0.6,
                color=color,
                label=f"{label} (median {np.median(data):.2f}, ratio ×{2 ** np.median(data):.2f})",
            )
            ax.axvline(np.median(data), color=color, linestyle="--", linewidth=1)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("log2(top examples / random baseline)")
    ax.set_ylabel("components")
    ax.set_title("Top-example vs baseline ratios per component")
    ax.legend(fontsize=8)
    return png_bytes(fig)


def loss_curves(losses: dict[str, np.ndarray], log_every: int = 1) -> bytes | None:
    """Loss of the G-only then joint phases against the step (logged every ``log_every`` steps)."""
    series = [(k, np.asarray(v, dtype=np.float64).ravel()) for k, v in losses.items() if np.size(v)]
    if not series:
        return None
    fig = Figure(figsize=(6.5, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    start = 0
    for name, vals in series:
        steps = start + log_every * np.arange(vals.size)
        ax.plot(steps, vals, marker="." if vals.size < 50 else None, label=name)
        start = int(steps[-1]) + log_every
    if all((v > 0).all() for _, v in series):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Decomposition loss")
    ax.legend(fontsize=8)
    return png_bytes(fig)


def convergence_curves(
    convergence: dict[str, np.ndarray], to_final: tuple[np.ndarray, np.ndarray] | None = None
) -> bytes | None:
    """Coefficient convergence: per-component cosine of W[:, k] to the previous snapshot and, when
    snapshots were kept, to the final W (paper Fig. 5).

    Args:
      convergence: {"steps": [s], "cosine": [s, r]} (cosine to the previous snapshot).
      to_final: (steps [s'], cosine [s', r]) cosine of each snapshot with the final W, or None.
    """
    panels = []
    if convergence and np.size(convergence.get("cosine", [])):
        cos = np.asarray(convergence["cosine"], dtype=np.float64)
        cos = cos[:, None] if cos.ndim == 1 else cos
        steps = np.asarray(convergence.get("steps", np.arange(cos.shape[0])), dtype=np.float64)
        panels.append(("cosine(W snapshot, previous snapshot)", steps, cos))
    if to_final is not None and np.size(to_final[1]):
        panels.append(
            (
                "cosine(W snapshot, final W)  [paper Fig. 5]",
                np.asarray(to_final[0], float),
                np.asarray(to_final[1], float),
            )
        )
    if not panels:
        return None
    fig = Figure(figsize=(6.5 if len(panels) == 1 else 11.0, 3.4))
    for i, (ylabel, steps, cos) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.fill_between(
            steps,
            np.nanmin(cos, axis=1),
            np.nanmax(cos, axis=1),
            alpha=0.2,
            label="min–max over components",
        )
        ax.plot(
            steps, np.nanmean(cos, axis=1), marker="o", markersize=3, label="mean over components"
        )
        for level in (0.95, 0.99):
            ax.axhline(level, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Coefficient convergence")
    return png_bytes(fig)


def similarity_heatmaps(panels: list[tuple[str, np.ndarray]]) -> bytes | None:
    """One heatmap per (title, [r, r] |cos| matrix), values in [0, 1]."""
    panels = [(t, np.asarray(m)) for t, m in panels if m is not None and np.size(m)]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.8))
    for i, (title, mat) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        im = ax.imshow(mat, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("component")
        ax.set_ylabel("component")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return png_bytes(fig)


def cross_run_heatmap(
    cosine: np.ndarray, label_a: str, label_b: str, row_order=None, col_order=None
) -> bytes:
    """Heatmap of coefficient cosine [r_a, r_b] between two runs (optionally reordered)."""
    mat = np.asarray(cosine)
    rows = np.arange(mat.shape[0]) if row_order is None else np.asarray(row_order)
    cols = np.arange(mat.shape[1]) if col_order is None else np.asarray(col_order)
    mat = mat[rows][:, cols]
    fig = Figure(figsize=(6.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(mat, vmin=0.0, vmax=1.0, cmap="magma", aspect="auto", interpolation="nearest")
    # Tick labels are the components' own indices (rows/columns may be reordered into groups).
    for ids, set_ticks, set_labels in (
        (rows, ax.set_yticks, ax.set_yticklabels),
        (cols, ax.set_xticks, ax.set_xticklabels),
    ):
        if ids.size <= 48:
            set_ticks(np.arange(ids.size))
            set_labels([str(i) for i in ids], fontsize=7)
    ax.set_xlabel(f"{label_b} components")
    ax.set_ylabel(f"{label_a} components")
    ax.set_title("Coefficient cosine similarity")
    fig.colorbar(im, ax=ax)
    return png_bytes(fig)


def concept_purity_plot(
    purity: np.ndarray, shuffled_mean_purity: float, n_all: int, shuffled_n_all: float, k: int
) -> bytes:
    """Sorted per-component purity (share of top-k holding the best concept) vs the shuffled mean."""
    p = np.sort(np.asarray(purity, dtype=np.float64))[::-1]
    fig = Figure(figsize=(6.5, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(np.arange(p.size), p, width=1.0, color="#7570b3")
    ax.axhline(
        shuffled_mean_purity,
        color="#d95f02",
        linestyle="--",
        label=f"shuffled W mean purity {shuffled_mean_purity:.2f}",
    )
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("components (sorted)")
    ax.set_ylabel(f"purity of top-{k}")
    ax.set_title(
        f"{n_all} components with a concept shared by all top-{k} (shuffled: {shuffled_n_all:.1f})"
    )
    ax.legend(fontsize=8)
    return png_bytes(fig)


def image_thumbnail(image: np.ndarray, min_size: int = 64) -> bytes:
    """PNG bytes of an HxW or HxWx{1,3,4} image with floats in [0, 1], upscaled (nearest) to ≥ min_size."""
    from PIL import Image

    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW → HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise NpeffUserError(f"an image must be HxW or HxWxC, got shape {arr.shape}")
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if lo < 0.0 or hi > 1.0:  # not in [0, 1]: rescale for display only
        arr = (arr - lo) / (hi - lo if hi > lo else 1.0)
    img = Image.fromarray(np.clip(np.round(arr * 255), 0, 255).astype(np.uint8))
    scale = max(1, int(np.ceil(min_size / max(1, min(img.size)))))
    if scale > 1:
        img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
