"""Vector scaling (``vs``, alias ``logs``) and matrix scaling (``ms``): affine maps of the logits fitted by NLL.

- Vector scaling (Guo et al. 2017; the paper's "LogS"): ``z'_k = a_k z_k + b_k``, one scale and one bias per class.
- Matrix scaling: ``z' = W z + b`` with a full C x C matrix, regularised as Kull et al. (2019) regularise Dirichlet
  calibration (ODIR: the off-diagonal entries of W and the biases are pulled towards zero), because a full matrix
  has C^2 parameters and overfits small calibration splits.

Both start at the identity and are fitted in float64 with L-BFGS (strong Wolfe line search) on the streamed pixel
sample; the mean NLL plus the penalty is smooth and convex in (W, b), so L-BFGS finds its minimum without a learning
rate to tune. Neither preserves the arg-max: per-class scales and biases can move a pixel's top class, so mIoU may
change (the chapter prints it for every method).

A note on what is identifiable: softmax ignores a constant added to every logit, so ``W + 1 v^T`` and ``b + c 1`` give
the same probabilities as ``W`` and ``b``; only the map up to such shifts is determined by the data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segcal_lib.calibrators.base import Calibrator
from segcal_lib.calibrators.registry import register_calibrator

__all__ = ["MatrixScaling", "VectorScaling", "fit_affine", "odir_penalty"]

LBFGS_MAX_ITER = 100
DEFAULT_MAX_PIXELS = 200_000  # L-BFGS reads its sample ~100 times; 200k pixels pin down C^2 + C parameters


def odir_penalty(weight: torch.Tensor, bias: torch.Tensor, reg_offdiag: float, reg_bias: float) -> torch.Tensor:
    """Kull et al.'s ODIR term: ``reg_offdiag * mean of squared off-diagonal W + reg_bias * mean of squared b``."""
    c = weight.shape[0]
    pen = reg_bias * bias.square().mean()
    if weight.ndim == 2 and c > 1:
        off = weight - torch.diag_embed(weight.diagonal())
        pen = pen + reg_offdiag * off.square().sum() / (c * (c - 1))
    return pen


def fit_affine(x: torch.Tensor, y: torch.Tensor, matrix: bool, reg_offdiag: float = 0.0, reg_bias: float = 0.0,
               max_iter: int = LBFGS_MAX_ITER) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``mean NLL(softmax(affine(x)), y) + odir_penalty`` over the affine map, from the identity.

    Parameters
    ----------
    x : float tensor (P, C), the inputs of the map (logits, or log-probabilities for Dirichlet calibration).
    y : int tensor (P,) in [0, C).
    matrix : True for ``W x + b`` (W (C, C)), False for ``a * x + b`` (a (C,)).
    reg_offdiag, reg_bias : ODIR weights (the off-diagonal term only applies to a matrix).
    max_iter : L-BFGS iterations.

    Returns
    -------
    weight (C, C) or scale (C,), and bias (C,), float64.
    """
    for name, value in (("reg_offdiag", reg_offdiag), ("reg_bias", reg_bias)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    x, y = x.double(), y.long()
    c = x.shape[1]
    weight = (torch.eye(c, dtype=torch.float64) if matrix else torch.ones(c, dtype=torch.float64)).requires_grad_()
    bias = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = x @ weight.T + bias if matrix else x * weight + bias
        loss = F.cross_entropy(z, y) + odir_penalty(weight, bias, reg_offdiag, reg_bias)
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


class _Affine(Calibrator):
    """Shared code of the affine calibrators: buffers ``weight_`` and ``bias_`` (float64), applied per pixel."""

    preserves_argmax = False
    _matrix = False

    def __init__(self, reg_offdiag: float = 0.0, reg_bias: float = 0.0, max_iter: int = LBFGS_MAX_ITER,
                 max_pixels: int = DEFAULT_MAX_PIXELS, **kw):
        super().__init__(max_pixels=max_pixels, **kw)
        for name, value in (("reg_offdiag", reg_offdiag), ("reg_bias", reg_bias)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
        self.reg_offdiag, self.reg_bias, self.max_iter = reg_offdiag, reg_bias, max_iter
        self.register_buffer("weight_", torch.empty(0, dtype=torch.float64))
        self.register_buffer("bias_", torch.empty(0, dtype=torch.float64))

    def _inputs(self, logits: torch.Tensor, dim: int) -> torch.Tensor:
        """What the map acts on: the logits (overridden by Dirichlet calibration)."""
        return logits

    def _fit_pixels(self, logits, labels):
        w, b = fit_affine(self._inputs(logits.double(), 1), labels, self._matrix, self.reg_offdiag, self.reg_bias,
                          self.max_iter)
        self.weight_, self.bias_ = w, b

    def _calibrate(self, logits, images):
        x = self._inputs(logits, 1)
        w, b = self.weight_.to(x.dtype), self.bias_.to(x.dtype).view(1, -1, 1, 1)
        out = torch.einsum("kc,nchw->nkhw", w, x) if self._matrix else x * w.view(1, -1, 1, 1)
        return out + b


@register_calibrator("vs", "logs", "vector")
class VectorScaling(_Affine):
    """Vector scaling: ``z'_k = a_k z_k + b_k`` (the paper's LogS), fitted by NLL.

    Parameters
    ----------
    reg_bias : float, default 0; weight of an L2 penalty on the biases (ODIR's bias term).
    max_iter : int, default 100; L-BFGS iterations.
    max_pixels : int, default 200_000; size of the pixel sample fitted on.
    (and those of :class:`~segcal_lib.calibrators.base.Calibrator`)

    Attributes
    ----------
    weight_ : float64 (C,), the per-class scales a. bias_ : float64 (C,), the biases b.
    """

    def __init__(self, reg_bias: float = 0.0, max_iter: int = LBFGS_MAX_ITER, **kw):
        super().__init__(reg_offdiag=0.0, reg_bias=reg_bias, max_iter=max_iter, **kw)


@register_calibrator("ms", "matrix")
class MatrixScaling(_Affine):
    """Matrix scaling: ``z' = W z + b`` with ODIR regularisation, fitted by NLL.

    Parameters
    ----------
    reg_offdiag : float, default 1e-3; weight of the mean squared off-diagonal entry of W (the diagonal is free).
    reg_bias : float, default 1e-3; weight of the mean squared bias.
    max_iter : int, default 100; L-BFGS iterations.
    max_pixels : int, default 200_000; size of the pixel sample fitted on.
    (and those of :class:`~segcal_lib.calibrators.base.Calibrator`)

    Attributes
    ----------
    weight_ : float64 (C, C). bias_ : float64 (C,).
    """

    _matrix = True

    def __init__(self, reg_offdiag: float = 1e-3, reg_bias: float = 1e-3, max_iter: int = LBFGS_MAX_ITER, **kw):
        super().__init__(reg_offdiag=reg_offdiag, reg_bias=reg_bias, max_iter=max_iter, **kw)
