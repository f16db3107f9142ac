"""Per-image sufficient statistics, the metrics computed from them, and bootstrap intervals over images.

Every metric the factor chapters report is a ratio of sums over images: pooled ECE from per-bin sums of pixel counts,
confidences and hits; NLL from the sum of ``-log p_y``; mIoU from the confusion matrix; image-wise ECE from each
image's own bins. :class:`ImageSums` keeps those sums image by image (O(images x bins + images x classes^2) memory), so
any resample of the images gives its metrics without touching a pixel again. That is what the bootstrap over images
needs: a resample is a vector of image weights (how often each image was drawn), and every metric is evaluated on the
weighted sums.

The per-image numbers come from :class:`~segcal_lib.metrics.CalibrationMeter` and
:class:`~segcal_lib.metrics.SegmentationMeter` (one per image), so the bins, the ignore label and the float64
accumulation are exactly the meters'.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from segcal_lib.metrics import IGNORE_INDEX, CalibrationMeter, SegmentationMeter
from segcal_lib.stats import DEFAULT_LEVEL, DEFAULT_N_BOOT, bootstrap_ci

__all__ = ["METRICS", "ImageSums", "SumsCollector", "bootstrap_weights", "metric_rows", "paired_stat"]

#: Metrics of :meth:`ImageSums.metrics`, in the order tables show them. ``over_confidence`` is mean confidence minus
#: accuracy (a fraction; positive means over-confident).
METRICS = ("image_ece", "pooled_ece", "nll", "miou", "accuracy", "confidence", "over_confidence")


def bootstrap_weights(n: int, n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> np.ndarray:
    """Bootstrap resamples of ``n`` images as weights: float64 (n_boot, n), how often each image was drawn.

    The draws are those of :func:`segcal_lib.stats.bootstrap_ci` with the same seed (``rng.integers(0, n, (n_boot,
    n))``), so an interval of a per-image mean computed here equals the one ``bootstrap_ci`` gives.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (number of images), got {n!r}")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    weights = np.zeros((n_boot, n))
    np.add.at(weights, (np.arange(n_boot)[:, None], idx), 1.0)
    return weights


