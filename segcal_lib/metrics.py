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

from segcal_lib.ece_estimators import DEFAULT_FINE_BINS, ESTIMATORS, ImageBinSums

__all__ = [
    "CalibrationMeter",
    "SegmentationMeter",
    "boundary_mask",
    "calibration_metrics",
    "correctness_masks",
    "expected_calibration_error",
    "segmentation_metrics",
]

IGNORE_INDEX = 255
# Tolerance on sum_k p_k = 1 for declared probabilities, by dtype: loose enough for a softmax computed in that dtype.
_PROB_SUM_ATOL = {torch.float16: 1e-2, torch.bfloat16: 2e-2, torch.float32: 1e-4, torch.float64: 1e-8}
# Images per chunk are chosen so that the float64 temporaries stay near this many elements (~256 MiB).
_CHUNK_ELEMENTS = 2**25


def _check_scores_labels(scores: torch.Tensor, labels: torch.Tensor, num_classes: int | None, ignore_index: int,
                         mask: torch.Tensor | None) -> None:
    """Raise ``ValueError`` naming the argument when the shapes, dtypes or label values are not what is expected."""
    if not isinstance(scores, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError(f"scores and labels must be torch tensors, got {type(scores).__name__} "
                         f"and {type(labels).__name__}")
    if scores.ndim != 4:
        raise ValueError(f"scores must have shape (N, C, H, W), got {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be a floating tensor (logits or probabilities), got dtype {scores.dtype}")
    if num_classes is not None and scores.shape[1] != num_classes:
        raise ValueError(f"scores must have num_classes={num_classes} channels in dim 1, "
                         f"got shape {tuple(scores.shape)}")
    expected = (scores.shape[0], *scores.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(f"labels must have shape {expected} (scores {tuple(scores.shape)} without the class dim), "
                         f"got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    c = scores.shape[1]
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= c))
    if bad.any():
        values = torch.unique(labels[bad])[:5].tolist()
        raise ValueError(f"labels must lie in [0, {c}) or equal ignore_index={ignore_index}; found {values}")
    if mask is not None:
        if tuple(mask.shape) != expected or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {expected}, got {mask.dtype} {tuple(mask.shape)}")


def _check_finite_and_probs(scores: torch.Tensor, inputs: str) -> None:
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values; expected finite logits or probabilities")
    if inputs == "probs":
        lo, hi = scores.min().item(), scores.max().item()
        if lo < 0 or hi > 1 + _PROB_SUM_ATOL.get(scores.dtype, 1e-4):
            raise ValueError(f"scores were declared probabilities (inputs='probs') but lie in [{lo:g}, {hi:g}], "
                             "expected [0, 1]")
        err = (scores.double().sum(1) - 1).abs().max().item()
        if err > _PROB_SUM_ATOL.get(scores.dtype, 1e-4):
            raise ValueError(f"scores were declared probabilities (inputs='probs') but their sum over dim 1 is off "
                             f"by up to {err:.3g}; expected it to be 1 (pass logits with inputs='logits')")


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


def _bin_index(conf: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin ``k`` with ``edges[k] <= conf < edges[k+1]``; the last bin holds ``conf == 1`` too.

    ``floor(conf * B)`` is right but for rounding within an ulp of an edge; the two comparisons make the rule exact.
    """
    n_bins = edges.numel() - 1
    k = (conf * n_bins).long().clamp_(0, n_bins - 1)  # truncation is floor for conf >= 0
    k -= (conf < edges[k]).long()
    k += ((conf >= edges[k + 1]) & (k < n_bins - 1)).long()
    return k


def _ece_from_sums(count: torch.Tensor, conf_sum: torch.Tensor, hit_sum: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """ECE from per-bin sums (bins along ``dim``); NaN where there are no pixels."""
    n = count.sum(dim)
    return (conf_sum - hit_sum).abs().sum(dim) / n.where(n > 0, torch.full_like(n, math.nan))


class CalibrationMeter:
    """Streaming top-label and class-wise calibration of dense predictions.

    Parameters
    ----------
    num_classes : number of classes C.
    n_bins : number of equal-width confidence bins (10, as in the paper).
    ignore_index : label value of pixels to leave out (255).
    inputs : ``"logits"`` (default) or ``"probs"``; what :meth:`update` receives in ``scores``. Never guessed.
    classwise : also keep per-class bins for class-wise ECE (costs C times the work of top-label binning).
    compute_dtype : dtype of the softmax and the per-pixel terms. float64 (default) makes the meter agree with a
        float64 computation to ~1e-12; float32 is faster and agrees to ~1e-6.
    validate : check shapes, label range, finiteness and (for probabilities) normalisation on every update.
    estimators : other ECE estimators to report besides the plug-in one: any of ``"debiased"`` and ``"adaptive"``
        (equal-mass bins); see :mod:`segcal_lib.ece_estimators`. They add keys ``<name>_ece``, ``<name>_image_ece``
        and ``<name>_image_eces`` to :meth:`compute` and keep ``fine_bins`` sub-bins per image.
    fine_bins : sub-bins kept per image for ``estimators`` (a multiple of ``n_bins``; default 1000).

    Examples
    --------
    >>> meter = CalibrationMeter(num_classes=3)
    >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    >>> res = meter.update(logits, labels).compute()
    >>> sorted(k for k in ("ece", "image_ece", "mce", "nll", "brier") if k in res)
    ['brier', 'ece', 'image_ece', 'mce', 'nll']
    """

    _SUM_STATES = ("bin_count", "bin_conf", "bin_hits", "cw_count", "cw_conf", "cw_hits", "nll_sum", "brier_sum")

    def __init__(self, num_classes: int, n_bins: int = 10, ignore_index: int = IGNORE_INDEX,
                 inputs: Literal["logits", "probs"] = "logits", classwise: bool = True,
                 compute_dtype: torch.dtype = torch.float64, validate: bool = True, estimators: tuple = (),
                 fine_bins: int = DEFAULT_FINE_BINS):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
        if inputs not in ("logits", "probs"):
            raise ValueError(f"inputs must be 'logits' or 'probs', got {inputs!r}")
        if compute_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"compute_dtype must be torch.float32 or torch.float64, got {compute_dtype}")
        self.num_classes, self.n_bins, self.ignore_index = num_classes, n_bins, ignore_index
        self.inputs, self.classwise, self.compute_dtype, self.validate = inputs, classwise, compute_dtype, validate
        if isinstance(estimators, str) or not set(estimators) <= set(ESTIMATORS):
            raise ValueError(f"estimators must be a tuple of names from {ESTIMATORS}, got {estimators!r}")
        self.estimators, self.fine_bins = tuple(estimators), fine_bins
        self.reset()

    # ----------------------------------------------------------------------------------------------------- state
    def reset(self, device: torch.device | str | None = None) -> CalibrationMeter:
        """Zero every state (on ``device``, default CPU; states follow the first update's device when empty)."""
        dev = torch.device(device or "cpu")
        z = dict(dtype=torch.float64, device=dev)
        b, c = self.n_bins, (self.num_classes if self.classwise else 0)
        self.bin_count, self.bin_conf, self.bin_hits = (torch.zeros(b, **z) for _ in range(3))
        self.cw_count, self.cw_conf, self.cw_hits = (torch.zeros(c, b, **z) for _ in range(3))
        self.nll_sum, self.brier_sum = torch.zeros((), **z), torch.zeros((), **z)
        self.image_eces = torch.zeros(0, **z)  # one value per image with at least one valid pixel
        self.edges = torch.arange(b + 1, dtype=torch.float64, device=dev) / b
        # Extra estimators (segcal_lib.ece_estimators) keep their own per-image state.
        self.extra = ImageBinSums(b, self.fine_bins, dev) if self.estimators else None
        self._empty = True
        return self

    def to(self, device: torch.device | str) -> CalibrationMeter:
        """Move every state to ``device``."""
        for name in (*self._SUM_STATES, "image_eces", "edges"):
            setattr(self, name, getattr(self, name).to(device))
        if self.extra is not None:
            self.extra.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.bin_count.device

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
        if self.validate:
            _check_scores_labels(scores, labels, self.num_classes, self.ignore_index, mask)
            _check_finite_and_probs(scores, self.inputs)
        if self._empty and scores.device != self.device:
            self.to(scores.device)
        self._empty = False
        per_image = max(1, math.prod(scores.shape[1:]))
        step = max(1, _CHUNK_ELEMENTS // per_image)
        for s in range(0, scores.shape[0], step):
            m = None if mask is None else mask[s:s + step]
            self._update_chunk(scores[s:s + step], labels[s:s + step], m)
        return self

    def _update_chunk(self, scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> None:
        dev, b, c, f64 = self.device, self.n_bins, self.num_classes, torch.float64
        n_img = scores.shape[0]
        labels = labels.to(dev).flatten(1).long()
        valid = labels != self.ignore_index
        if mask is not None:
            valid &= mask.to(dev).flatten(1)
        y = labels.where(valid, 0)
        p, conf, pred, logp_y, brier = _pixel_terms(scores.to(dev).flatten(2), y, self.inputs, self.compute_dtype,
                                                    need_probs=self.classwise)
        edges = self.edges.to(conf.dtype)
        # Ignored pixels stay in place with weight 0: cheaper than gathering the valid ones.
        w = valid.to(f64)
        k = _bin_index(conf, edges)
        ik = (k + torch.arange(n_img, device=dev)[:, None] * b).flatten()  # bin of each pixel within its image

        def add(index, weights, size):
            return torch.bincount(index, weights=weights, minlength=size).to(f64)

        per_img = [add(ik, v.flatten(), n_img * b).view(n_img, b)
                   for v in (w, conf.to(f64) * w, ((pred == y) & valid).to(f64))]
        self.bin_count += per_img[0].sum(0)
        self.bin_conf += per_img[1].sum(0)
        self.bin_hits += per_img[2].sum(0)
        has_pixels = per_img[0].sum(1) > 0
        self.image_eces = torch.cat([self.image_eces, _ece_from_sums(*per_img)[has_pixels]])
        if self.extra is not None:
            self.extra.add(_bin_index(conf, self.extra.edges.to(conf.dtype)), w, conf, (pred == y) & valid)
        self.nll_sum -= (logp_y.to(f64) * w).sum()
        self.brier_sum += (brier.to(f64) * w).sum()
        if self.classwise:
            # Every class's probability is binned at every valid pixel; hits only where the label is that class.
            kk = _bin_index(p, edges) + torch.arange(c, device=dev)[:, None] * b  # (N, C, P)
            wc = w[:, None].expand_as(p).flatten()
            self.cw_count += add(kk.flatten(), wc, c * b).view(c, b)
            self.cw_conf += add(kk.flatten(), p.flatten().to(f64) * wc, c * b).view(c, b)
            self.cw_hits += add(_take_class(kk, y).flatten(), w.flatten(), c * b).view(c, b)

    # --------------------------------------------------------------------------------------------------- combine
    def _settings(self) -> tuple:
        return self.num_classes, self.n_bins, self.ignore_index, self.inputs, self.classwise, self.estimators

    def merge(self, other: CalibrationMeter) -> CalibrationMeter:
        """Add the states of ``other`` (same settings) into this meter, as if its batches had been seen here."""
        if not isinstance(other, CalibrationMeter) or other._settings() != self._settings():
            theirs = other._settings() if isinstance(other, CalibrationMeter) else type(other).__name__
            raise ValueError(f"can only merge a CalibrationMeter with the same (num_classes, n_bins, ignore_index, "
                             f"inputs, classwise, estimators) = {self._settings()}, got {theirs}")
        for name in self._SUM_STATES:
            getattr(self, name).add_(getattr(other, name).to(self.device))
        self.image_eces = torch.cat([self.image_eces, other.image_eces.to(self.device)])
        if self.extra is not None:
            self.extra.merge(other.extra)
        self._empty = self._empty and other._empty
        return self

    def sync(self, group=None) -> CalibrationMeter:
        """Sum the states over all processes of a ``torch.distributed`` group (in place; every rank gets the total).

        Sums are all-reduced; the per-image values are gathered in rank order.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("sync() needs an initialised torch.distributed process group")
        for name in self._SUM_STATES:
            dist.all_reduce(getattr(self, name), group=group)
        self.image_eces = _all_gather_variable(self.image_eces, group)
        if self.extra is not None:
            self.extra.sums = _all_gather_variable(self.extra.sums.flatten(), group).view(-1, 3, self.fine_bins)
        return self

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


def _all_gather_variable(t: torch.Tensor, group=None) -> torch.Tensor:
    """All-gather 1-D tensors of different lengths, concatenated in rank order."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    size = torch.tensor([t.numel()], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=t.dtype, device=t.device)
    padded[: t.numel()] = t
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


class SegmentationMeter:
    """Streaming confusion matrix, per-class IoU, mIoU and pixel accuracy.

    Parameters
    ----------
    num_classes : number of classes C.
    ignore_index : label value of pixels to leave out.

    ``update`` takes scores (N, C, H, W) (argmax is taken) or predicted class ids (N, H, W), and labels (N, H, W).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, validate: bool = True):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.num_classes, self.ignore_index, self.validate = num_classes, ignore_index, validate
        self.reset()

    def reset(self) -> SegmentationMeter:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)  # rows: label, cols: pred
        return self

    @torch.no_grad()
    def update(self, preds: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> SegmentationMeter:
        """Add a batch: ``preds`` scores (N, C, H, W) or class ids (N, H, W); ``labels`` (N, H, W)."""
        c = self.num_classes
        if preds.is_floating_point():
            if self.validate:
                _check_scores_labels(preds, labels, c, self.ignore_index, mask)
            preds = preds.argmax(1)
        elif self.validate:
            if tuple(preds.shape) != tuple(labels.shape):
                raise ValueError(f"preds (class ids) must have the shape of labels {tuple(labels.shape)}, "
                                 f"got {tuple(preds.shape)}")
            if ((preds < 0) | (preds >= c)).any():
                raise ValueError(f"predicted class ids must lie in [0, {c})")
            if mask is not None and (mask.shape != labels.shape or mask.dtype != torch.bool):
                raise ValueError(f"mask must be a bool tensor of shape {tuple(labels.shape)}")
        labels = labels.long()
        valid = labels != self.ignore_index
        if mask is not None:
            valid &= mask
        if self.validate and ((labels[valid] < 0) | (labels[valid] >= c)).any():
            raise ValueError(f"labels must lie in [0, {c}) or equal ignore_index={self.ignore_index}")
        idx = labels[valid] * c + preds.long()[valid]
        self.confusion += torch.bincount(idx, minlength=c * c).view(c, c).cpu()
        return self

    def merge(self, other: SegmentationMeter) -> SegmentationMeter:
        if not isinstance(other, SegmentationMeter) or other.num_classes != self.num_classes:
            raise ValueError("can only merge a SegmentationMeter with the same num_classes")
        self.confusion += other.confusion
        return self

    def sync(self, group=None) -> SegmentationMeter:
        """Sum the confusion matrix over all processes of a ``torch.distributed`` group."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("sync() needs an initialised torch.distributed process group")
        dist.all_reduce(self.confusion, group=group)
        return self

    def compute(self) -> dict:
        """``miou`` (mean over classes present in labels or predictions), ``iou`` (C,) with NaN for absent classes,
        ``pixel_accuracy``, ``mean_class_accuracy``, ``confusion`` (C, C) int64 (rows: label, cols: prediction)."""
        cm = self.confusion.double()
        tp, label_n, pred_n = cm.diag(), cm.sum(1), cm.sum(0)
        union = label_n + pred_n - tp
        iou = (tp / union).where(union > 0, torch.tensor(math.nan, dtype=torch.float64))
        cls_acc = (tp / label_n).where(label_n > 0, torch.tensor(math.nan, dtype=torch.float64))
        total = cm.sum()
        return {"miou": float(np.nanmean(iou.numpy())) if (union > 0).any() else math.nan,
                "iou": iou.numpy(),
                "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
                "mean_class_accuracy": float(np.nanmean(cls_acc.numpy())) if (label_n > 0).any() else math.nan,
                "confusion": self.confusion.numpy().copy()}


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
    if labels.ndim != 3 or labels.is_floating_point():
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
