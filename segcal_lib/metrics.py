"""Streaming calibration and segmentation meters, exact at any number of pixels.

A :class:`CalibrationMeter` keeps, per confidence bin, the number of pixels, the sum of their confidences and the number
of correct ones, all in float64 (and the same per class for class-wise ECE). Equal-width ECE, MCE and the reliability
diagram are functions of these sums alone, so the memory is O(bins x classes) whatever the number of pixels, and the
result equals the one computed from all pixels at once. Image-wise ECE (the paper's metric: ECE of each image, then the
mean over images) is computed per image inside :meth:`CalibrationMeter.update` and kept as one number per image.

Bins
----
``n_bins`` equal-width bins. A confidence ``c`` falls in bin ``k`` when ``k/B <= c < (k+1)/B`` (the edges being the
float64 numbers ``k/B``); the last bin is closed, so ``c = 1`` falls in bin ``B-1``.

Definitions (``n`` valid pixels, bin ``b`` holding ``n_b`` pixels)
------------------------------------------------------------------
- ECE   = sum_b |sum_{i in b} conf_i - sum_{i in b} correct_i| / n  (pooled over all valid pixels)
- image-wise ECE = mean over images (with at least one valid pixel) of each image's ECE
- MCE   = max over non-empty bins of |acc_b - conf_b|
- class-wise ECE (Kull et al. 2019) = mean over classes k of the ECE of p_k against 1[y = k], over all valid pixels
- NLL   = mean of -log p_y; Brier = mean of sum_k (p_k - 1[y = k])^2; accuracy = mean of 1[argmax p = y]
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from segcal_lib import metrics_native
from segcal_lib.checks import (
    IGNORE_INDEX,
    check_class_ids,
    check_ignore_index,
    check_labels,
    check_logits_labels,
    check_mask,
    check_num_classes,
    check_positive_int,
    check_scores,
    check_screened,
)
from segcal_lib.ece_estimators import DEFAULT_FINE_BINS, ESTIMATORS, ImageBinSums
from segcal_lib.meter_base import Meter, _all_gather_variable
from segcal_lib.metrics_fused import PRECISIONS, calibration_sums, first_argmax
from segcal_lib.metrics_fused import bin_index as _bin_index

__all__ = [
    "CalibrationMeter",
    "SegmentationMeter",
    "boundary_mask",
    "calibration_metrics",
    "correctness_masks",
    "expected_calibration_error",
    "segmentation_metrics",
]

# Images per chunk are chosen so that the float64 temporaries stay near this many elements (~256 MiB).
_CHUNK_ELEMENTS = 2**25
# See CalibrationMeter's ``precision``: why "exact" is the default.
DEFAULT_PRECISION = "exact"
BACKENDS = ("auto", "native", "fused", "reference")


def _check_scores_labels(scores, labels, num_classes, ignore_index, mask, label_values: bool = True) -> None:
    """Shapes, dtypes and (unless screened later) label range (see :func:`segcal_lib.checks.check_logits_labels`)."""
    check_logits_labels(scores, labels, num_classes, ignore_index, mask, finite=False, name_logits="scores",
                        label_values=label_values)


def _check_finite_and_probs(scores: torch.Tensor, inputs: str) -> None:
    check_scores(scores, inputs, "scores")


def _max_argmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and first arg-max over dim 1 of (N, C, P), as (N, P) each.

    ``Tensor.max(dim)`` with indices is an order of magnitude slower on CPU than ``amax`` plus one pass over the
    classes (which also pins ties to the first class, as ``argmax`` does).
    """
    top = x.amax(1)
    pred = torch.full_like(top, x.shape[1] - 1, dtype=torch.long)
    for k in range(x.shape[1] - 2, -1, -1):
        pred.masked_fill_(x[:, k] == top, k)
    return top, pred


