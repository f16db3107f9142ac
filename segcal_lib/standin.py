"""The calibrated stand-in: the same model, with labels drawn from its own probabilities.

A model whose labels are sampled from its softmax is perfectly calibrated by construction: among pixels it gives
confidence 0.8, 80% of the sampled labels agree with its prediction, up to sampling noise. The stand-in keeps the
model's confidences and predictions and changes only the labels, so any calibration number computed on it (ECE of
a pixel subset, image-wise ECE of small images, ...) is the value a *perfectly calibrated* model with these
confidences would get. The real model's number minus the stand-in's is the part that is miscalibration; the rest comes
from the definition of the subset or from the finite number of pixels per bin.

>>> logits = torch.zeros(1, 3, 2, 2)             # uniform over 3 classes
>>> sample_calibrated_labels(logits, seed=0).shape
torch.Size([1, 2, 2])
"""

from __future__ import annotations

import torch

__all__ = ["sample_calibrated_labels"]


@torch.no_grad()
def sample_calibrated_labels(logits: torch.Tensor, seed: int = 0, labels: torch.Tensor | None = None,
                             ignore_index: int = 255) -> torch.Tensor:
    """Draw one label per pixel from ``softmax(logits)``.

    Parameters
    ----------
    logits : float tensor (N, C, H, W).
    seed : int, default 0; the same seed gives the same labels (drawn on the CPU, so on any device).
    labels : optional integer tensor (N, H, W), the real labels: their ``ignore_index`` pixels stay ignored, so the
        stand-in is evaluated on exactly the real model's pixels.
    ignore_index : int, default 255.

    Returns
    -------
    int64 tensor (N, H, W) on the device of ``logits``: class ids drawn from the model's probabilities, and
    ``ignore_index`` where ``labels`` has it.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a float tensor of shape (N, C, H, W), got {shape}")
    n, c, h, w = logits.shape
    if labels is not None and (not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (n, h, w)):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a tensor of shape {(n, h, w)}, got {got}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinite values")
    # Inverse-CDF sampling: the label is the number of classes whose cumulative probability lies below u.
    cdf = logits.double().softmax(1).cumsum(1)
    u = torch.rand((n, 1, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    drawn = (cdf < u.to(logits.device)).sum(1).clamp_(max=c - 1)  # clamp: u above a cdf that rounds below 1
    if labels is not None:
        drawn = drawn.masked_fill(labels.to(drawn.device) == ignore_index, ignore_index)
    return drawn
