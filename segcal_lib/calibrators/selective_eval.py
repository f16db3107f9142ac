"""Measuring selective scaling: calibrators on a test split, oracle and degraded selectors, and whether it will help.

- :func:`evaluate_calibrators`: one pass over a split, every calibrator's calibration metrics (optionally on pixel
  subsets such as boundary / interior) and mIoU. Entries may also be functions of the labels (oracle selectors).
- :class:`OracleSelective`: selective scaling with a selector that knows the labels, degraded on purpose (it misses a
  share of the mispredicted pixels and flags a share of the correct ones), the paper's sensitivity ablation.
- :func:`selector_detection`: a fitted selector's detection quality on a split (accuracy, precision, recall, AUROC).
- :func:`estimate_selective_gain`: on a calibration split alone, fit on one part and measure on the rest whether
  selective scaling lowers image-wise ECE below its base, with a paired bootstrap interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from segcal_lib.calibrators.base import Calibrator
from segcal_lib.calibrators.registry import make_calibrator
from segcal_lib.calibrators.sampling import as_batches
from segcal_lib.calibrators.selective import PAPER_T_MIS, apply_selective_scaling, detection_quality, selector_scores
from segcal_lib.metrics import CalibrationMeter, SegmentationMeter, boundary_mask
from segcal_lib.stats import paired_bootstrap_ci

__all__ = ["BOUNDARY_SUBSETS", "OracleSelective", "estimate_selective_gain",
           "FlaggedStats", "evaluate_calibrators", "flagged_calibration", "oracle_sweep", "selective_flag_batches",
           "selector_detection"]

IGNORE_INDEX = 255
BOUNDARY_SUBSETS: dict[str, Callable] = {
    "boundary": lambda labels: boundary_mask(labels),
    "non-boundary": lambda labels: (labels != IGNORE_INDEX) & ~boundary_mask(labels),
}


def _apply(method, logits, labels, images):
    if isinstance(method, Calibrator):
        return method(logits, images)
    return method(logits, labels, images)


@torch.no_grad()
def evaluate_calibrators(methods: Mapping[str, Calibrator | Callable], source, subsets: Mapping[str, Callable]
                         | None = None, n_bins: int = 10, batch_size: int = 8, progress: bool = True) -> dict:
    """Calibration metrics and mIoU of several methods on one split, in one pass.

    Parameters
    ----------
    methods : {name: fitted Calibrator, or a function ``(logits, labels, images) -> logits``} (e.g. an
        :class:`OracleSelective`).
    source : a LogitStore, an iterable of ``(logits, labels[, images])`` batches, or a logits tensor (N, C, H, W)
        (then give ``(logits, labels)`` as a tuple).
    subsets : {name: ``labels (N, H, W) -> bool mask``} of pixel subsets measured beside all pixels
        (e.g. :data:`BOUNDARY_SUBSETS`).
    n_bins : equal-width ECE bins (10, as the paper).

    Returns
    -------
    dict with ``"metrics"``: {subset ("all" first): {method: ``CalibrationMeter.compute()``}} and ``"miou"``:
    {method: mIoU as a fraction}.
    """
    if not methods:
        raise ValueError("methods must hold at least one calibrator or function")
    if isinstance(source, tuple) and len(source) in (2, 3) and isinstance(source[0], torch.Tensor):
        source = as_batches(*source, batch_size=batch_size)[0]
    elif hasattr(source, "iter_batches"):
        source = source.iter_batches(batch_size)
    subsets = {"all": None, **(subsets or {})}
    meters = seg = None
    for batch in tqdm(source, desc="evaluate", disable=not progress, leave=False):
        logits, labels = batch[0], batch[1]
        images = batch[2] if len(batch) > 2 else None
        if meters is None:
            c = logits.shape[1]
            meters = {s: {m: CalibrationMeter(c, n_bins, classwise=False) for m in methods} for s in subsets}
            seg = {m: SegmentationMeter(c) for m in methods}
        masks = {s: None if fn is None else fn(labels) for s, fn in subsets.items()}
        for name, method in methods.items():
            out = _apply(method, logits, labels, images)
            seg[name].update(out, labels)
            for s, mask in masks.items():
                meters[s][name].update(out, labels, mask)
    if meters is None:
        raise ValueError("source held no batch")
    return {"metrics": {s: {m: meter.compute() for m, meter in ms.items()} for s, ms in meters.items()},
            "miou": {m: float(seg[m].compute()["miou"]) for m in methods}}


class OracleSelective:
    """Selective scaling with a selector that knows the labels, degraded on purpose.

    The oracle flags exactly the pixels whose (base-calibrated) prediction is wrong. A degraded oracle flags each
    mispredicted pixel with probability ``recall`` (its detection accuracy, the x-axis of the paper's sensitivity
    ablation) and each correct pixel with probability ``false_positive_rate``; ``recall=1, false_positive_rate=0``
    is the oracle, the bound of the ablation.

    Parameters
    ----------
    base : fitted Calibrator or None (the raw logits).
    recall, false_positive_rate : floats in [0, 1].
    t_mis, t_cor : temperatures of flagged and unflagged pixels.
    seed : seeds the random misses and false alarms (a fresh generator on every :meth:`reset`).

    Call it as ``oracle(logits, labels, images=None)``; it returns rescaled logits. It also keeps the calibration of
    the pixels it flagged (``stats_``, a :class:`FlaggedStats`) and the precision it reached (``precision_``).
    """

    def __init__(self, base: Calibrator | None = None, recall: float = 1.0, false_positive_rate: float = 0.0,
                 t_mis: float = PAPER_T_MIS, t_cor: float = 1.0, seed: int = 0):
        for name, v in (("recall", recall), ("false_positive_rate", false_positive_rate)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {v!r}")
        self.base, self.recall, self.false_positive_rate = base, recall, false_positive_rate
        self.t_mis, self.t_cor, self.seed = t_mis, t_cor, seed
        self.reset()

    def reset(self) -> OracleSelective:
        self._gen = torch.Generator().manual_seed(self.seed)
        self.stats_ = FlaggedStats()
        return self

    @property
    def precision_(self) -> float:
        """Share of the flagged pixels (so far) that are mispredicted."""
        s = self.stats_
        return 1 - s.hits / s.n_flag if s.n_flag else math.nan

    def flags(self, base_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Bool (N, H, W): the degraded oracle's flags (never on ignored pixels)."""
        valid = labels != IGNORE_INDEX
        wrong = (base_logits.argmax(1) != labels) & valid
        u = torch.rand(labels.shape, generator=self._gen).to(labels.device)
        return (wrong & (u < self.recall)) | (~wrong & valid & (u < self.false_positive_rate))

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor | None = None):
        z = logits if self.base is None else self.base(logits, images)
        flags = self.flags(z, labels)
        out = apply_selective_scaling(z, flags, self.t_mis, self.t_cor)
        self.stats_.update(z, out, flags, labels)
        return out


