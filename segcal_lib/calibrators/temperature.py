"""Temperature scaling (Guo et al. 2017) and the identity (the uncalibrated model, as a calibrator).

Temperature scaling divides every logit by one scalar T > 0 fitted by NLL. Written in the inverse temperature
beta = 1/T, the NLL ``mean(logsumexp(beta z) - beta z_y)`` is convex, and its derivative
``mean(E_p[z] - z_y)`` is increasing in beta, so a safeguarded Newton iteration on beta, kept inside a bracket that
shrinks by bisection on the derivative's sign, finds the optimum in float64 to machine precision (no learning rate,
no initialisation to tune).
"""

from __future__ import annotations

import math

import torch

from segcal_lib.calibrators.base import Calibrator
from segcal_lib.calibrators.registry import register_calibrator

__all__ = ["Identity", "TemperatureScaling", "fit_inverse_temperature"]

BETA_RANGE = (1e-4, 1e4)  # temperatures from 1e-4 to 1e4


def _nll_grad_hess(beta: float, z: torch.Tensor, zy: torch.Tensor) -> tuple[float, float]:
    p = (beta * z).softmax(1)
    ez = (p * z).sum(1)
    var = (p * z * z).sum(1) - ez * ez
    return float((ez - zy).mean()), float(var.clamp_min(0).mean())


def fit_inverse_temperature(logits: torch.Tensor, labels: torch.Tensor, tol: float = 1e-12,
                            max_iter: int = 200) -> float:
    """The beta = 1/T minimising the mean NLL of ``softmax(beta * logits)``; float64 throughout.

    Parameters
    ----------
    logits : float tensor (P, C); labels : int tensor (P,) in [0, C).
    tol : stop when the derivative's magnitude or the bracket's relative width falls below it.

    Returns
    -------
    float beta in ``BETA_RANGE`` (an end of the range when the optimum lies beyond it, e.g. separable data).
    """
    z = logits.double()
    zy = z.gather(1, labels.long()[:, None]).squeeze(1)
    lo, hi = BETA_RANGE
    beta = 1.0
    for _ in range(max_iter):
        g, h = _nll_grad_hess(beta, z, zy)
        if abs(g) < tol:
            break
        if g > 0:
            hi = beta
        else:
            lo = beta
        if hi / lo - 1 < tol:
            break
        step = beta - g / h if h > 0 else math.nan
        beta = step if lo < step < hi else math.sqrt(lo * hi)
    return beta


@register_calibrator("ts", "temperature")
class TemperatureScaling(Calibrator):
    """Temperature scaling: ``logits / T`` with one T fitted by NLL on the calibration pixels.

    Parameters
    ----------
    (those of :class:`~segcal_lib.calibrators.base.Calibrator`)

    Attributes
    ----------
    temperature_ : float, the fitted T (> 1 softens over-confident predictions, < 1 sharpens).

    Examples
    --------
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> logits = torch.randn(2, 3, 8, 8) * 3
    >>> labels = torch.distributions.Categorical(logits=(logits / 2).permute(0, 2, 3, 1)).sample()
    >>> cal = TemperatureScaling(progress=False).fit(logits, labels)
    >>> cal(logits).shape
    torch.Size([2, 3, 8, 8])
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.register_buffer("inverse_temperature", torch.tensor(1.0, dtype=torch.float64))

    def _fit_pixels(self, logits, labels):
        self.inverse_temperature.fill_(fit_inverse_temperature(logits, labels))

    @property
    def temperature_(self) -> float:
        self.check_fitted()
        return 1.0 / float(self.inverse_temperature)

    def _calibrate(self, logits, images):
        return logits * self.inverse_temperature.to(logits.dtype)


@register_calibrator("identity", "uncal", "none")
class Identity(Calibrator):
    """The uncalibrated model: returns the logits unchanged (the "Uncal" column of the paper's tables).

    ``fit`` only records the class count, so tables can treat "no calibration" like any other method.
    """

    def _fit_pixels(self, logits, labels):
        pass

    def _calibrate(self, logits, images):
        return logits