@dataclass
class ImageSums:
    """Per-image sums of one set of images, optionally restricted to a pixel subset.

    Attributes
    ----------
    count, conf, hits : float64 (N, B): per image and confidence bin, the number of counted pixels, the sum of their
        top-class confidences and the number of them predicted correctly.
    nll : float64 (N,): per image, the sum of ``-log p_y`` over counted pixels.
    confusion : int64 (N, C, C): per image, rows = label, columns = prediction.
    n_bins : number of equal-width bins B.
    """

    count: np.ndarray
    conf: np.ndarray
    hits: np.ndarray
    nll: np.ndarray
    confusion: np.ndarray
    n_bins: int

    @classmethod
    def from_batches(cls, batches: Iterable, num_classes: int, n_bins: int = 10,
                     ignore_index: int = IGNORE_INDEX) -> ImageSums:
        """Sums of every image in ``batches``.

        Parameters
        ----------
        batches : iterable of ``(logits, labels)`` or ``(logits, labels, mask)``: logits float (B, C, H, W), labels
            integer (B, H, W), mask bool (B, H, W) or None (only pixels where it is True count).
        num_classes : C.
        n_bins : equal-width confidence bins (10, as in the paper).
        ignore_index : label of pixels that never count.
        """
        collector = SumsCollector(num_classes, n_bins, ignore_index)
        for batch in batches:
            if len(batch) not in (2, 3):
                raise ValueError(f"batches must yield (logits, labels) or (logits, labels, mask), got {len(batch)} "
                                 "items")
            collector.add(*batch)
        return collector.result()

    # ------------------------------------------------------------------------------------------------ shape
    @property
    def n_images(self) -> int:
        return int(self.count.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[1])

    def pixels(self) -> np.ndarray:
        """float64 (N,): counted pixels per image."""
        return self.count.sum(1)

    def image_eces(self) -> np.ndarray:
        """float64 (N,): each image's ECE (NaN for an image without counted pixels)."""
        n = self.pixels()
        gap = np.abs(self.conf - self.hits).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, gap / np.where(n > 0, n, 1), np.nan)

    # ---------------------------------------------------------------------------------------------- metrics
    def metrics(self, weights: np.ndarray | None = None) -> dict[str, np.ndarray | float]:
        """Every metric of :data:`METRICS` on the (weighted) images.

        Parameters
        ----------
        weights : None (every image once) or float (m, N): m weightings of the images (e.g. bootstrap resamples from
            :func:`bootstrap_weights`).

        Returns
        -------
        dict name -> float (no weights) or float64 array (m,). NaN where the weighted images hold no counted pixel.
        ``image_ece`` is the weighted mean over images that hold counted pixels.
        """
        w = np.ones((1, self.n_images)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[1] != self.n_images:
            raise ValueError(f"weights must have shape (m, {self.n_images}), got {w.shape}")
        count, conf, hits = w @ self.count, w @ self.conf, w @ self.hits
        n = count.sum(1)
        safe = np.where(n > 0, n, np.nan)
        eces = self.image_eces()
        has = ~np.isnan(eces)
        w_img = w[:, has]
        n_img = w_img.sum(1)
        confusion = (w @ self.confusion.reshape(self.n_images, -1)).reshape(len(w), *self.confusion.shape[1:])
        out = {
            "image_ece": (w_img @ eces[has]) / np.where(n_img > 0, n_img, np.nan),
            "pooled_ece": np.abs(conf - hits).sum(1) / safe,
            "nll": (w @ self.nll) / safe,
            "miou": _miou(confusion),
            "accuracy": hits.sum(1) / safe,
            "confidence": conf.sum(1) / safe,
        }
        out["over_confidence"] = out["confidence"] - out["accuracy"]
        return {k: float(v[0]) for k, v in out.items()} if weights is None else out

    def reliability(self) -> dict:
        """A result dict that :mod:`segcal_lib.plots` draws (``reliability``, ``ece``, ``n_bins``, ...)."""
        count, conf, hits = self.count.sum(0), self.conf.sum(0), self.hits.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            bin_conf = np.where(count > 0, conf / np.where(count > 0, count, 1), np.nan)
            bin_acc = np.where(count > 0, hits / np.where(count > 0, count, 1), np.nan)
        m = self.metrics()
        return {"ece": m["pooled_ece"], "image_ece": m["image_ece"], "accuracy": m["accuracy"],
                "confidence": m["confidence"], "n_bins": self.n_bins, "n_pixels": int(count.sum()),
                "reliability": {"bin_edges": np.arange(self.n_bins + 1) / self.n_bins, "count": count,
                                "confidence": bin_conf, "accuracy": bin_acc}}


def _miou(confusion: np.ndarray) -> np.ndarray:
    """mIoU of each (C, C) matrix in ``confusion`` (m, C, C), over classes present in labels or predictions."""
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    union = confusion.sum(2) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    present = (union > 0).any(1)
    out = np.full(len(confusion), np.nan)
    out[present] = np.nanmean(iou[present], axis=1)
    return out


def metric_rows(sums: ImageSums, keys: Mapping, metrics: Iterable[str] = METRICS, n_boot: int = DEFAULT_N_BOOT,
                level: float = DEFAULT_LEVEL, seed: int = 0) -> list[dict]:
    """Tidy rows, one per metric: ``keys`` + ``metric``, ``value``, ``ci_low``, ``ci_high``, ``n_images``.

    The interval is a percentile bootstrap over images (``n_boot`` resamples, coverage ``level``); for image-wise ECE
    it is exactly :func:`segcal_lib.stats.bootstrap_ci` over the images that hold counted pixels.
    """
    metrics = list(metrics)
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"metrics must be a subset of {METRICS}, got {sorted(unknown)}")
    point = sums.metrics()
    boot = sums.metrics(bootstrap_weights(sums.n_images, n_boot, seed))
    q = [(1 - level) / 2, (1 + level) / 2]
    rows = []
    for name in metrics:
        if name == "image_ece":
            eces = sums.image_eces()
            eces = eces[~np.isnan(eces)]
            value, lo, hi = bootstrap_ci(eces, level, n_boot, seed) if eces.size else (math.nan,) * 3
        else:
            value = point[name]
            finite = boot[name][np.isfinite(boot[name])]
            lo, hi = (float(v) for v in np.quantile(finite, q)) if finite.size else (math.nan, math.nan)
        rows.append({**keys, "metric": name, "value": value, "ci_low": lo, "ci_high": hi,
                     "n_images": sums.n_images})
    return rows


