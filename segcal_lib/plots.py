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

__all__ = ["COLUMN_WIDTH", "IGNORE_COLOR", "colorize", "confidence_histogram", "image_grid", "prediction_figure",
           "prediction_panels", "reliability_diagram", "reliability_row", "right_wrong_legend", "right_wrong_map",
           "to_numpy_image", "training_curves"]

# The book's column is about 7 inches wide at 100 dpi: figures drawn at this width keep 9 pt fonts readable.
COLUMN_WIDTH = 7.0
IGNORE_COLOR = (255, 255, 255)  # ignore pixels: white, named in every legend
# Yes/no maps: two colour-blind-safe colours (Okabe-Ito blue and vermillion), ignore in IGNORE_COLOR.
_YES_NO = {"correct": (0, 114, 178), "wrong": (213, 94, 0)}


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


def right_wrong_map(pred, label, ignore_index: int = 255) -> np.ndarray:
    """The book's yes/no map of one image: correct, wrong and ignored pixels in three colours.

    Parameters
    ----------
    pred, label : integer tensors or arrays (H, W) on any device: the predicted and the true class ids.
    ignore_index : label value of pixels without a label (default 255).

    Returns
    -------
    uint8 array (H, W, 3): Okabe-Ito blue where right, vermillion where wrong, :data:`IGNORE_COLOR` where ignored.
    Draw it with ``imshow`` and name the colours with :func:`right_wrong_legend`, not a colour bar.
    """
    pred = torch.as_tensor(pred).detach().cpu()
    label = torch.as_tensor(label).detach().cpu()
    if pred.shape != label.shape or pred.ndim != 2:
        raise ValueError(f"pred and label must both have shape (H, W), got {tuple(pred.shape)} and "
                         f"{tuple(label.shape)}")
    rgb = np.where((pred == label).cpu().numpy()[..., None], _YES_NO["correct"], _YES_NO["wrong"]).astype(np.uint8)
    rgb[(label == ignore_index).cpu().numpy()] = np.asarray(IGNORE_COLOR, dtype=np.uint8)
    return rgb


def right_wrong_legend(ax, names: Sequence[str] = ("correct", "wrong", "ignore"), **kwargs):
    """A legend naming the three colours of :func:`right_wrong_map` on ``ax`` (an axes or a figure).

    ``names``: the labels of the "yes", "no" and ignore colours (e.g. ``("kept", "flagged", "ignore")`` for a map of
    flagged pixels drawn in the same colours); ``kwargs`` go to ``ax.legend``.
    """
    from matplotlib.patches import Patch

    if len(names) != 3:
        raise ValueError(f"names must hold three labels (yes, no, ignore), got {list(names)}")
    colors = [*_YES_NO.values(), IGNORE_COLOR]
    handles = [Patch(facecolor=np.asarray(c) / 255, edgecolor="0.3", label=n) for n, c in zip(names, colors,
                                                                                             strict=True)]
    return ax.legend(handles=handles, **{"fontsize": 8, "frameon": False, **kwargs})


def _legend_patches(names, colors, ncol, fig, y=0.0):
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=np.asarray(c) / 255, edgecolor="0.3", label=n) for n, c in zip(names, colors,
                                                                                             strict=True)]
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=9, frameon=False, bbox_to_anchor=(0.5, y))


