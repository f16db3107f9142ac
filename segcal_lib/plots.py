"""Figures of the book: reliability diagrams, confidence histograms, label/confidence/error maps.

Every function takes plain results (the dict of :meth:`segcal_lib.metrics.CalibrationMeter.compute`, tensors or arrays)
and an optional matplotlib ``ax``; it returns the axes (or figure) so a chapter can adjust titles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from segcal_lib.checks import check_logits_labels

__all__ = ["colorize", "confidence_histogram", "image_grid", "prediction_panels", "reliability_diagram",
           "to_numpy_image"]


def _axes(ax, figsize=(4, 4)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def reliability_diagram(result: Mapping, ax=None, title: str | None = None, color: str = "C0",
                        label: str | None = None):
    """Bar chart of accuracy against confidence per bin, with the gap to the diagonal shaded.

    Parameters
    ----------
    result : output of ``CalibrationMeter.compute()`` (uses ``reliability``, ``ece``, ``n_bins``).
    ax : matplotlib axes to draw on (a new figure when None).
    title : axes title; defaults to the pooled ECE with its binning.
    """
    ax = _axes(ax)
    rel = result["reliability"]
    edges, count = np.asarray(rel["bin_edges"]), np.asarray(rel["count"])
    acc, conf = np.asarray(rel["accuracy"]), np.asarray(rel["confidence"])
    width = np.diff(edges)
    filled = count > 0
    ax.bar(edges[:-1][filled], acc[filled], width=width[filled], align="edge", color=color, alpha=0.75,
           edgecolor="black", linewidth=0.5, label=label or "accuracy")
    # The gap between mean confidence and accuracy is what ECE averages (weighted by the bin's pixel share).
    ax.bar(edges[:-1][filled], (conf - acc)[filled], bottom=acc[filled], width=width[filled], align="edge",
           color="tab:red", alpha=0.25, edgecolor="tab:red", linewidth=0.5, hatch="//", label="gap")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.set_title(title or f"ECE = {result['ece']:.4f} ({result['n_bins']} equal-width bins)")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def confidence_histogram(result: Mapping, ax=None, title: str | None = None, color: str = "C0"):
    """Share of pixels per confidence bin, with the mean confidence and the accuracy marked."""
    ax = _axes(ax, figsize=(4, 3))
    rel = result["reliability"]
    edges, count = np.asarray(rel["bin_edges"]), np.asarray(rel["count"], dtype=float)
    share = count / max(count.sum(), 1)
    ax.bar(edges[:-1], share, width=np.diff(edges), align="edge", color=color, alpha=0.75, edgecolor="black",
           linewidth=0.5)
    mean_conf = np.nansum(np.asarray(rel["confidence"]) * count) / max(count.sum(), 1)
    ax.axvline(result["accuracy"], color="tab:green", linestyle="-", label=f"accuracy {result['accuracy']:.3f}")
    ax.axvline(mean_conf, color="tab:red", linestyle="--", label=f"mean confidence {mean_conf:.3f}")
    ax.set(xlim=(0, 1), xlabel="confidence", ylabel="share of pixels")
    ax.set_title(title or f"{result['n_pixels']:,} pixels")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def to_numpy_image(image) -> np.ndarray:
    """An image tensor (3, H, W) in [0, 1] (or an array (H, W, 3)) as a float array (H, W, 3) for ``imshow``."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.transpose(1, 2, 0)
    return np.clip(np.asarray(image, dtype=float), 0, 1)


def colorize(label, palette: Sequence, ignore_index: int = 255, ignore_color=(0, 0, 0)) -> np.ndarray:
    """A label map (H, W) of class ids as an RGB uint8 array (H, W, 3) using ``palette`` (C, 3); ignore is black."""
    label = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    palette = np.asarray(palette, dtype=np.uint8)
    out = np.empty((*label.shape, 3), dtype=np.uint8)
    out[:] = ignore_color
    valid = label != ignore_index
    if (label[valid] >= len(palette)).any() or (label[valid] < 0).any():
        raise ValueError(f"label values must lie in [0, {len(palette)}) or equal ignore_index={ignore_index}")
    out[valid] = palette[label[valid]]
    return out


def image_grid(panels: Sequence[Sequence[tuple[str, np.ndarray]]], cell: float = 2.6, cmap_for_2d: str = "magma",
               vmin: float | None = 0.0, vmax: float | None = 1.0):
    """Show rows of (title, array) panels; 2-D arrays are drawn with ``cmap_for_2d`` and a shared colour range.

    Returns the figure.
    """
    rows, cols = len(panels), max(len(r) for r in panels)
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols * 1.3, cell * rows), squeeze=False)
    for r, row in enumerate(panels):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(row):
                continue
            title, arr = row[c]
            arr = np.asarray(arr)
            if arr.ndim == 2:
                im = ax.imshow(arr, cmap=cmap_for_2d, vmin=vmin, vmax=vmax, interpolation="nearest")
                fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02)
            else:
                ax.imshow(arr, interpolation="nearest")
            ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def prediction_panels(image, label, logits, palette, ignore_index: int = 255) -> list[tuple[str, np.ndarray]]:
    """Panels for one image: the image, its label, the prediction, the confidence map and the error map.

    ``logits`` float (C, H, W) and ``label`` integer (H, W), on any device (they are copied to the CPU). The error map
    is 1 where the prediction is wrong, 0 where right, and NaN where ignored.
    """
    logits = torch.as_tensor(logits).detach().cpu()
    label_t = torch.as_tensor(label).detach().cpu()
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (C, H, W), got {tuple(logits.shape)}")
    check_logits_labels(logits[None], label_t[None], ignore_index=ignore_index)
    prob = logits.float().softmax(0)
    conf, pred = prob.max(0)
    wrong = (pred != label_t).float().masked_fill(label_t == ignore_index, float("nan"))
    return [("image", to_numpy_image(image)), ("label", colorize(label_t, palette, ignore_index)),
            ("prediction", colorize(pred, palette)), ("confidence", conf.cpu().numpy()), ("error", wrong.cpu().numpy())]