class SumsCollector:
    """Collects :class:`ImageSums` batch by batch (one pass over a store can fill several collectors).

    >>> col = SumsCollector(num_classes=3)
    >>> col.add(torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))).result().n_images
    2
    """

    def __init__(self, num_classes: int, n_bins: int = 10, ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.n_bins, self.ignore_index = num_classes, n_bins, ignore_index
        self._rows: list[tuple] = []

    def add(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> SumsCollector:
        """Add images: logits (B, C, H, W), labels (B, H, W), optional bool mask (B, H, W)."""
        c, b = self.num_classes, self.n_bins
        for i in range(logits.shape[0]):
            m = None if mask is None else mask[i:i + 1]
            res = CalibrationMeter(c, b, self.ignore_index, classwise=False).update(
                logits[i:i + 1], labels[i:i + 1], m).compute()
            seg = SegmentationMeter(c, self.ignore_index).update(logits[i:i + 1], labels[i:i + 1], m).compute()
            rel = res["reliability"]
            count = rel["count"].astype(np.float64)
            self._rows.append((count, np.nan_to_num(rel["confidence"]) * count,
                               np.nan_to_num(rel["accuracy"]) * count,
                               0.0 if res["n_pixels"] == 0 else res["nll"] * res["n_pixels"], seg["confusion"]))
        return self

    def result(self) -> ImageSums:
        """The :class:`ImageSums` of every image added so far."""
        if not self._rows:
            raise ValueError("no images were added")
        count, conf, hits, nll, confusion = (np.stack([r[k] for r in self._rows]) for k in range(5))
        # Hits are whole numbers; accuracy x count only rounds them within an ulp.
        return ImageSums(count, conf, np.round(hits), nll.astype(np.float64), confusion.astype(np.int64), self.n_bins)


def paired_stat(a: ImageSums, b: ImageSums, metric: str, fn=None, n_boot: int = DEFAULT_N_BOOT,
                level: float = DEFAULT_LEVEL, seed: int = 0) -> tuple[float, float, float]:
    """A statistic of two measurements on the same images, with a paired bootstrap interval over images.

    Parameters
    ----------
    a, b : sums of the same images in the same order (e.g. before and after a change of the test protocol).
    metric : a name from :data:`METRICS`.
    fn : ``fn(metric of a, metric of b)`` (vectorised over resamples); default the difference ``b - a``.

    Returns
    -------
    (value, low, high): the statistic on all images and its percentile interval, both measurements resampled with the
    same image weights. For ``image_ece`` with the default ``fn`` this equals
    :func:`segcal_lib.stats.paired_bootstrap_ci` when every image holds counted pixels.
    """
    if a.n_images != b.n_images:
        raise ValueError(f"a and b must hold the same images, got {a.n_images} and {b.n_images}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    fn = fn or (lambda x, y: y - x)
    value = float(fn(np.array([a.metrics()[metric]]), np.array([b.metrics()[metric]]))[0])
    w = bootstrap_weights(a.n_images, n_boot, seed)
    boot = fn(a.metrics(w)[metric], b.metrics(w)[metric])
    boot = boot[np.isfinite(boot)]
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]) if boot.size else (math.nan, math.nan)
    return value, float(lo), float(hi)
