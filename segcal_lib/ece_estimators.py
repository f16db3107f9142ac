"""Other estimators of ECE than the plug-in one: debiased and adaptive-bin (equal-mass), per image and pooled.

The plug-in ECE, sum_b (n_b / n) |acc_b - conf_b|, is biased upwards: with few pixels per bin, acc_b scatters around
its expectation and the absolute value turns the scatter into a positive gap, even for a perfectly calibrated model.
One image has few pixels per bin, so image-wise ECE (the paper's metric) carries more of this bias than pooled ECE.

- **Debiased ECE** (after Kumar, Liang, Ma 2019) subtracts an estimate of that bias, bin by bin:
  ``ECE_db = sum_b (n_b / n) (2 |g_b| - E|g_b + e_b|)``, ``e_b ~ N(0, s_b^2)``, where ``g_b = acc_b - conf_b`` and
  ``E|N(g, s^2)|`` is in closed form. We take ``s_b^2 = conf_b (1 - conf_b) / n_b``, the variance of acc_b if the bin
  were calibrated; Kumar et al. use the observed accuracy instead, which gives no correction at all to bins whose
  pixels are all right or all wrong, common among one image's bins. The estimate can fall slightly below 0; it is
  not clipped (a value near 0 says "no miscalibration detectable"). The correction is evaluated at the observed
  gap, itself noisy, so it removes only part of the bias: on a calibrated model with 5 classes it lowered image-wise
  ECE by about 40% at 6 to 400 pixels per bin (tests/test_ece_estimators.py). The calibrated stand-in
  (:mod:`segcal_lib.standin`) measures the whole bias directly, for the model at hand.
- **Adaptive-bin ECE** uses ``n_bins`` bins that hold about the same number of pixels (equal mass) instead of equal
  widths (Nixon et al. 2019). A streaming meter cannot keep quantiles exactly, so it keeps ``fine_bins`` (default
  1000) equal-width sub-bins and merges consecutive sub-bins into groups of about equal mass: a sub-bin starts a new
  group when the pixels before it reach the next multiple of n / n_bins. Group masses are therefore equal up to one
  sub-bin's pixels (confidences pile up near 1, so the last group may hold more than its share).

:class:`ImageBinSums` is the state both need, kept by :class:`~segcal_lib.metrics.CalibrationMeter` when it is built
with ``estimators=("debiased", "adaptive")``: per image and fine sub-bin, the pixel count, the sum of confidences and
the number of correct pixels, in float64 (O(images x fine_bins) memory). The functions below also work on any
per-bin sums (arrays (..., 3, B)).
"""

from __future__ import annotations

import math

import torch

__all__ = ["ESTIMATORS", "ImageBinSums", "adaptive_ece", "debiased_ece", "expected_abs_normal"]

ESTIMATORS = ("debiased", "adaptive")
DEFAULT_FINE_BINS = 1000