@torch.no_grad()
def selector_detection(cal, source, batch_size: int = 8, max_pixels: int | None = 4_000_000, seed: int = 0) -> dict:
    """:func:`~segcal_lib.calibrators.selective.selector_quality` of a fitted selector on a split, streamed in
    batches: all valid pixels, or a uniform sample of ``max_pixels`` of them (None: all).

    ``source``: a LogitStore or an iterable of ``(logits, labels[, images])`` batches.
    """
    cal.check_fitted()
    if hasattr(source, "iter_batches"):
        source = source.iter_batches(batch_size)
    gen = torch.Generator().manual_seed(seed)
    qs, wrongs, keys = [], [], []
    for batch in source:
        q, wrong = selector_scores(batch[0], batch[1], cal, batch[2] if len(batch) > 2 else None)
        qs.append(q)
        wrongs.append(wrong)
        keys.append(torch.rand(q.shape, generator=gen))
    q, wrong, key = torch.cat(qs), torch.cat(wrongs), torch.cat(keys)
    if max_pixels is not None and q.numel() > max_pixels:
        keep = key.topk(max_pixels, largest=False).indices
        q, wrong = q[keep], wrong[keep]
    return detection_quality(q, wrong, cal.threshold)


class FlaggedStats:
    """Streaming calibration of the flagged pixels, before and after the scaling (the rule of thumb's ingredients).

    ``update(base_logits, scaled_logits, flags, labels)`` per batch; ``compute()`` returns a dict:
    ``flagged_share`` (of valid pixels), ``accuracy`` (of the base's argmax on flagged pixels: 1 minus the selector's
    precision), ``confidence_before`` / ``confidence_after`` (mean top probability of flagged pixels, base and
    scaled) and ``predicted_gain``: ``share * (|conf_before - acc| - |conf_after - acc|)``, the drop of the flagged
    pixels' contribution to pooled ECE if they shared no bin with the others (positive: the rule predicts that
    selective scaling helps).
    """

    def __init__(self):
        self.n_valid = self.n_flag = self.hits = self.conf_before = self.conf_after = 0.0

    @torch.no_grad()
    def update(self, base_logits, scaled_logits, flags, labels) -> FlaggedStats:
        valid = labels != IGNORE_INDEX
        f = flags & valid
        self.n_valid += float(valid.sum())
        self.n_flag += float(f.sum())
        self.hits += float(((base_logits.argmax(1) == labels) & f).sum())
        self.conf_before += float(base_logits.float().softmax(1).amax(1)[f].double().sum())
        self.conf_after += float(scaled_logits.float().softmax(1).amax(1)[f].double().sum())
        return self

    def compute(self) -> dict:
        if self.n_flag == 0:
            return {"flagged_share": 0.0, "accuracy": math.nan, "confidence_before": math.nan,
                    "confidence_after": math.nan, "predicted_gain": 0.0}
        acc, cb, ca = self.hits / self.n_flag, self.conf_before / self.n_flag, self.conf_after / self.n_flag
        share = self.n_flag / self.n_valid
        return {"flagged_share": share, "accuracy": acc, "confidence_before": cb, "confidence_after": ca,
                "predicted_gain": share * (abs(cb - acc) - abs(ca - acc))}


