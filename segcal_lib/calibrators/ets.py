"""Ensemble temperature scaling (Zhang, Kailkhura, Han 2020, "Mix-n-Match"): a mixture of three distributions.

``p = w_1 softmax(z / T) + w_2 softmax(z) + w_3 / C`` with weights on the simplex (``w >= 0``, ``sum w = 1``). T is
the temperature-scaling fit (NLL, :func:`~segcal_lib.calibrators.temperature.fit_inverse_temperature`); the weights
are then fitted with T fixed, as in the authors' two-stage recipe (their code offers squared error or cross-entropy
for this step; we minimise the NLL of the mixture, like every other calibrator here). That NLL,
``-mean log(w . q_i)`` with ``q_i`` the three components' probabilities of the true class, is convex in w, and
EM's multiplicative update ``w_j <- mean_i w_j q_ij / (w . q_i)`` never raises it and keeps w on the simplex, so
the weights converge to the global optimum without a step size.

All three components rank the classes as the logits do, and so does any mixture of them with positive weights: the
arg-max is preserved. The calibrated logits are ``log p`` (computed with ``logsumexp``, so nothing underflows).
"""

from __future__ import annotations

import math

import torch

from segcal_lib.calibrators.base import Calibrator
from segcal_lib.calibrators.registry import register_calibrator
from segcal_lib.calibrators.temperature import fit_inverse_temperature

__all__ = ["EnsembleTemperatureScaling", "fit_mixture_weights"]


def fit_mixture_weights(q: torch.Tensor, max_iter: int = 1000, tol: float = 1e-12) -> torch.Tensor:
    """Weights on the simplex minimising ``-mean log(q @ w)``, by EM from the uniform mixture (float64).

    Parameters
    ----------
    q : float tensor (P, K) of non-negative component likelihoods of the observed class.

    Returns
    -------
    float64 (K,), non-negative, summing to one.
    """
    q = q.double()
    w = torch.full((q.shape[1],), 1.0 / q.shape[1], dtype=torch.float64)
    prev = math.inf
    for _ in range(max_iter):
        mix = (q @ w).clamp_min(torch.finfo(torch.float64).tiny)
        nll = float(-mix.log().mean())
        w = w * (q / mix[:, None]).mean(0)
        w = w / w.sum()  # exact on paper; renormalised against rounding
        if prev - nll < tol:
            break
        prev = nll
    return w


@register_calibrator("ets", "ensemble_ts")
class EnsembleTemperatureScaling(Calibrator):
    """Ensemble temperature scaling: a fitted mixture of ``softmax(z / T)``, ``softmax(z)`` and the uniform.

    Parameters
    ----------
    max_iter : int, default 1000; EM iterations for the weights.
    (and those of :class:`~segcal_lib.calibrators.base.Calibrator`)

    Attributes
    ----------
    temperature_ : float64 scalar tensor, T of the first component (the temperature-scaling fit).
    weights_ : float64 (3,), the weights of (tempered, original, uniform); non-negative, summing to one.
    """

    def __init__(self, max_iter: int = 1000, **kw):
        super().__init__(**kw)
        self.max_iter = max_iter
        self.register_buffer("temperature_", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("weights_", torch.empty(0, dtype=torch.float64))

    def _fit_pixels(self, logits, labels):
        x, y = logits.double(), labels.long()[:, None]
        beta = fit_inverse_temperature(x, y[:, 0])
        q = torch.stack([(beta * x).softmax(1).gather(1, y)[:, 0], x.softmax(1).gather(1, y)[:, 0],
                         torch.full((len(x),), 1.0 / x.shape[1], dtype=torch.float64)], 1)
        self.temperature_.fill_(1.0 / beta)
        self.weights_ = fit_mixture_weights(q, self.max_iter)

    def _calibrate(self, logits, images):
        w = self.weights_.to(logits.dtype)
        parts = torch.stack([(logits / self.temperature_.to(logits.dtype)).log_softmax(1) + w[0].log(),
                             logits.log_softmax(1) + w[1].log(),
                             torch.full_like(logits, -math.log(logits.shape[1])) + w[2].log()])
        return parts.logsumexp(0)