def _take_class(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x[n, y[n, i], i]`` for x (N, C, P) contiguous, y (N, P): one flat gather, faster than ``gather`` on dim 1."""
    n, c, p = x.shape
    flat = (torch.arange(n, device=x.device)[:, None] * c + y) * p + torch.arange(p, device=x.device)
    return x.reshape(-1)[flat]


def _pixel_terms(scores: torch.Tensor, labels: torch.Tensor, inputs: str, dtype: torch.dtype, need_probs: bool):
    """Per-pixel quantities from scores (N, C, P) and labels (N, P) (ignored labels replaced by any valid class).

    Returns (p, conf, pred, logp_y, brier): p is (N, C, P), or None when not ``need_probs``; the rest are (N, P).
    Works in place on one private copy of the scores and reduces over dim 1 of the contiguous layout, so the only
    full-size temporary is that copy.
    """
    x = scores.to(dtype, copy=True).contiguous()
    if inputs == "probs":
        conf, pred = _max_argmax(x)
        p_y = _take_class(x, labels)
        logp_y = p_y.clamp_min(torch.finfo(dtype).tiny).log()
        brier = (x * x).sum(1) - 2 * p_y + 1
        return x, conf, pred, logp_y, brier
    top, pred = _max_argmax(x)
    z_y = _take_class(x, labels) - top
    e = x.sub_(top[:, None]).exp_()  # exp(x - max): the arg-max class gets exactly 1
    s = e.sum(1)
    conf = s.reciprocal()
    logp_y = z_y - s.log()
    p_y = z_y.exp() * conf
    if need_probs:
        p = e.div_(s[:, None])
        brier = (p * p).sum(1) - 2 * p_y + 1
        return p, conf, pred, logp_y, brier
    brier = e.square_().sum(1) * conf.square() - 2 * p_y + 1  # sum_k p_k^2 = sum_k e_k^2 / s^2
    return None, conf, pred, logp_y, brier


def _reference_sums(scores: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, inputs: str, dtype: torch.dtype,
                    edges: torch.Tensor, classwise: bool):
    """The plain PyTorch twin of :func:`~segcal_lib.metrics_fused.calibration_sums` (same arguments and results):
    every per-pixel term materialised, kept as the reference the fused pass is tested against."""
    dev, f64, b = scores.device, torch.float64, edges.numel() - 1
    n_img, c = scores.shape[:2]
    p, conf, pred, logp_y, brier = _pixel_terms(scores, y, inputs, dtype, need_probs=classwise)
    # Ignored pixels stay in place with weight 0: cheaper than gathering the valid ones.
    w = valid.to(f64)
    k = _bin_index(conf, edges)
    ik = (k + torch.arange(n_img, device=dev)[:, None] * b).flatten()  # bin of each pixel within its image

    def add(index, weights, size):
        return torch.bincount(index, weights=weights, minlength=size).to(f64)

    per_img = torch.stack([add(ik, v.flatten(), n_img * b).view(n_img, b)
                           for v in (w, conf.to(f64) * w, ((pred == y) & valid).to(f64))])
    nll, brier = -(logp_y.to(f64) * w).sum(), (brier.to(f64) * w).sum()
    if not classwise:
        return per_img, nll, brier, None
    # Every class's probability is binned at every valid pixel; hits only where the label is that class.
    kk = _bin_index(p, edges) + torch.arange(c, device=dev)[:, None] * b  # (N, C, P)
    wc = w[:, None].expand_as(p).flatten()
    cw = torch.stack([add(kk.flatten(), wc, c * b).view(c, b),
                      add(kk.flatten(), p.flatten().to(f64) * wc, c * b).view(c, b),
                      add(_take_class(kk, y).flatten(), w.flatten(), c * b).view(c, b)])
    return per_img, nll, brier, cw


def _ece_from_sums(count: torch.Tensor, conf_sum: torch.Tensor, hit_sum: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """ECE from per-bin sums (bins along ``dim``); NaN where there are no pixels."""
    n = count.sum(dim)
    return (conf_sum - hit_sum).abs().sum(dim) / n.where(n > 0, torch.full_like(n, math.nan))


def _resolve_precision(precision: str | None, compute_dtype: torch.dtype | None) -> tuple[str, torch.dtype]:
    """(precision, dtype of the per-pixel terms) from the ``precision`` and the older ``compute_dtype`` arguments."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be 'exact' or 'fast', got {precision!r}")
    if compute_dtype is not None:
        by_dtype = {v: k for k, v in PRECISIONS.items()}
        if compute_dtype not in by_dtype:
            raise ValueError(f"compute_dtype must be torch.float32 or torch.float64, got {compute_dtype}")
        if precision is not None and by_dtype[compute_dtype] != precision:
            raise ValueError(f"precision={precision!r} contradicts compute_dtype={compute_dtype}; pass only one")
        precision = by_dtype[compute_dtype]
    precision = precision or DEFAULT_PRECISION
    return precision, PRECISIONS[precision]