def flagged_calibration(batches) -> dict:
    """:class:`FlaggedStats` over an iterable of ``(base_logits, scaled_logits, flags, labels)``."""
    stats = FlaggedStats()
    for batch in batches:
        stats.update(*batch)
    return stats.compute()


def selective_flag_batches(cal, source, batch_size: int = 8):
    """``(base_logits, scaled_logits, flags, labels)`` of a fitted selective calibrator on a split, for
    :func:`flagged_calibration` (soft selectors: flags are ``P(mispredicted) > threshold``)."""
    if hasattr(source, "iter_batches"):
        source = source.iter_batches(batch_size)
    for batch in source:
        logits, labels = batch[0], batch[1]
        images = batch[2] if len(batch) > 2 else None
        with torch.no_grad():
            z = cal.base(logits, images)
            q = cal.mispredicted_proba(logits, images)
            yield z, apply_selective_scaling(z, q, cal.t_mis_, cal.t_cor_, cal.soft, cal.threshold), \
                q > cal.threshold, labels


def estimate_selective_gain(cal_store, base: str = "ts", held_out: float = 0.3, seed: int = 0, n_bins: int = 10,
                            base_options: dict | None = None, progress: bool = False, **selective_options) -> dict:
    """Will selective scaling help this model? Measured on the calibration split alone.

    The calibration images are split (seeded) into a fitting part and a held-out part. The base calibrator and
    selective scaling on top of it are fitted on the first and compared on the second, image by image.

    Parameters
    ----------
    cal_store : LogitStore (or anything with ``len`` and ``__getitem__`` -> (logits (C, H, W), labels (H, W))) of
        the calibration split; at least 4 images.
    base : registered name of the base calibrator (one that does not need images).
    held_out : share of the images kept for the comparison.
    selective_options : options of :class:`~segcal_lib.calibrators.selective.SelectiveScaling`.

    Returns
    -------
    dict: ``gain`` (image-wise ECE of the base minus that of selective scaling on the held-out images; positive =
    selective helps), ``gain_ci`` (95% paired bootstrap interval), ``base_ece``, ``selective_ece``, ``selector``
    (detection quality on the held-out images), ``flagged`` (:func:`flagged_calibration` on the held-out images: the
    rule of thumb's prediction), ``n_fit``, ``n_held_out`` and ``verdict``: ``"likely to help"``
    (interval above 0), ``"likely to hurt"`` (below 0) or ``"no clear effect"``.
    """
    n = len(cal_store)
    if n < 4:
        raise ValueError(f"cal_store must hold at least 4 images to split, got {n}")
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must lie in (0, 1), got {held_out!r}")
    perm = np.random.default_rng(seed).permutation(n)
    n_out = min(n - 2, max(2, round(n * held_out)))
    out_idx, fit_idx = sorted(perm[:n_out].tolist()), sorted(perm[n_out:].tolist())

    def batches(idx, size=8):
        for s in range(0, len(idx), size):
            items = [cal_store[i] for i in idx[s:s + size]]
            yield torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])

    base_cal = make_calibrator(base, **{"progress": False, **(base_options or {})})
    if base_cal.needs_images:
        raise ValueError(f"base {base!r} needs images; estimate_selective_gain works from stored logits only")
    base_cal.fit(batches(fit_idx))
    sel = make_calibrator("selective", base=base_cal, progress=progress, seed=seed, **selective_options)
    sel.fit(list(batches(fit_idx)))
    res = evaluate_calibrators({"base": base_cal, "selective": sel}, batches(out_idx), n_bins=n_bins,
                               progress=False)["metrics"]["all"]
    gain, lo, hi = paired_bootstrap_ci(res["selective"]["image_eces"], res["base"]["image_eces"], seed=seed)
    verdict = "likely to help" if lo > 0 else "likely to hurt" if hi < 0 else "no clear effect"
    return {"gain": gain, "gain_ci": (lo, hi), "base_ece": res["base"]["image_ece"],
            "selective_ece": res["selective"]["image_ece"], "selector": selector_detection(sel, batches(out_idx)),
            "flagged": flagged_calibration(selective_flag_batches(sel, batches(out_idx))),
            "n_fit": len(fit_idx), "n_held_out": len(out_idx), "verdict": verdict}


