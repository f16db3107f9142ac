"""Fit calibrators on a calibration split and measure them on a test split: the loop behind the book's tables.

>>> table, results = compare_calibrators({"Uncal": "identity", "TempS": "ts"}, val_store, test_store)  # doctest: +SKIP

Sources are a :class:`~segcal_lib.logit_store.LogitStore`, an :class:`ImageBatches` (a store zipped with its images,
for calibrators that need them; :func:`segcal_lib.pipeline.with_images` makes one), or any re-iterable of
``(logits, labels[, images])`` batches. Fitting and measuring are separate passes over separate splits, so no
calibrator is ever scored on the pixels it was fitted on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence

import pandas as pd
import torch

from segcal_lib.calibrators.base import Calibrator
from segcal_lib.calibrators.registry import make_calibrator
from segcal_lib.calibrators.sampling import as_batches
from segcal_lib.metrics import CalibrationMeter, SegmentationMeter
from segcal_lib.report import calibration_table

__all__ = ["ImageBatches", "compare_calibrators", "evaluate_calibrator"]


class ImageBatches:
    """``(logits, labels, images)`` batches: a logit store zipped with the images it was computed from.

    Parameters
    ----------
    store : a :class:`~segcal_lib.logit_store.LogitStore` (or anything with ``iter_batches`` and ``len``).
    images : a data set whose item ``i`` starts with ``(image (3, H, W) float in [0, 1], label (H, W))`` (e.g. a
        :class:`~segcal_lib.data.base.Sample`), in the store's order; or a float tensor (N, 3, H, W).
    batch_size : int, default 8.
    check_labels : bool, default True; compare each data-set label with the stored one and raise ``ValueError`` when
        they differ (the images are not those of the store).

    Iterating yields float32 logits (B, C, H, W), int64 labels (B, H, W) and float32 images (B, 3, H, W); it can be
    iterated many times (each pass reads the store and the images again). ``len`` is the number of batches.
    """

    def __init__(self, store, images, batch_size: int = 8, check_labels: bool = True):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if len(images) != len(store):
            raise ValueError(f"images must hold one image per stored image ({len(store)}), got {len(images)}")
        self.store, self.images, self.batch_size, self.check_labels = store, images, batch_size, check_labels

    def __len__(self) -> int:
        return -(-len(self.store) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        start = 0
        for logits, labels in self.store.iter_batches(self.batch_size):
            idx = range(start, start + len(logits))
            start += len(logits)
            if isinstance(self.images, torch.Tensor):
                yield logits, labels, self.images[idx.start:idx.stop].float()
                continue
            items = [self.images[i] for i in idx]
            images = torch.stack([torch.as_tensor(it[0]) for it in items]).float()
            if images.shape[2:] != logits.shape[2:]:
                raise ValueError(f"images must have the stored size {tuple(logits.shape[2:])}, got "
                                 f"{tuple(images.shape[2:])}")
            if self.check_labels:
                given = torch.stack([torch.as_tensor(it[1]) for it in items]).long()
                if not torch.equal(given, labels):
                    raise ValueError(f"the labels of images {idx.start}..{idx.stop - 1} differ from the stored ones: "
                                     f"images and store are not the same split in the same order")
            yield logits, labels, images


def _source_for(cal: Calibrator, source):
    """Skip reading images for a calibrator that does not use them."""
    return source.store if isinstance(source, ImageBatches) and not cal.needs_images else source


def evaluate_calibrator(cal: Calibrator, source, n_bins: int = 10) -> tuple[dict, dict]:
    """Apply a fitted calibrator to every batch of ``source`` and measure the result.

    Returns
    -------
    (``CalibrationMeter.compute()`` dict, ``SegmentationMeter.compute()`` dict) of the calibrated logits.
    """
    cal.check_fitted()
    batches, _ = as_batches(_source_for(cal, source))
    meter = seg = None
    for logits, labels, images in batches:
        if meter is None:
            meter, seg = CalibrationMeter(logits.shape[1], n_bins=n_bins), SegmentationMeter(logits.shape[1])
        with torch.no_grad():
            out = cal(logits, images if cal.needs_images else None)
        meter.update(out, labels)
        seg.update(out, labels)
    if meter is None:
        raise ValueError("source holds no batch")
    return meter.compute(), seg.compute()


def compare_calibrators(calibrators: Sequence[str] | Mapping[str, str | Calibrator], cal_source, test_source, *,
                        options: Mapping[str, Mapping] | None = None, n_bins: int = 10, seed: int = 0,
                        progress: bool = False) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Fit each calibrator on ``cal_source`` and measure it on ``test_source``.

    Parameters
    ----------
    calibrators : registry names (rows named by them), or ``{row name: registry name or Calibrator}``. Unfitted
        calibrators are fitted on ``cal_source``; calibrators passed already fitted are used as they are.
    cal_source, test_source : sources as described in the module docstring (disjoint splits).
    options : ``{row name: keyword options}`` for calibrators made from names, e.g.
        ``{"Ens.": {"members": [model_b, model_c]}}``.
    n_bins : ECE bins (equal-width; 10 as in the paper).
    seed : seed of every calibrator made from a name and of the bootstrap intervals.
    progress : progress bars while fitting.

    Returns
    -------
    table : DataFrame from :func:`segcal_lib.report.calibration_table` (image-wise ECE with its 95% bootstrap
        interval, pooled ECE, NLL, Brier, confidence − accuracy, mIoU), plus ``fit (s)``; one row per calibrator.
    results : ``{row name: {"calibrator", "calibration", "segmentation", "fit_seconds", "eval_seconds"}}``.
    """
    if not isinstance(calibrators, Mapping):
        if isinstance(calibrators, str) or not isinstance(calibrators, Iterable):
            raise ValueError(f"calibrators must be a list of names or a dict of name -> calibrator, got "
                             f"{calibrators!r}")
        calibrators = {name: name for name in calibrators}
    if not calibrators:
        raise ValueError("calibrators must name at least one calibrator")
    options = dict(options or {})
    unknown = set(options) - set(calibrators)
    if unknown:
        raise ValueError(f"options has keys {sorted(unknown)} that are not rows of calibrators {list(calibrators)}")
    results: dict[str, dict] = {}
    for row, spec in calibrators.items():
        if isinstance(spec, Calibrator):
            cal = spec
        elif isinstance(spec, str):
            cal = make_calibrator(spec, **{"seed": seed, "progress": progress, **options.get(row, {})})
        else:
            raise ValueError(f"calibrators[{row!r}] must be a registry name or a Calibrator, got {type(spec).__name__}")
        t0 = time.perf_counter()
        if not cal.is_fitted:
            cal.fit(_source_for(cal, cal_source))
        t1 = time.perf_counter()
        calib, segm = evaluate_calibrator(cal, test_source, n_bins)
        results[row] = {"calibrator": cal, "calibration": calib, "segmentation": segm, "fit_seconds": t1 - t0,
                        "eval_seconds": time.perf_counter() - t1}
    table = calibration_table({k: r["calibration"] for k, r in results.items()},
                              miou={k: r["segmentation"]["miou"] for k, r in results.items()}, seed=seed)
    table["fit (s)"] = [round(r["fit_seconds"], 2) for r in results.values()]
    return table, results