class CalibrationMeter(Meter):
    """Streaming top-label and class-wise calibration of dense predictions.

    Parameters
    ----------
    num_classes : number of classes C.
    n_bins : number of equal-width confidence bins (10, as in the paper).
    ignore_index : label value of pixels to leave out (255).
    inputs : ``"logits"`` (default) or ``"probs"``; what :meth:`update` receives in ``scores``. Never guessed.
    classwise : also keep per-class bins for class-wise ECE (costs C times the work of top-label binning).
    compute_dtype : older spelling of ``precision``: torch.float64 is ``"exact"``, torch.float32 is ``"fast"``.
    validate : check shapes, label range, finiteness and (for probabilities) normalisation on every update.
    precision : ``"exact"`` (default) or ``"fast"``, the dtype of the per-pixel terms (softmax, log-probability,
        Brier score, confidences binned). ``"exact"`` computes them in float64 and agrees with a float64 computation
        to ~1e-12; ``"fast"`` computes them in float32 (binning the float32 confidences exactly) and agrees to ~1e-6
        on ECE. Both accumulate every per-bin sum in float64, so neither drifts with the number of pixels.
        ``"exact"`` is the default because, as measured by ``python -m segcal_lib.bench`` on two CPU cores (C=19
        and 150, native backend), it costs about 1.5x the time of ``"fast"`` and still runs several times faster
        than torchmetrics' ``MulticlassCalibrationError`` with every metric on, which is small next to running the
        model in this book's evaluations, and it keeps the promise that every number equals a float64
        computation, which the tests and chapters compare against. Choose ``"fast"`` when the meter's throughput
        matters most (10^9 pixels and more): its error is far below any printed digit.
    backend : ``"auto"`` (default), ``"native"``, ``"fused"`` or ``"reference"``. ``"native"``
        (:mod:`segcal_lib.metrics_native`) is one C pass per pixel on the CPU, compiled on first use, which also
        screens the inputs so that validation costs no extra pass; ``"fused"`` (:mod:`segcal_lib.metrics_fused`)
        computes every per-pixel term tile by tile in PyTorch without (N, C, H, W) temporaries, on any device;
        ``"reference"`` is the plain PyTorch computation both are tested against. ``"auto"`` picks ``"native"`` for
        CPU tensors when it could be built (:func:`segcal_lib.metrics_native.native_status` says why not), else
        ``"fused"``.
    estimators : other ECE estimators to report besides the plug-in one: any of ``"debiased"`` and ``"adaptive"``
        (equal-mass bins); see :mod:`segcal_lib.ece_estimators`. They add keys ``<name>_ece``, ``<name>_image_ece``
        and ``<name>_image_eces`` to :meth:`compute` and keep ``fine_bins`` sub-bins per image.
    fine_bins : sub-bins kept per image for ``estimators`` (a multiple of ``n_bins``; default: the smallest
        multiple of ``n_bins`` that is at least 1000).

    Examples
    --------
    >>> meter = CalibrationMeter(num_classes=3)
    >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    >>> res = meter.update(logits, labels).compute()
    >>> sorted(k for k in ("ece", "image_ece", "mce", "nll", "brier") if k in res)
    ['brier', 'ece', 'image_ece', 'mce', 'nll']
    """

    _buffers = ("edges",)

    def __init__(self, num_classes: int, n_bins: int = 10, ignore_index: int = IGNORE_INDEX,
                 inputs: Literal["logits", "probs"] = "logits", classwise: bool = True,
                 compute_dtype: torch.dtype | None = None, validate: bool = True,
                 precision: Literal["exact", "fast"] | None = None,
                 backend: Literal["auto", "fused", "reference"] = "auto", estimators: tuple = (),
                 fine_bins: int | None = None):
        num_classes = check_num_classes(num_classes)
        n_bins = check_positive_int(n_bins, "n_bins")
        check_ignore_index(ignore_index, num_classes)
        if inputs not in ("logits", "probs"):
            raise ValueError(f"inputs must be 'logits' or 'probs', got {inputs!r}")
        self.precision, self.compute_dtype = _resolve_precision(precision, compute_dtype)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.num_classes, self.n_bins, self.ignore_index = num_classes, n_bins, ignore_index
        self.inputs, self.classwise, self.validate = inputs, classwise, validate
        if isinstance(estimators, str) or not set(estimators) <= set(ESTIMATORS):
            raise ValueError(f"estimators must be a tuple of names from {ESTIMATORS}, got {estimators!r}")
        if fine_bins is None:  # the smallest multiple of n_bins that is at least DEFAULT_FINE_BINS
            fine_bins = n_bins * -(-DEFAULT_FINE_BINS // n_bins)
        self.estimators, self.fine_bins = tuple(estimators), fine_bins
        b, c, f64 = n_bins, (num_classes if classwise else 0), torch.float64
        for name in ("bin_count", "bin_conf", "bin_hits"):
            self.add_state(name, torch.zeros(b, dtype=f64))
        for name in ("cw_count", "cw_conf", "cw_hits"):
            self.add_state(name, torch.zeros(c, b, dtype=f64))
        self.add_state("nll_sum", torch.zeros((), dtype=f64))
        self.add_state("brier_sum", torch.zeros((), dtype=f64))
        self.add_state("image_eces", torch.zeros(0, dtype=f64), "cat")  # one per image with a valid pixel
        self.reset()

    # ----------------------------------------------------------------------------------------------------- state
    def reset(self, device: torch.device | str | None = None) -> CalibrationMeter:
        """Zero every state on ``device`` (default: where they are; the CPU for a new meter). The states move to the
        first update's device when the meter is empty (see :mod:`segcal_lib.meter_base`)."""
        super().reset(device)
        self.edges = torch.arange(self.n_bins + 1, dtype=torch.float64, device=self.device) / self.n_bins
        # Extra estimators (segcal_lib.ece_estimators) keep their own per-image state.
        self.extra = ImageBinSums(self.n_bins, self.fine_bins, self.device) if self.estimators else None
        return self

    def to(self, device: torch.device | str) -> CalibrationMeter:
        super().to(device)
        if self.extra is not None:
            self.extra.to(self.device)
        return self

    def merge(self, other: CalibrationMeter) -> CalibrationMeter:
        super().merge(other)
        if self.extra is not None:
            self.extra.merge(other.extra)
        return self

    def sync(self, group=None) -> CalibrationMeter:
        super().sync(group)
        if self.extra is not None:
            self.extra.sums = _all_gather_variable(self.extra.sums.flatten(), group).view(-1, 3, self.fine_bins)
        return self

    # ---------------------------------------------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> CalibrationMeter:
        """Add a batch of images.

        Parameters
        ----------
        scores : float tensor (N, C, H, W): logits, or probabilities if the meter was built with ``inputs="probs"``.
            float16, bfloat16, float32 and float64 are accepted.
        labels : integer tensor (N, H, W) with values in [0, C) or ``ignore_index``.
        mask : optional bool tensor (N, H, W); only pixels where it is True (and the label is not ignored) count.

        Returns
        -------
        self, so that ``meter.update(...).compute()`` reads well.
        """
        native = self._uses_native(scores, labels, mask)
        if self.validate:  # the native pass screens label values and finiteness itself (see below)
            _check_scores_labels(scores, labels, self.num_classes, self.ignore_index, mask, label_values=not native)
            if not native or self.inputs == "probs":
                _check_finite_and_probs(scores, self.inputs)
        self._follow(scores)
        if not scores.numel():  # an empty batch adds nothing (see segcal_lib.checks)
            return self
        if native:
            self._update_native(scores, labels, mask)
            return self
        per_image = max(1, math.prod(scores.shape[1:]))
        step = max(1, _CHUNK_ELEMENTS // per_image)
        for s in range(0, scores.shape[0], step):
            m = None if mask is None else mask[s:s + step]
            self._update_chunk(scores[s:s + step], labels[s:s + step], m)
        return self

    def _uses_native(self, scores, labels, mask) -> bool:
        """Whether this batch goes through the native kernel (CPU tensors, ``backend`` "auto" or "native")."""
        if self.backend not in ("auto", "native"):
            return False
        on_cpu = self.device.type == "cpu" and all(
            isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in (scores, labels, mask) if t is not None)
        if self.backend == "native" and not (on_cpu and metrics_native.available()):
            raise ValueError(f"backend='native' needs CPU tensors and a C compiler ({metrics_native.native_status()});"
                             f" use backend='auto' or 'fused'")
        return on_cpu and metrics_native.available()

    def _update_native(self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> None:
        """The whole batch in one native pass (no temporary grows with it but the int64 labels); the input screen
        is settled before any state changes, so a rejected batch leaves the meter as it was."""
        flat_mask = None if mask is None else mask.flatten(1)
        per_img, nll, brier, cw, n_nonfinite, n_bad = metrics_native.calibration_sums(
            scores.flatten(2), labels.flatten(1), flat_mask, self.ignore_index, self.inputs, self.compute_dtype,
            self.edges, self.classwise)
        if self.validate:
            check_screened(scores, labels, n_nonfinite, n_bad, self.num_classes, self.ignore_index, self.inputs)
        self._add_sums(per_img, nll, brier, cw)
        if self.extra is not None:
            step = max(1, _CHUNK_ELEMENTS // max(1, math.prod(scores.shape[1:])))
            for s in range(0, scores.shape[0], step):
                lab = labels[s:s + step].flatten(1).long()
                valid = lab != self.ignore_index
                if mask is not None:
                    valid &= mask[s:s + step].flatten(1)
                self._update_extra(scores[s:s + step].flatten(2), lab.where(valid, 0), valid)

    def _update_chunk(self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> None:
        dev = self.device
        labels = labels.to(dev).flatten(1).long()
        valid = labels != self.ignore_index
        if mask is not None:
            valid &= mask.to(dev).flatten(1)
        y = labels.where(valid, 0)
        sums = _reference_sums if self.backend == "reference" else calibration_sums
        per_img, nll, brier, cw = sums(scores.to(dev).flatten(2), y, valid, self.inputs, self.compute_dtype,
                                       self.edges, self.classwise)
        self._add_sums(per_img, nll, brier, cw)
        if self.extra is not None:
            self._update_extra(scores.to(dev).flatten(2), y, valid)

    def _add_sums(self, per_img, nll, brier, cw) -> None:
        self.bin_count += per_img[0].sum(0)
        self.bin_conf += per_img[1].sum(0)
        self.bin_hits += per_img[2].sum(0)
        has_pixels = per_img[0].sum(1) > 0
        self.image_eces = torch.cat([self.image_eces, _ece_from_sums(*per_img)[has_pixels]])
        self.nll_sum += nll
        self.brier_sum += brier
        if self.classwise:
            self.cw_count += cw[0]
            self.cw_conf += cw[1]
            self.cw_hits += cw[2]

    def _update_extra(self, scores: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> None:
        """The extra estimators need each pixel's confidence and correctness once more (an option, off by default)."""
        s = scores.to(self.compute_dtype)
        p = s.softmax(1) if self.inputs == "logits" else s
        conf, pred = p.max(1).values, first_argmax(p)
        self.extra.add(_bin_index(conf, self.extra.edges.to(conf.dtype)), valid.to(torch.float64), conf,
                       (pred == y) & valid)

    # --------------------------------------------------------------------------------------------------- combine
    def _settings(self) -> tuple:
        return self.num_classes, self.n_bins, self.ignore_index, self.inputs, self.classwise, self.estimators

    # --------------------------------------------------------------------------------------------------- results
    def compute(self) -> dict:
        """The metrics over everything seen so far.

        Returns
        -------
        dict with Python floats ``ece``, ``image_ece``, ``image_ece_std`` (population std over images), ``mce``,
        ``classwise_ece``, ``nll``, ``brier``, ``accuracy``, ``confidence`` (mean top-class probability: above
        ``accuracy`` means over-confident on average), ``n_pixels``, ``n_images``, and NumPy arrays
        ``image_eces`` (one per image with valid pixels), ``classwise_ece_per_class`` (C,) and ``reliability``
        (a dict of ``bin_edges`` (B+1,), ``count`` (B,), ``confidence`` (B,) and ``accuracy`` (B,), NaN for empty
        bins). Every value is NaN when no pixel has been seen. ``n_bins`` is included so that printed numbers can
        say how they were binned.
        """
        n = self.bin_count.sum()
        nan = torch.tensor(math.nan, dtype=torch.float64, device=self.device)
        safe_n = n if n > 0 else nan
        nonempty = self.bin_count > 0
        denom = self.bin_count.where(nonempty, nan)
        bin_conf, bin_acc = self.bin_conf / denom, self.bin_hits / denom
        gaps = (bin_acc - bin_conf).abs()
        cw = (_ece_from_sums(self.cw_count, self.cw_conf, self.cw_hits) if self.classwise
              else torch.zeros(0, dtype=torch.float64))
        ie = self.image_eces
        out = {
            "ece": (self.bin_conf - self.bin_hits).abs().sum() / safe_n,
            "image_ece": ie.mean() if ie.numel() else nan,
            "image_ece_std": ie.std(unbiased=False) if ie.numel() else nan,
            "mce": gaps[nonempty].max() if nonempty.any() else nan,
            "classwise_ece": cw.mean() if cw.numel() else nan,
            "nll": self.nll_sum / safe_n,
            "brier": self.brier_sum / safe_n,
            "accuracy": self.bin_hits.sum() / safe_n,
            "confidence": self.bin_conf.sum() / safe_n,
        }
        res = {k: float(v) for k, v in out.items()}
        res.update(n_pixels=int(n.item()), n_images=int(ie.numel()), n_bins=self.n_bins,
                   image_eces=ie.cpu().numpy(), classwise_ece_per_class=cw.cpu().numpy(),
                   reliability={"bin_edges": self.edges.cpu().numpy(), "count": self.bin_count.cpu().numpy(),
                                "confidence": bin_conf.cpu().numpy(), "accuracy": bin_acc.cpu().numpy()})
        if self.extra is not None:
            res.update(self.extra.compute(self.estimators))
        return res

    def __repr__(self) -> str:
        return (f"CalibrationMeter(num_classes={self.num_classes}, n_bins={self.n_bins}, "
                f"ignore_index={self.ignore_index}, inputs={self.inputs!r}, pixels={int(self.bin_count.sum())})")


class SegmentationMeter(Meter):
    """Streaming confusion matrix, per-class IoU, mIoU and pixel accuracy.

    Parameters
    ----------
    num_classes : number of classes C.
    ignore_index : label value of pixels to leave out (255); an int outside [0, C).
    validate : check shapes, dtypes, label and class-id range and finiteness on every update.

    ``update`` takes scores (N, C, H, W) (argmax is taken) or predicted class ids (N, H, W), and labels (N, H, W).
    The confusion matrix lives on the device of the first update (see :mod:`segcal_lib.meter_base`), with the same
    ``reset(device)``, ``to``, ``device``, ``merge`` and ``sync`` as :class:`CalibrationMeter`.

    Examples
    --------
    >>> y = torch.tensor([[[0, 1], [2, 2]]])
    >>> SegmentationMeter(3).update(y, y).compute()["miou"]
    1.0
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, validate: bool = True):
        self.num_classes = check_num_classes(num_classes)
        self.ignore_index = check_ignore_index(ignore_index, self.num_classes)
        self.validate = validate
        # rows: label, cols: prediction
        self.add_state("confusion", torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64))
        self.reset()

    def _settings(self) -> tuple:
        return self.num_classes, self.ignore_index

    @torch.no_grad()
    def update(self, preds: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> SegmentationMeter:
        """Add a batch: ``preds`` scores (N, C, H, W) or class ids (N, H, W); ``labels`` (N, H, W) integer."""
        c = self.num_classes
        if not isinstance(preds, torch.Tensor):
            raise ValueError(f"preds must be a torch tensor (scores or class ids), got {type(preds).__name__}")
        if preds.is_floating_point():
            if self.validate:
                check_logits_labels(preds, labels, c, self.ignore_index, mask, name_logits="preds")
            preds = first_argmax(preds)  # argmax(1) itself is ~8x slower on CPU
        elif self.validate:
            check_labels(labels, c, self.ignore_index)
            check_class_ids(preds, c, labels.shape)
            check_mask(mask, labels.shape)
        self._follow(preds)
        dev = self.device
        labels = labels.to(dev).long()
        valid = labels != self.ignore_index
        if mask is not None:
            valid &= mask.to(dev)
        idx = labels[valid] * c + preds.to(dev).long()[valid]
        self.confusion += torch.bincount(idx, minlength=c * c).view(c, c)
        return self

    def compute(self) -> dict:
        """``miou`` (mean over classes present in labels or predictions), ``iou`` (C,) with NaN for absent classes,
        ``pixel_accuracy``, ``mean_class_accuracy``, ``confusion`` (C, C) int64 (rows: label, cols: prediction).
        Every value is NaN when no pixel has been seen."""
        confusion = self.confusion.cpu()
        cm = confusion.double()
        tp, label_n, pred_n = cm.diag(), cm.sum(1), cm.sum(0)
        union = label_n + pred_n - tp
        iou = (tp / union).where(union > 0, torch.tensor(math.nan, dtype=torch.float64))
        cls_acc = (tp / label_n).where(label_n > 0, torch.tensor(math.nan, dtype=torch.float64))
        total = cm.sum()
        iou, cls_acc = iou.cpu().numpy(), cls_acc.cpu().numpy()
        return {"miou": float(np.nanmean(iou)) if (union > 0).any() else math.nan,
                "iou": iou,
                "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
                "mean_class_accuracy": float(np.nanmean(cls_acc)) if (label_n > 0).any() else math.nan,
                "confusion": confusion.cpu().numpy().copy()}

    def __repr__(self) -> str:
        return (f"SegmentationMeter(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
                f"pixels={int(self.confusion.sum())})")


# ------------------------------------------------------------------------------------------------- functional twins
def calibration_metrics(scores: torch.Tensor, labels: torch.Tensor, n_bins: int = 10,
                        ignore_index: int = IGNORE_INDEX, inputs: Literal["logits", "probs"] = "logits",
                        mask: torch.Tensor | None = None, classwise: bool = True) -> dict:
    """One-shot :class:`CalibrationMeter` over one batch (N, C, H, W); returns :meth:`CalibrationMeter.compute`."""
    if not isinstance(scores, torch.Tensor) or scores.ndim != 4:
        raise ValueError(f"scores must be a tensor of shape (N, C, H, W), got "
                         f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    meter = CalibrationMeter(scores.shape[1], n_bins, ignore_index, inputs, classwise=classwise)
    return meter.update(scores, labels, mask).compute()


def expected_calibration_error(scores: torch.Tensor, labels: torch.Tensor, n_bins: int = 10,
                               ignore_index: int = IGNORE_INDEX, inputs: Literal["logits", "probs"] = "logits",
                               mask: torch.Tensor | None = None,
                               reduction: Literal["pooled", "image"] = "pooled") -> float:
    """ECE of one batch: ``reduction="pooled"`` over all valid pixels, ``"image"`` the mean of per-image ECEs."""
    if reduction not in ("pooled", "image"):
        raise ValueError(f"reduction must be 'pooled' or 'image', got {reduction!r}")
    res = calibration_metrics(scores, labels, n_bins, ignore_index, inputs, mask, classwise=False)
    return res["ece"] if reduction == "pooled" else res["image_ece"]


def segmentation_metrics(preds: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None,
                         ignore_index: int = IGNORE_INDEX) -> dict:
    """One-shot :class:`SegmentationMeter`; ``num_classes`` defaults to ``preds.shape[1]`` for scores."""
    if not isinstance(preds, torch.Tensor):
        raise ValueError(f"preds must be a torch tensor (scores or class ids), got {type(preds).__name__}")
    if num_classes is None:
        if not preds.is_floating_point():
            raise ValueError("num_classes is required when preds are class ids")
        num_classes = preds.shape[1]
    return SegmentationMeter(num_classes, ignore_index).update(preds, labels).compute()


# ----------------------------------------------------------------------------------------------------- pixel subsets
def correctness_masks(scores: torch.Tensor, labels: torch.Tensor,
                      ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool masks (N, H, W) of correctly predicted and of mispredicted pixels (ignored pixels are in neither).

    ``scores`` are logits or probabilities (N, C, H, W) (the argmax is the same), or class ids (N, H, W).
    """
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"scores must be a torch tensor (scores or class ids), got {type(scores).__name__}")
    check_labels(labels, None, ignore_index)
    pred = scores.argmax(1) if scores.is_floating_point() else scores
    if pred.shape != labels.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and labels {tuple(labels.shape)} must have the same shape")
    valid = labels != ignore_index
    hit = pred == labels
    return hit & valid, ~hit & valid


def boundary_mask(labels: torch.Tensor, radius: int = 1, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Bool mask (N, H, W) of boundary pixels: valid pixels with a different valid label within ``radius``.

    The neighbourhood is the (2r+1) x (2r+1) square around a pixel. Ignored neighbours neither make nor break a
    boundary. Interior pixels are ``valid & ~boundary_mask(...)``.
    """
    check_labels(labels, None, ignore_index)
    if labels.ndim != 3:
        raise ValueError(f"labels must be an integer tensor (N, H, W), got {labels.dtype} {tuple(labels.shape)}")
    if not isinstance(radius, int) or radius < 1:
        raise ValueError(f"radius must be a positive int, got {radius!r}")
    valid = labels != ignore_index
    lab = labels.to(torch.float32)[:, None]
    big = float(labels[valid].max().item() + 1) if valid.any() else 1.0
    k = 2 * radius + 1
    highest = F.max_pool2d(lab.masked_fill(~valid[:, None], -1.0), k, stride=1, padding=radius)
    lowest = -F.max_pool2d(-lab.masked_fill(~valid[:, None], big), k, stride=1, padding=radius)
    return (highest > lowest).squeeze(1) & valid
