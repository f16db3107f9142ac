"""Correct vs mispredicted pixels, the calibrated stand-in, the oracle and boundary pixels (chapter 7).

The calibrated stand-in
-----------------------
ECE restricted to mispredicted pixels is their mean confidence (their accuracy is zero by definition), and on correct
pixels one minus it; even a perfectly calibrated model scores a large "ECE" on its mispredictions. The stand-in makes
that visible: labels drawn from the model's own softmax at every pixel (perfectly calibrated by construction, with the
same confidences). A subset's ECE on the real labels minus the same subset's ECE on the stand-in's labels is the part
that is miscalibration; the rest is the definition of the subset.

The oracle
----------
The bound of the paper's selector-sensitivity figure: if the mispredicted pixels were known, their logits would be
divided by a very large temperature (1e10 in the authors' release), which leaves the prediction unchanged and lowers its
confidence to 1/C. :func:`oracle_logits` does this, optionally only inside a mask (e.g. boundary pixels), so that a
chapter can say how much of the total ECE the oracle removes, and how much of that comes from boundary pixels.
"""

from __future__ import annotations

import torch

from segcal_lib.analysis.image_sums import ImageSums, SumsCollector
from segcal_lib.metrics import IGNORE_INDEX, boundary_mask, correctness_masks

__all__ = ["ORACLE_TEMPERATURE", "correctness_sums", "oracle_logits"]

#: Temperature the oracle applies to mispredicted pixels (the paper's "accurate selector" setting).
ORACLE_TEMPERATURE = 1e10


def _sample_calibrated_labels(logits: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                              ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels drawn from the model's own probabilities: ``y ~ Categorical(softmax(logits))`` at every pixel.

    Gumbel-max sampling (the arg-max of ``logits + Gumbel noise`` is distributed as the softmax), on the CPU with
    ``generator``, so the draw depends on the generator's seed only. Pixels whose label is ``ignore_index`` stay
    ignored, so the stand-in counts exactly the real labels' pixels.

    Parameters
    ----------
    logits : float (N, C, H, W).
    labels : integer (N, H, W), the real labels (only their ignore pixels are used).
    generator : a CPU ``torch.Generator``.

    Returns
    -------
    int64 (N, H, W) on ``logits``' device.
    """
    if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"logits must be (N, C, H, W) and labels (N, H, W), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    tiny = torch.finfo(torch.float32).tiny
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float32).clamp_(tiny, 1 - 2**-24)
    gumbel = -torch.log(-torch.log(u))
    sampled = (logits.float().cpu() + gumbel).argmax(1).to(logits.device)
    labels = labels.to(logits.device).long()
    return sampled.where(labels != ignore_index, labels)


def oracle_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = ORACLE_TEMPERATURE,
                  mask: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Logits with the mispredicted pixels (optionally only those inside ``mask``) divided by ``temperature``.

    Parameters
    ----------
    logits : float (N, C, H, W).
    labels : integer (N, H, W); ignored pixels are never touched.
    temperature : positive; the default (1e10) makes the top-class probability 1/C while keeping the arg-max.
    mask : optional bool (N, H, W): restrict the oracle to these pixels.

    Returns
    -------
    float (N, C, H, W), the same dtype as ``logits``; predictions (arg-max) are unchanged.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    _, wrong = correctness_masks(logits, labels, ignore_index)
    if mask is not None:
        wrong = wrong & mask
    return torch.where(wrong[:, None], logits / temperature, logits)


def correctness_sums(batches, num_classes: int, n_bins: int = 10, boundary_radius: int = 1, seed: int = 0,
                     ignore_index: int = IGNORE_INDEX) -> dict[tuple[str, str], ImageSums]:
    """One pass over ``(logits, labels)`` batches; the sums of every subset the correctness chapter reports.

    Parameters
    ----------
    batches : iterable of ``(logits (B, C, H, W), labels (B, H, W))`` (e.g. ``store.iter_batches()``).
    num_classes, n_bins : as for the meters.
    boundary_radius : pixels within this distance of a different label are boundary pixels
        (:func:`~segcal_lib.metrics.boundary_mask`, computed on the real labels for both label sets).
    seed : seeds the stand-in's draws (one generator for the whole pass).

    Returns
    -------
    ``{(labels, subset): ImageSums}`` with ``labels`` in ``"model"`` (the real labels), ``"stand-in"`` (labels drawn
    from the model's probabilities), ``"oracle"`` (real labels, oracle logits) and ``subset`` in ``"all"``,
    ``"correct"``, ``"mispredicted"``, ``"boundary"``, ``"interior"``. For ``"oracle"``, the subset names which
    mispredicted pixels the oracle knows: ``"all"`` (every one), ``"boundary"`` or ``"interior"``; every pixel counts.
    """
    gen = torch.Generator().manual_seed(seed)
    cols: dict[tuple[str, str], SumsCollector] = {}

    def add(key, logits, labels, mask=None):
        cols.setdefault(key, SumsCollector(num_classes, n_bins, ignore_index)).add(logits, labels, mask)

    for logits, labels in batches:
        labels = labels.long()
        edge = boundary_mask(labels, boundary_radius, ignore_index)
        valid = labels != ignore_index
        standin = _sample_calibrated_labels(logits, labels, gen, ignore_index)
        for name, y in (("model", labels), ("stand-in", standin)):
            right, wrong = correctness_masks(logits, y, ignore_index)
            for subset, mask in (("all", None), ("correct", right), ("mispredicted", wrong), ("boundary", edge),
                                 ("interior", valid & ~edge)):
                add((name, subset), logits, y, mask)
        for subset, mask in (("all", None), ("boundary", edge), ("interior", valid & ~edge)):
            add(("oracle", subset), oracle_logits(logits, labels, mask=mask, ignore_index=ignore_index), labels)
    if not cols:
        raise ValueError("batches must hold at least one image")
    return {key: col.result() for key, col in cols.items()}
