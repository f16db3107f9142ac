"""Dirichlet calibration (Kull et al. 2019; the paper's "DirS"): a C x C linear map on log-probabilities.

``z' = W log softmax(z) + b``, started at the identity (``W = I``, ``b = 0``: the uncalibrated model) and fitted by
NLL with ODIR regularisation ("off-diagonal and intercept regularisation"): the penalty
``reg_offdiag * mean_{i != j} W_ij^2 + reg_bias * mean_j b_j^2`` leaves the diagonal free, so per-class temperatures
cost nothing while class-to-class mixing and biases must earn their keep on the calibration split. Kull et al. choose
the two weights by cross-validation; we use one small default for both (an option), since segmentation calibration
splits hold 10^5-10^9 pixels and the penalty mostly guards against classes with few pixels.

Fitting is the matrix-scaling fit of :mod:`.vector` on log-probabilities (float64, L-BFGS). The map can change the
arg-max, so mIoU may move.
"""

from __future__ import annotations

from segcal_lib.calibrators.registry import register_calibrator
from segcal_lib.calibrators.vector import LBFGS_MAX_ITER, _Affine

__all__ = ["DirichletCalibration"]


@register_calibrator("dirs", "dirichlet")
class DirichletCalibration(_Affine):
    """Dirichlet calibration with ODIR: ``z' = W log softmax(z) + b``.

    Parameters
    ----------
    reg_offdiag : float, default 1e-3; ODIR weight of the mean squared off-diagonal entry of W.
    reg_bias : float, default 1e-3; ODIR weight of the mean squared bias.
    max_iter : int, default 100; L-BFGS iterations.
    max_pixels : int, default 200_000; size of the pixel sample fitted on.
    (and those of :class:`~segcal_lib.calibrators.base.Calibrator`)

    Attributes
    ----------
    weight_ : float64 (C, C), started at the identity. bias_ : float64 (C,).
    """

    _matrix = True

    def __init__(self, reg_offdiag: float = 1e-3, reg_bias: float = 1e-3, max_iter: int = LBFGS_MAX_ITER, **kw):
        super().__init__(reg_offdiag=reg_offdiag, reg_bias=reg_bias, max_iter=max_iter, **kw)

    def _inputs(self, logits, dim):
        return logits.log_softmax(dim)