def expected_abs_normal(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``E|X|`` for ``X ~ N(mean, std^2)`` (the folded normal's mean); ``|mean|`` where ``std`` is 0."""
    mean, std = torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(std, dtype=torch.float64)
    safe = std.where(std > 0, torch.ones_like(std))
    z = mean / safe
    folded = safe * math.sqrt(2 / math.pi) * torch.exp(-0.5 * z * z) + mean * torch.erf(z / math.sqrt(2))
    return folded.where(std > 0, mean.abs())


def _split(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    sums = torch.as_tensor(sums, dtype=torch.float64)
    if sums.ndim < 2 or sums.shape[-2] != 3:
        raise ValueError(f"sums must have shape (..., 3, B) (count, confidence sum, hit sum), got {tuple(sums.shape)}")
    return sums[..., 0, :], sums[..., 1, :], sums[..., 2, :]


def debiased_ece(sums: torch.Tensor) -> torch.Tensor:
    """Debiased ECE from per-bin sums (..., 3, B); NaN where there are no pixels. See the module docstring."""
    count, conf_sum, hit_sum = _split(sums)
    n_b = count.clamp_min(1)
    conf, gap = conf_sum / n_b, (hit_sum - conf_sum) / n_b
    std = (conf * (1 - conf)).clamp_min(0).div(n_b).sqrt()
    per_bin = count * (2 * gap.abs() - expected_abs_normal(gap, std))
    n = count.sum(-1)
    return per_bin.sum(-1) / n.where(n > 0, torch.full_like(n, math.nan))


def adaptive_ece(fine_sums: torch.Tensor, n_bins: int) -> torch.Tensor:
    """ECE over ``n_bins`` groups of about equal mass, merged from fine equal-width sub-bins (..., 3, F)."""
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    count, conf_sum, hit_sum = _split(fine_sums)
    n = count.sum(-1, keepdim=True)
    before = count.cumsum(-1) - count  # pixels in the sub-bins before this one
    group = (before * n_bins / n.clamp_min(1)).floor().long().clamp_(0, n_bins - 1)
    diff = torch.zeros(*count.shape[:-1], n_bins, dtype=torch.float64, device=count.device)
    diff.scatter_add_(-1, group, conf_sum - hit_sum)
    n = n.squeeze(-1)
    return diff.abs().sum(-1) / n.where(n > 0, torch.full_like(n, math.nan))


class ImageBinSums:
    """Per-image (count, confidence sum, hit sum) in ``fine_bins`` equal-width sub-bins; float64.

    Parameters
    ----------
    n_bins : the meter's number of equal-width bins; ``fine_bins`` must be a multiple of it, so the meter's bins are
        unions of sub-bins (the edges k / n_bins and j / fine_bins coincide exactly as float64).
    fine_bins : number of sub-bins (default 1000).
    device : where the state lives.
    """

    def __init__(self, n_bins: int, fine_bins: int = DEFAULT_FINE_BINS, device: torch.device | str | None = None):
        if not isinstance(fine_bins, int) or fine_bins < n_bins or fine_bins % n_bins:
            raise ValueError(f"fine_bins must be a multiple of n_bins={n_bins}, got {fine_bins!r}")
        self.n_bins, self.fine_bins = n_bins, fine_bins
        dev = torch.device(device or "cpu")
        self.edges = torch.arange(fine_bins + 1, dtype=torch.float64, device=dev) / fine_bins
        self.sums = torch.zeros(0, 3, fine_bins, dtype=torch.float64, device=dev)

    def add(self, fine_index: torch.Tensor, weight: torch.Tensor, conf: torch.Tensor, hit: torch.Tensor) -> None:
        """Add a chunk of images: all arguments (N, P); ``fine_index`` the sub-bin of each pixel, ``weight`` 1 for
        valid pixels and 0 otherwise, ``hit`` 1 where the prediction is right. Images without valid pixels are
        skipped, as in the meter's ``image_eces``."""
        n_img, f = fine_index.shape[0], self.fine_bins
        index = (fine_index + torch.arange(n_img, device=fine_index.device)[:, None] * f).flatten()
        w = weight.to(torch.float64)
        parts = [torch.bincount(index, weights=v.flatten(), minlength=n_img * f).view(n_img, f)
                 for v in (w, conf.to(torch.float64) * w, hit.to(torch.float64) * w)]
        per_img = torch.stack(parts, 1)
        self.sums = torch.cat([self.sums, per_img[per_img[:, 0].sum(1) > 0]])

    def to(self, device) -> ImageBinSums:
        self.edges, self.sums = self.edges.to(device), self.sums.to(device)
        return self

    def merge(self, other: ImageBinSums) -> None:
        self.sums = torch.cat([self.sums, other.sums.to(self.sums.device)])

    def coarse(self) -> torch.Tensor:
        """Per-image sums in the meter's ``n_bins`` equal-width bins, (n_images, 3, n_bins)."""
        n = self.sums.shape[0]
        return self.sums.view(n, 3, self.n_bins, self.fine_bins // self.n_bins).sum(-1)

    def compute(self, estimators) -> dict:
        """``{"<est>_ece", "<est>_image_ece", "<est>_image_eces"}`` for each requested estimator (pooled ECE over
        all pixels, the mean over images, and one value per image as a NumPy array)."""
        out = {}
        for est in estimators:
            if est == "debiased":
                per_image, pooled = debiased_ece(self.coarse()), debiased_ece(self.coarse().sum(0))
            elif est == "adaptive":
                per_image = adaptive_ece(self.sums, self.n_bins)
                pooled = adaptive_ece(self.sums.sum(0), self.n_bins)
            else:
                raise ValueError(f"estimators must be a subset of {ESTIMATORS}, got {est!r}")
            out[f"{est}_ece"] = float(pooled)
            out[f"{est}_image_ece"] = float(per_image.mean()) if per_image.numel() else math.nan
            out[f"{est}_image_eces"] = per_image.cpu().numpy()
        return out