def oracle_sweep(base: Calibrator | None, source_fn: Callable, settings: Sequence[tuple[float, float]],
                 t_mis: float = PAPER_T_MIS, seed: int = 0, progress: bool = False) -> list[dict]:
    """Image-wise and pooled ECE of degraded oracles, one per ``(recall, false_positive_rate)`` in ``settings``.

    ``source_fn()`` returns a fresh iterable of batches (the split is read once for all settings).
    Returns one dict per setting: ``recall``, ``false_positive_rate``, ``precision`` (reached), ``image_ece``,
    ``pooled_ece``, ``nll``, the per-image values ``image_eces`` and ``flagged`` (:meth:`FlaggedStats.compute`).
    """
    oracles = {f"{r}|{f}": OracleSelective(base, r, f, t_mis=t_mis, seed=seed) for r, f in settings}
    res = evaluate_calibrators(oracles, source_fn(), progress=progress)["metrics"]["all"]
    return [{"recall": o.recall, "false_positive_rate": o.false_positive_rate, "precision": o.precision_,
             "image_ece": res[k]["image_ece"], "pooled_ece": res[k]["ece"], "nll": res[k]["nll"],
             "image_eces": res[k]["image_eces"], "flagged": o.stats_.compute()} for k, o in oracles.items()]
