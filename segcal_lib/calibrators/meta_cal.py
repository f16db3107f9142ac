"""Meta-Cal* as the paper describes it: uniform probabilities above an entropy threshold, a temperature below it.

Meta-Cal (Ma & Blaschko 2021) puts a binary "reject" classifier in front of a calibrator; the paper's Meta-Cal* uses
the prediction's entropy as that classifier. Here:

1. **Threshold.** On the calibration pixels, the entropy ``H`` of ``softmax(z)`` is computed; the threshold is the
   ``1 - alpha`` quantile of ``H`` over the *correctly predicted* pixels. This is Meta-Cal's miscoverage-rate
   control: at most a fraction ``alpha`` (default 5%) of correctly predicted calibration pixels is rejected, and every
   pixel more uncertain than that is.
2. **Rejected pixels** (``H > threshold``) get the uniform distribution 1/C.
3. **Kept pixels** get temperature scaling fitted by NLL on the kept calibration pixels only.

The rejected pixels' logits are made uniform by scaling them by 1e-6 around their maximum (probabilities within about
1e-5 of 1/C), not by setting them equal, so the arg-max, and hence mIoU, is preserved everywhere. Meta-Cal* does not
minimise the NLL of the whole split: giving 1/C to rejected pixels that were right costs ``log C`` each.
"""

from __future__ import annotations

import torch

from segcal_lib.calibrators.base import Calibrator
from segcal_lib.calibrators.registry import register_calibrator
from segcal_lib.calibrators.temperature import fit_inverse_temperature

__all__ = ["MetaCal", "entropy"]

REJECT_SCALE = 1e-6  # logits of rejected pixels shrink by this factor: uniform to ~1e-5, same arg-max


def entropy(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits)`` along ``dim``; ``0 * log 0`` counts as 0."""
    logp = logits.log_softmax(dim)
    return -(logp.exp() * logp).nan_to_num(0.0).sum(dim)


@register_calibrator("meta_cal", "metacal")
class MetaCal(Calibrator):
    """Meta-Cal*: reject pixels whose entropy exceeds a threshold (uniform output), temperature-scale the rest.

    Parameters
    ----------
    alpha : float in (0, 1), default 0.05; the share of correctly predicted calibration pixels allowed above the
        threshold (the miscoverage rate).
    (and those of :class:`~segcal_lib.calibrators.base.Calibrator`)

    Attributes
    ----------
    threshold_ : float64 scalar tensor, the entropy threshold (nats).
    temperature_ : float64 scalar tensor, the temperature of the kept pixels.
    rejected_share_ : float64 scalar tensor, the share of calibration pixels rejected.
    """

    def __init__(self, alpha: float = 0.05, **kw):
        super().__init__(**kw)
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
        self.alpha = alpha
        for name in ("threshold_", "temperature_", "rejected_share_"):
            self.register_buffer(name, torch.tensor(float("nan"), dtype=torch.float64))

    def _fit_pixels(self, logits, labels):
        x = logits.double()
        h = entropy(x)
        correct = x.argmax(1) == labels
        if not correct.any():
            raise ValueError("Meta-Cal needs correctly predicted calibration pixels to set its threshold; found none")
        threshold = torch.quantile(h[correct], 1.0 - self.alpha)  # at most alpha of the correct pixels lie above
        kept = h <= threshold
        self.threshold_.fill_(float(threshold))
        self.rejected_share_.fill_(float((~kept).double().mean()))
        self.temperature_.fill_(1.0 / fit_inverse_temperature(x[kept], labels[kept]))

    def _calibrate(self, logits, images):
        rejected = (entropy(logits.float()) > self.threshold_.float())[:, None]
        scaled = logits / self.temperature_.to(logits.dtype)
        flat = (logits - logits.amax(1, keepdim=True)) * REJECT_SCALE
        return torch.where(rejected, flat, scaled)
