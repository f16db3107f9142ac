"""An explorer of selective scaling: the selector's threshold and ``T_mis`` -> ECE, share flagged, one confidence map.

The explorer holds a split's base-calibrated logits, labels and the selector's probabilities of "mispredicted", so
moving a slider only re-applies the scaling rule (no network, no selector). :meth:`SelectiveExplorer.evaluate` is
the computation behind the sliders, usable without a notebook; :meth:`SelectiveExplorer.grid_figure` is the static
figure the built book shows in place of the live widget.

>>> ex = SelectiveExplorer(base_logits, labels, mis_score)              # doctest: +SKIP
>>> ex.widget()                                                          # doctest: +SKIP
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from segcal_lib.calibrators.selective import apply_selective_scaling
from segcal_lib.metrics import CalibrationMeter
from segcal_lib.plots import COLUMN_WIDTH, right_wrong_legend, right_wrong_map, to_numpy_image

__all__ = ["SelectiveExplorer", "before_after_figure"]

IGNORE_INDEX = 255


# Legends of the small yes/no maps go under them, so that they hide none of the map.
_LEGEND_BELOW = dict(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=9, handlelength=1.0,
                     columnspacing=0.6, handletextpad=0.3)

class SelectiveExplorer:
    """Threshold and ``T_mis`` of selective scaling against image-wise ECE, pooled ECE and the share flagged.

    Parameters
    ----------
    base_logits : float tensor (N, C, H, W), the base calibrator's logits on a split.
    labels : int tensor (N, H, W), 255 = ignore.
    mis_score : float tensor (N, H, W), the selector's probability of "mispredicted".
    n_bins : ECE bins (10, equal width).

    Attributes
    ----------
    result : dict of the last :meth:`evaluate` (``image_ece``, ``pooled_ece``, ``flagged_share``, ``threshold``,
        ``t_mis``), updated whenever a slider of :meth:`widget` moves.
    """

    def __init__(self, base_logits: torch.Tensor, labels: torch.Tensor, mis_score: torch.Tensor, n_bins: int = 10):
        if base_logits.ndim != 4 or labels.shape != (base_logits.shape[0], *base_logits.shape[2:]):
            raise ValueError(f"labels must have shape (N, H, W) of base_logits (N, C, H, W), got "
                             f"{tuple(labels.shape)} and {tuple(base_logits.shape)}")
        if mis_score.shape != labels.shape:
            raise ValueError(f"mis_score must have the shape of labels {tuple(labels.shape)}, got "
                             f"{tuple(mis_score.shape)}")
        self.base_logits, self.labels, self.mis_score, self.n_bins = base_logits.float(), labels, mis_score, n_bins
        self.result: dict = {}

    def scaled(self, threshold: float, t_mis: float, index: slice | int | None = None) -> torch.Tensor:
        """Logits after selective scaling (all images, or those of ``index``)."""
        sl = slice(None) if index is None else (slice(index, index + 1) if isinstance(index, int) else index)
        return apply_selective_scaling(self.base_logits[sl], self.mis_score[sl], t_mis=t_mis, threshold=threshold)

    def evaluate(self, threshold: float, t_mis: float) -> dict:
        """Image-wise and pooled ECE and the share of valid pixels flagged, at one setting (stored in ``result``)."""
        meter = CalibrationMeter(self.base_logits.shape[1], self.n_bins, classwise=False)
        meter.update(self.scaled(threshold, t_mis), self.labels)
        res = meter.compute()
        valid = self.labels != IGNORE_INDEX
        flagged = float(((self.mis_score > threshold) & valid).sum()) / max(int(valid.sum()), 1)
        self.result = {"threshold": threshold, "t_mis": t_mis, "image_ece": res["image_ece"],
                       "pooled_ece": res["ece"], "flagged_share": flagged}
        return self.result

    def draw_image(self, threshold: float, t_mis: float, index: int = 0, axes=None, legend: bool = True):
        """Confidence before and after, and the flagged pixels, of image ``index``; returns the axes.

        ``legend=False`` leaves out the flagged map's legend (:func:`before_after_figure` draws one for all rows).
        """
        if axes is None:
            _, axes = plt.subplots(1, 3, figsize=(COLUMN_WIDTH, 2.4))
        before = self.base_logits[index].softmax(0).max(0).values.cpu().numpy()
        after = self.scaled(threshold, t_mis, index)[0].softmax(0).max(0).values.cpu().numpy()
        # The flags as a yes/no map in the book's colours: "kept" where a right prediction would be, "flagged"
        # where a wrong one would, ignore pixels as ignored.
        flag = (self.mis_score[index] > threshold).long()
        flagged_map = right_wrong_map(flag, torch.zeros_like(flag).masked_fill(self.labels[index].cpu() ==
                                                                               IGNORE_INDEX, IGNORE_INDEX))
        for ax, arr, title in ((axes[0], before, "confidence,\nbase"),
                               (axes[1], after, f"confidence, selective\n(T_mis={t_mis:.3g})")):
            im = ax.imshow(arr, cmap="cividis", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        plt.colorbar(im, ax=axes[1], fraction=0.035, pad=0.02)
        axes[2].imshow(flagged_map, interpolation="nearest")
        axes[2].set_title(f"flagged\n(threshold {threshold:.2f})", fontsize=9)
        axes[2].axis("off")
        if legend:  # under the map, so that it hides none of it
            right_wrong_legend(axes[2], names=("kept", "flagged", "ignore"), **_LEGEND_BELOW)
        return axes

    def draw_row(self, index: int, threshold: float, t_mis: float, image=None, axes=None, legend: bool = True):
        """One row of :func:`before_after_figure`: the image, its errors, and :meth:`draw_image`'s three panels."""
        if axes is None:
            _, axes = plt.subplots(1, 5, figsize=(COLUMN_WIDTH, 1.9))
        if image is not None:
            axes[0].imshow(to_numpy_image(image), interpolation="nearest")
        axes[0].set_title("image", fontsize=9)
        axes[0].axis("off")
        axes[1].imshow(right_wrong_map(self.base_logits[index].argmax(0), self.labels[index]), interpolation="nearest")
        axes[1].set_title("errors of the\nprediction", fontsize=9)
        axes[1].axis("off")
        if legend:
            right_wrong_legend(axes[1], **_LEGEND_BELOW)
        self.draw_image(threshold, t_mis, index, axes[2:], legend=legend)
        return axes

    def grid(self, thresholds: Sequence[float], t_mis_values: Sequence[float]) -> dict:
        """Image-wise ECE (len(t_mis_values), len(thresholds)) and the share flagged (len(thresholds),) on a grid."""
        ece = np.array([[self.evaluate(th, t)["image_ece"] for th in thresholds] for t in t_mis_values])
        flagged = np.array([self.evaluate(th, t_mis_values[0])["flagged_share"] for th in thresholds])
        return {"image_ece": ece, "flagged_share": flagged}

    def grid_figure(self, thresholds: Sequence[float], t_mis_values: Sequence[float], threshold: float = 0.5,
                    t_mis: float = 1e10, index: int = 0, base_image_ece: float | None = None):
        """The static stand-in for the widget: image-wise ECE over the grid, the share flagged, and one image."""
        g = self.grid(thresholds, t_mis_values)
        fig = plt.figure(figsize=(COLUMN_WIDTH, 5.6))
        top = fig.add_gridspec(2, 3, height_ratios=[1.2, 1])
        ax = fig.add_subplot(top[0, :2])
        im = ax.imshow(g["image_ece"], aspect="auto", cmap="viridis", origin="lower")
        ax.set_xticks(range(len(thresholds)), [f"{t:.2f}" for t in thresholds], fontsize=9)
        ax.set_yticks(range(len(t_mis_values)), [f"{t:.3g}" for t in t_mis_values], fontsize=9)
        ax.set(xlabel="threshold on P(mispredicted)", ylabel="T_mis")
        best = np.unravel_index(np.nanargmin(g["image_ece"]), g["image_ece"].shape)
        ax.plot(best[1], best[0], "w*", markersize=12, label=f"lowest: {g['image_ece'][best]:.4f}")
        ax.legend(loc="upper right", fontsize=9)
        title = "image-wise ECE (10 equal-width bins)"
        if base_image_ece is not None:
            title += f"; base: {base_image_ece:.4f}"
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.04)
        ax2 = fig.add_subplot(top[0, 2])
        ax2.plot(thresholds, g["flagged_share"], "o-", color="C1")
        ax2.set(xlabel="threshold", ylabel="share of pixels flagged", ylim=(0, None))
        ax2.set_title("pixels flagged", fontsize=9)
        axes = [fig.add_subplot(top[1, i]) for i in range(3)]
        self.draw_image(threshold, t_mis, index, axes)
        fig.tight_layout()
        return fig

    def widget(self, index: int = 0, threshold: float = 0.5, log10_t_mis: float = 10.0):
        """The live explorer (ipywidgets): sliders for the threshold and log10 T_mis, a dropdown for the image."""
        import ipywidgets as w

        th = w.FloatSlider(value=threshold, min=0.05, max=0.95, step=0.05, description="threshold")
        lt = w.FloatSlider(value=log10_t_mis, min=0.0, max=10.0, step=0.25, description="log10 T_mis")
        img = w.Dropdown(options=list(range(self.base_logits.shape[0])), value=index, description="image")
        # The image is a PNG in an ipywidgets.Image, not a figure captured by an Output widget: output captured
        # while a cell runs headless (nbclient, nbmake) can leave the executor waiting (jupyter/nbclient#312).
        text, picture = w.HTML(), w.Image(format="png")

        def redraw(*_):
            t_mis = 10 ** lt.value
            r = self.evaluate(th.value, t_mis)
            text.value = (f"image-wise ECE <b>{r['image_ece']:.4f}</b> &nbsp; pooled ECE {r['pooled_ece']:.4f} "
                          f"&nbsp; flagged {r['flagged_share']:.1%} of pixels")
            fig = self.draw_image(th.value, t_mis, img.value)[0].figure
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
            plt.close(fig)
            picture.value = buf.getvalue()

        for control in (th, lt, img):
            control.observe(redraw, names="value")
        redraw()
        box = w.VBox([w.HBox([th, lt, img]), text, picture])
        box.controls = {"threshold": th, "log10_t_mis": lt, "image": img}
        return box


def before_after_figure(explorer: SelectiveExplorer, indices: Sequence[int], images: Sequence | None = None,
                        threshold: float = 0.5, t_mis: float = 1e10):
    """Rows of (image, errors, confidence before, confidence after, flagged) for the images ``indices``."""
    fig, axes = plt.subplots(len(indices), 5, figsize=(COLUMN_WIDTH, 1.6 * len(indices) + 0.4), squeeze=False)
    for row, i in zip(axes, indices, strict=True):
        explorer.draw_row(i, threshold, t_mis, None if images is None else images[i], row, legend=False)
    # One legend for every row's yes/no maps, under the figure: small maps would be hidden by their own.
    right_wrong_legend(fig, names=("correct / kept", "wrong / flagged", "ignore"), loc="lower center", ncol=3,
                       fontsize=9)
    fig.tight_layout(rect=(0, 0.4 / fig.get_figheight(), 1, 1))
    return fig
