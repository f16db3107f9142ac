"""Measure a stored split, raw or through a calibrator: the numbers every calibration table shows.

>>> res, miou = evaluate_store(test_store, fit_calibrator("ts", cal_store))     # doctest: +SKIP
>>> res["image_ece"], res["ece"], miou                                          # doctest: +SKIP
"""

from __future__ import annotations

import torch

from segcal_lib.calibrators import make_calibrator
from segcal_lib.metrics import CalibrationMeter, SegmentationMeter

__all__ = ["evaluate_store", "fit_calibrator"]


def _batches(store, batch_size: int):
    """(scores, labels, inputs) batches; stored probabilities are renormalised (float16 rounding breaks sum = 1)."""
    probs = store.meta.get("scores", "logits") == "probs"
    for lg, lb in store.iter_batches(batch_size):
        yield (lg / lg.sum(1, keepdim=True).clamp_min(1e-12) if probs else lg), lb, ("probs" if probs else "logits")


def evaluate_store(store, calibrator=None, n_bins: int = 10, batch_size: int = 8) -> tuple[dict, float]:
    """Calibration metrics and mIoU of a :class:`~segcal_lib.logit_store.LogitStore`, after ``calibrator`` if given.

    Parameters
    ----------
    store : a store of logits (or of probabilities, ``meta["scores"] == "probs"``, which cannot be calibrated).
    calibrator : a fitted calibrator, or None for the stored scores as they are.
    n_bins : equal-width ECE bins (10, as in the paper).
    batch_size : images per batch.

    Returns
    -------
    (``CalibrationMeter.compute()`` dict, mIoU as a fraction).
    """
    ignore = int(store.meta.get("ignore_index", 255))
    meter = CalibrationMeter(store.num_classes, n_bins=n_bins, ignore_index=ignore, classwise=False)
    seg = SegmentationMeter(store.num_classes, ignore_index=ignore)
    with torch.no_grad():
        for scores, labels, inputs in _batches(store, batch_size):
            if calibrator is not None:
                if inputs == "probs":
                    raise ValueError("store holds probabilities; a calibrator needs a store of logits")
                scores = calibrator(scores)
            if inputs != meter.inputs:
                meter = CalibrationMeter(store.num_classes, n_bins=n_bins, ignore_index=ignore, inputs=inputs,
                                         classwise=False)
            meter.update(scores, labels)
            seg.update(scores, labels)
    return meter.compute(), float(seg.compute()["miou"])


def fit_calibrator(name: str, store, progress: bool = False, **options):
    """A calibrator from the registry, fitted on a store (without a progress bar unless asked)."""
    cal = make_calibrator(name, **options)
    cal.progress = progress
    return cal.fit(store)
