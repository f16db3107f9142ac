"""Histogram binning and isotonic regression of the top-label confidence (Zadrozny & Elkan 2001, 2002).

Both learn a map ``c -> c'`` from the confidence ``c`` (the top class's probability) to a calibrated confidence on the
calibration pixels, using only whether the top class was right:

- ``histogram``: equal-width bins of ``c`` (15 by default, deliberately not the 10 bins of the ECE we report); ``c'``
  is the accuracy of the calibration pixels in ``c``'s bin (the bin's midpoint when it is empty).
- ``isotonic``: the non-decreasing step function closest in squared error to correctness, found by the
  pool-adjacent-violators algorithm; ``c'`` is the value of the step that holds ``c`` (constant beyond the ends).

**Back to logits.** A calibrated confidence is not yet a distribution over C classes. We set the top class's
probability to ``c'`` and rescale the other classes proportionally so that they share ``1 - c'``:
``p'_top = c'``, ``p'_k = p_k (1 - c') / (1 - c)`` for ``k != top``, and return ``log p'`` (computed from
log-probabilities in float64, so ``c`` close to 1 is no problem). ``c'`` is kept within ``[1e-6, 1 - 1e-6]`` so
that every log-probability is finite. Because ``c'`` can fall below the rescaled probability of the runner-up, the
top class can change: these calibrators do not promise to preserve the arg-max, and mIoU is reported for them.
"""

from __future__ import annotations

import numpy as np
import torch

from segcal_lib.calibrators.base import Calibrator
from segcal_lib.calibrators.registry import register_calibrator

__all__ = ["HistogramBinning", "IsotonicCalibration", "pool_adjacent_violators", "with_top_confidence"]

CONF_EPS = 1e-6


def pool_adjacent_violators(y: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """The non-decreasing sequence closest to ``y`` in weighted squared error (``y`` already in the order of x).

    Returns an array of the same length (each value the weighted mean of its pooled block).
    """
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if weight is None else np.asarray(weight, dtype=np.float64)
    means, weights, sizes = [], [], []
    for yi, wi in zip(y.tolist(), w.tolist(), strict=True):
        m, s, n = yi, wi, 1
        while means and means[-1] > m:  # pool with the previous block while the order is violated
            pm, ps, pn = means.pop(), weights.pop(), sizes.pop()
            m, s, n = (pm * ps + m * s) / (ps + s), ps + s, pn + n
        means.append(m)
        weights.append(s)
        sizes.append(n)
    return np.repeat(means, sizes)


def with_top_confidence(logits: torch.Tensor, new_conf: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax gives the top class probability ``new_conf`` and the other classes their old share.

    Parameters
    ----------
    logits : float (N, C, H, W); new_conf : float (N, H, W) in (0, 1).

    Returns
    -------
    ``log p'`` (N, C, H, W) in the dtype of ``logits`` (see the module docstring).
    """
    lp = logits.double().log_softmax(1)
    top = lp.argmax(1, keepdim=True)
    is_top = torch.zeros_like(lp, dtype=torch.bool).scatter_(1, top, True)
    log_rest = lp.masked_fill(is_top, -torch.inf).logsumexp(1, keepdim=True)  # log(1 - c), exact near c = 1
    c_new = new_conf.double().clamp(CONF_EPS, 1 - CONF_EPS)[:, None]
    out = torch.where(is_top, c_new.log(), lp + torch.log1p(-c_new) - log_rest)
    return out.to(logits.dtype)


class _TopLabelBinning(Calibrator):
    """A map of the top-label confidence learned from (confidence, correct) pairs; ``knots_`` / ``values_``."""

    preserves_argmax = False

    def __init__(self, **kw):
        super().__init__(**kw)
        self.register_buffer("knots_", torch.empty(0, dtype=torch.float64))
        self.register_buffer("values_", torch.empty(0, dtype=torch.float64))

    def _fit_pixels(self, logits, labels):
        p = logits.double().softmax(1)
        conf, pred = p.max(1)
        self._fit_map(conf, (pred == labels).double())

    def _map(self, conf: torch.Tensor) -> torch.Tensor:
        """The step function: the value of the last knot at or below ``conf`` (the first value below every knot)."""
        idx = (torch.searchsorted(self.knots_.to(conf.device), conf.contiguous(), right=True) - 1).clamp_min(0)
        return self.values_.to(conf.device)[idx]

    def _calibrate(self, logits, images):
        conf = logits.double().softmax(1).amax(1)
        return with_top_confidence(logits, self._map(conf))


@register_calibrator("histogram", "histogram_binning")
class HistogramBinning(_TopLabelBinning):
    """Histogram binning of the top-label confidence (equal-width bins; accuracy per bin).

    Parameters
    ----------
    n_bins : int, default 15.
    (and those of :class:`~segcal_lib.calibrators.base.Calibrator`)

    Attributes
    ----------
    knots_ : float64 (n_bins,), left bin edges. values_ : float64 (n_bins,), the calibrated confidence per bin.
    """

    def __init__(self, n_bins: int = 15, **kw):
        super().__init__(**kw)
        if not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
        self.n_bins = n_bins

    def _fit_map(self, conf, correct):
        edges = torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64)
        b = (torch.searchsorted(edges, conf, right=True) - 1).clamp(0, self.n_bins - 1)  # [l, r), last closed
        count = torch.bincount(b, minlength=self.n_bins).double()
        hits = torch.bincount(b, weights=correct, minlength=self.n_bins)
        mid = (edges[:-1] + edges[1:]) / 2
        self.knots_ = edges[:-1].clone()
        self.values_ = torch.where(count > 0, hits / count.clamp_min(1), mid)


@register_calibrator("isotonic")
class IsotonicCalibration(_TopLabelBinning):
    """Isotonic regression of correctness on the top-label confidence (pool-adjacent-violators).

    Parameters
    ----------
    (those of :class:`~segcal_lib.calibrators.base.Calibrator`)

    Attributes
    ----------
    knots_ : float64 (B,), the smallest calibration confidence of each step. values_ : float64 (B,), the step
    values, non-decreasing.
    """

    def _fit_map(self, conf, correct):
        # Equal confidences (common: the logits are stored in float16) must get one value: pool them first.
        c, inverse, count = np.unique(conf.cpu().numpy(), return_inverse=True, return_counts=True)
        hits = np.bincount(inverse, weights=correct.cpu().numpy(), minlength=len(c))
        fitted = pool_adjacent_violators(hits / count, count)
        start = np.r_[True, fitted[1:] != fitted[:-1]]  # first confidence of each step
        self.knots_ = torch.from_numpy(c[start].copy())
        self.values_ = torch.from_numpy(fitted[start].copy())