def prediction_figure(rows: Sequence[Mapping], class_names: Sequence[str], palette, ignore_index: int = 255,
                      extra: Mapping[str, Sequence] | None = None, labels_only: bool = False):
    """Image, label, prediction, confidence and right/wrong maps of a few images, at the book's column width.

    Parameters
    ----------
    rows : one mapping per image with ``image`` (3, H, W) in [0, 1] or None (then no image column), ``label``
        (H, W) ids with ``ignore_index``, ``logits`` (C, H, W).
    class_names, palette : the classes and their RGB colours (C, 3); a class legend is drawn under the figure.
    extra : optional {title: [2-D bool array per image]} drawn as further yes/no maps (e.g. boundary pixels).
    labels_only : draw only the image and label columns (``logits`` may then be None).

    Returns
    -------
    The figure. Label and prediction share the class legend; the confidence map has a ``cividis`` colour bar; the
    error map has three colours (correct, wrong, ignore) with their own legend.
    """
    extra = dict(extra or {})
    has_image = rows[0].get("image") is not None
    cols = ["image"] * has_image + ["label"] + ["prediction", "confidence", "right / wrong"] * (not labels_only)
    cols += list(extra)
    width = COLUMN_WIDTH if len(cols) > 2 else COLUMN_WIDTH * 0.6
    height = width / len(cols) * 0.8 * len(rows) + 1.0
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(width, height), squeeze=False)
    im = None
    ignore_rgb = np.asarray(IGNORE_COLOR, dtype=np.uint8)
    for r, row in enumerate(rows):
        label = torch.as_tensor(row["label"]).long()
        ignored = (label == ignore_index).cpu().numpy()
        panels = [colorize(label, palette, ignore_index, IGNORE_COLOR)]
        if not labels_only:
            logits = torch.as_tensor(row["logits"]).float()
            conf, pred = logits.softmax(0).max(0)
            panels += [colorize(pred, palette), conf.cpu().numpy(), right_wrong_map(pred, label, ignore_index)]
        if has_image:
            panels.insert(0, to_numpy_image(row["image"]))
        for masks in extra.values():
            m = np.where(np.asarray(masks[r])[..., None], (0, 0, 0), (220, 220, 220)).astype(np.uint8)
            m[ignored] = ignore_rgb
            panels.append(m)
        for c, (ax, arr) in enumerate(zip(axes[r], panels, strict=True)):
            ax.set_xticks([])
            ax.set_yticks([])
            if np.ndim(arr) == 2:
                im = ax.imshow(arr, cmap="cividis", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(arr, interpolation="nearest")
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
    names = list(class_names) + ["ignore"] + ["correct", "wrong"] * (not labels_only)
    names += [" / ".join(extra)] * bool(extra)
    colors = [tuple(c) for c in np.asarray(palette)] + [IGNORE_COLOR]
    colors += [_YES_NO["correct"], _YES_NO["wrong"]] * (not labels_only) + [(0, 0, 0)] * bool(extra)
    legend_rows = -(-len(names) // 4)
    fig.subplots_adjust(left=0.01, right=0.97 if im is None else 0.9, top=1 - 0.3 / height,
                        bottom=(0.22 * legend_rows + 0.1) / height, wspace=0.05, hspace=0.08)
    _legend_patches(names, colors, ncol=4, fig=fig)
    if im is not None:  # the confidence scale, at the right edge (a colour bar beside a column squeezes the maps)
        top, bottom = 1 - 0.3 / height, (0.22 * legend_rows + 0.1) / height
        cax = fig.add_axes((0.92, bottom + 0.1 * (top - bottom), 0.015, 0.8 * (top - bottom)))
        bar = fig.colorbar(im, cax=cax)
        bar.set_label("confidence", fontsize=8)
        bar.ax.tick_params(labelsize=8)
    return fig


def reliability_row(results: Mapping[str, Mapping], histogram: bool = True):
    """Reliability diagrams of several results side by side (with confidence histograms under them), column width.

    ``results`` maps a name to ``CalibrationMeter.compute()``; returns the figure.
    """
    n = len(results)
    fig, axes = plt.subplots(1 + histogram, n, figsize=(COLUMN_WIDTH, 3.0 * (1 + histogram) * min(1, 3 / n) + 0.4),
                             squeeze=False, gridspec_kw={"height_ratios": [3, 1.4][: 1 + histogram]})
    for k, (name, res) in enumerate(results.items()):
        reliability_diagram(res, ax=axes[0][k], title=f"{name}\npooled ECE {res['ece']:.3f}")
        axes[0][k].get_legend().remove()  # one legend under the row, never over the bars
        if histogram:
            rel = res["reliability"]
            share = np.asarray(rel["count"], dtype=float) / max(float(np.sum(rel["count"])), 1)
            edges = np.asarray(rel["bin_edges"])
            axes[1][k].bar(edges[:-1], share, width=np.diff(edges), align="edge", color="C0", edgecolor="black",
                           linewidth=0.5)
            axes[1][k].set(xlim=(0, 1), xlabel="confidence", ylabel="share of pixels" if k == 0 else None)
            axes[0][k].set_xlabel("")
    for ax in axes.flat:
        ax.tick_params(labelsize=8)
        ax.xaxis.label.set_size(9)
        ax.yaxis.label.set_size(9)
        ax.title.set_size(9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if histogram else 0.1, 1, 1))
    return fig


def training_curves(history: Mapping, smooth: int | None = None):
    """Training loss per step (raw and smoothed) and, when recorded, the train/val loss and mIoU at evaluation
    points; returns the figure. ``history`` is ``model.train_meta["history"]``."""
    loss = np.asarray(history["loss"], dtype=float)
    smooth = smooth or max(1, len(loss) // 20)
    curves = history.get("curves")
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(COLUMN_WIDTH, 2.8), squeeze=False)
    ax = axes[0][0]
    ax.plot(loss, color="0.7", linewidth=0.6, label="loss per step (augmented crops)")
    kernel = np.ones(smooth) / smooth
    ax.plot(np.arange(smooth - 1, len(loss)), np.convolve(loss, kernel, mode="valid"), color="C0",
            label=f"moving average ({smooth} steps)")
    if curves:
        for name, color in (("train", "C0"), ("val", "C1")):
            if f"{name}_loss" in curves:
                ax.plot(curves["step"], curves[f"{name}_loss"], "o-", color=color, markersize=3, linewidth=1,
                        label=f"{name} loss (whole images)")
                axes[0][1].plot(curves["step"], np.asarray(curves[f"{name}_miou"]) * 100, "o-", color=color,
                                markersize=3, linewidth=1, label=name)
        axes[0][1].set(xlabel="step", ylabel="mIoU (%)")
        axes[0][1].legend(fontsize=8)
    ax.set(xlabel="step", ylabel="cross-entropy", yscale="log")
    ax.legend(fontsize=7)
    for a in axes.flat:
        a.tick_params(labelsize=8)
    fig.tight_layout()
    return fig
