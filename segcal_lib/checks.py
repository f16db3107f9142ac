"""The one input check of the library: every public entry point validates its tensors here, with the same messages.

Meters, their functional twins, the logit store, training, inference and plots call these functions; calibrators and
later modules should too, so that a bad input fails the same way wherever it enters. Each check raises
``ValueError`` naming the argument and what was expected; none of them clips, casts or guesses.

API
---
- :func:`check_logits_labels` ``(logits, labels, num_classes=None, ignore_index=255, mask=None, inputs="logits",
  finite=True, name_logits="logits", name_labels="labels")``: scores (N, C, H, W) float, labels (N, H, W) integer in
  [0, C) or ``ignore_index``, optional bool mask (N, H, W); finiteness, and for ``inputs="probs"`` range and sums.
- :func:`check_labels` ``(labels, num_classes, ignore_index=255, shape=None, name="labels")``: integer dtype and range.
- :func:`check_class_ids` ``(preds, num_classes, shape, name="preds")``: predicted class ids in [0, C).
- :func:`check_mask` ``(mask, shape)``: None or a bool tensor of that shape.
- :func:`check_images` ``(images, name="images", ndim=4)``: float (N, 3, H, W) (or (3, H, W) with ``ndim=3``),
  finite, in [0, 1].
- :func:`check_scores` ``(scores, inputs="logits", name="scores")``: finite; probabilities in [0, 1] summing to 1.
- :func:`check_screened` ``(scores, labels, n_nonfinite, n_bad_labels, num_classes, ...)``: the value checks of
  :func:`check_logits_labels` (label range, finiteness) settled from counts that a caller's own pass over the data
  made (the meters' native kernel): nothing is read again unless a count is not zero, and then the error is the
  usual one.
- :func:`check_ignore_index` ``(ignore_index, num_classes=None)``: an int outside [0, num_classes).
- :func:`check_num_classes`, :func:`check_positive_int`, :func:`check_scales`: scalar arguments.

Conventions
-----------
- Labels are integer tensors (uint8 to int64). Float labels are rejected, never truncated: ``y.float() + 0.7`` is not a
  label map. Bool labels are rejected too.
- Label values are checked against the class count *before* any indexing, so a bad label gives this ``ValueError``
  and never an ``IndexError`` (or, on CUDA, a device-side assert that kills the process).
- ``ignore_index`` is an int (255 in this library) that must not name a real class: a value in ``[0, num_classes)``
  would silently drop that class from every metric.
- Images are float tensors in [0, 1] with no NaN or infinity (models normalise internally); 8-bit [0, 255] images are
  rejected rather than saturated.
- Empty inputs (N = 0, H = 0 or W = 0) are valid: they pass every check and add nothing. A meter that has seen no
  pixel reports NaN for every metric (and 0 for the counts). Builders that need data to produce something (training,
  a logit store) raise ``ValueError`` ("... is empty") instead.
- Checks read a few scalars back from the device (one host sync per check); meters let callers switch them off with
  ``validate=False`` once their data are known to be sound.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

__all__ = [
    "IGNORE_INDEX",
    "check_class_ids",
    "check_ignore_index",
    "check_images",
    "check_labels",
    "check_logits_labels",
    "check_mask",
    "check_num_classes",
    "check_positive_int",
    "check_scales",
    "check_scores",
    "check_screened",
]

IGNORE_INDEX = 255
# Tolerance on sum_k p_k = 1 for declared probabilities, by dtype: loose enough for a softmax computed in that dtype.
PROB_SUM_ATOL = {torch.float16: 1e-2, torch.bfloat16: 2e-2, torch.float32: 1e-4, torch.float64: 1e-8}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int when it is an int (not a bool) of at least ``minimum``; else ``ValueError``."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_num_classes(num_classes, name: str = "num_classes") -> int:
    """An int number of classes in 2..255 (255 is the ignore label, and labels are stored as uint8)."""
    if not _is_int(num_classes) or not 2 <= num_classes <= IGNORE_INDEX:
        raise ValueError(f"{name} must be an int in 2..{IGNORE_INDEX}, got {num_classes!r}")
    return int(num_classes)


def check_ignore_index(ignore_index, num_classes: int | None = None) -> int:
    """An int label value to leave out, outside ``[0, num_classes)`` (it must not hide a real class)."""
    if not _is_int(ignore_index):
        raise ValueError(f"ignore_index must be an int (255 in this library), got {ignore_index!r}")
    if num_classes is not None and 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index={ignore_index} is a class id in [0, {num_classes}); it would drop that class "
                         f"from every metric. Map the void label to {IGNORE_INDEX} instead")
    return int(ignore_index)


def _tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor, got {type(x).__name__}")
    return x


def _integer_dtype(x: torch.Tensor, name: str) -> None:
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor (class ids), got dtype {x.dtype}; float labels are not "
                         f"truncated")


def check_labels(labels, num_classes: int | None, ignore_index: int = IGNORE_INDEX, shape: Sequence[int] | None = None,
                 name: str = "labels") -> torch.Tensor:
    """Integer labels with values in ``[0, num_classes)`` or ``ignore_index`` (and of ``shape`` when given)."""
    labels = _tensor(labels, name)
    if shape is not None and tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(labels.shape)}")
    _integer_dtype(labels, name)
    if num_classes is not None and labels.numel():
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
        if bad.any():
            values = torch.unique(labels[bad])[:5].tolist()
            raise ValueError(f"{name} must lie in [0, {num_classes}) or equal ignore_index={ignore_index}; "
                             f"found {values}")
    return labels


def check_class_ids(preds, num_classes: int, shape: Sequence[int] | None = None, name: str = "preds") -> torch.Tensor:
    """Predicted class ids: an integer tensor with values in ``[0, num_classes)`` (no ignore value allowed)."""
    preds = _tensor(preds, name)
    if shape is not None and tuple(preds.shape) != tuple(shape):
        raise ValueError(f"{name} (class ids) must have shape {tuple(shape)}, got {tuple(preds.shape)}")
    _integer_dtype(preds, name)
    if preds.numel() and ((preds < 0) | (preds >= num_classes)).any():
        raise ValueError(f"{name} (class ids) must lie in [0, {num_classes})")
    return preds


def check_mask(mask, shape: Sequence[int]) -> None:
    """``mask`` is None or a bool tensor of ``shape``."""
    shape = tuple(shape)
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != shape or mask.dtype != torch.bool:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor of shape {shape}, got {got}")


def check_logits_labels(logits, labels, num_classes: int | None = None, ignore_index: int = IGNORE_INDEX,
                        mask: torch.Tensor | None = None, inputs: str = "logits", finite: bool = True,
                        name_logits: str = "logits", name_labels: str = "labels", label_values: bool = True) -> None:
    """Validate dense scores and their labels.

    Parameters
    ----------
    logits : float tensor (N, C, H, W): logits, or probabilities when ``inputs="probs"``.
    labels : integer tensor (N, H, W) with values in [0, C) or ``ignore_index``.
    num_classes : expected C; default ``logits.shape[1]``.
    ignore_index : label value of pixels to leave out.
    mask : optional bool tensor (N, H, W).
    inputs : ``"logits"`` or ``"probs"``; probabilities must lie in [0, 1] and sum to 1 over dim 1.
    finite : reject NaN and infinity.
    name_logits, name_labels : argument names used in the messages.
    label_values : check the label values (range). ``finite=False, label_values=False`` leaves only shapes and
        dtypes, for a caller that screens the values in its own pass and then calls :func:`check_screened`.

    Raises
    ------
    ValueError naming the argument and what was expected.
    """
    logits, labels = _tensor(logits, name_logits), _tensor(labels, name_labels)
    if logits.ndim != 4:
        raise ValueError(f"{name_logits} must have shape (N, C, H, W), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name_logits} must be a floating tensor (logits or probabilities), got dtype {logits.dtype}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"{name_logits} must have num_classes={num_classes} channels in dim 1, "
                         f"got shape {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(f"{name_labels} must have shape {expected} ({name_logits} {tuple(logits.shape)} without the "
                         f"class dim), got {tuple(labels.shape)}")
    check_labels(labels, logits.shape[1] if label_values else None, ignore_index, name=name_labels)
    check_mask(mask, expected)
    if finite:
        check_scores(logits, inputs, name_logits)


def check_scores(scores: torch.Tensor, inputs: str = "logits", name: str = "scores") -> None:
    """Finite scores; for ``inputs="probs"`` also values in [0, 1] summing to 1 over dim 1. Empty tensors pass."""
    if inputs not in ("logits", "probs"):
        raise ValueError(f"inputs must be 'logits' or 'probs', got {inputs!r}")
    if not scores.numel():
        return
    # One pass and no temporary: NaN propagates through min and max, so both are finite exactly when every score
    # is (``isfinite(x).all()`` costs four passes and a bool copy of the scores).
    lo, hi = (v.item() for v in scores.aminmax())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contain NaN or infinite values; expected finite logits or probabilities")
    if inputs == "probs":
        atol = PROB_SUM_ATOL.get(scores.dtype, 1e-4)
        if lo < 0 or hi > 1 + atol:
            raise ValueError(f"{name} were declared probabilities (inputs='probs') but lie in [{lo:g}, {hi:g}], "
                             "expected [0, 1]")
        err = (scores.sum(1, dtype=torch.float64) - 1).abs().max().item()  # no float64 copy of the scores
        if err > atol:
            raise ValueError(f"{name} were declared probabilities (inputs='probs') but their sum over dim 1 is off "
                             f"by up to {err:.3g}; expected it to be 1 (pass logits with inputs='logits')")


def check_screened(scores: torch.Tensor, labels: torch.Tensor, n_nonfinite: int, n_bad_labels: int,
                   num_classes: int, ignore_index: int = IGNORE_INDEX, inputs: str = "logits",
                   name_scores: str = "scores", name_labels: str = "labels") -> None:
    """The value checks of :func:`check_logits_labels`, from counts a caller's own pass over the data made.

    ``n_nonfinite`` counts the pixels with a NaN or infinite score and ``n_bad_labels`` the labels neither in
    ``[0, num_classes)`` nor ``ignore_index``, by the rules of :func:`check_scores` and :func:`check_labels` (masked
    pixels included). When both are zero the inputs pass and nothing is read again, which is what makes validating
    a batch cheap; otherwise those checks run on the tensors and raise their usual ``ValueError``.
    """
    if n_bad_labels:
        check_labels(labels, num_classes, ignore_index, name=name_labels)
    if n_nonfinite:
        check_scores(scores, inputs, name_scores)
    if n_bad_labels or n_nonfinite:  # the screen and the checks disagree: a defect of the screen, not of the data
        raise RuntimeError(f"the screen counted {n_nonfinite} non-finite pixels and {n_bad_labels} bad labels, "
                           "but the full checks passed")


def check_images(images, name: str = "images", ndim: int = 4) -> torch.Tensor:
    """Float RGB images (N, 3, H, W) (or (3, H, W) with ``ndim=3``), finite, with values in [0, 1]."""
    images = _tensor(images, name)
    layout = "(N, 3, H, W)" if ndim == 4 else "(3, H, W)"
    if images.ndim != ndim or images.shape[-3] != 3:
        raise ValueError(f"{name} must be a tensor {layout}, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a float tensor with values in [0, 1], got dtype {images.dtype}")
    if images.numel():
        lo, hi = images.aminmax()
        lo, hi = lo.item(), hi.item()  # NaN propagates through aminmax, so one read covers finiteness too
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name} must be finite (no NaN or infinity)")
        if lo < 0 or hi > 1:
            raise ValueError(f"{name} must have values in [0, 1] (models normalise internally; divide 8-bit images "
                             f"by 255), got range [{lo:.3g}, {hi:.3g}]")
    return images


def check_scales(scales, name: str = "scales") -> list[float]:
    """A non-empty sequence of finite positive numbers (not a bare number or a string), as floats."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
        raise ValueError(f"{name} must be a non-empty sequence of positive numbers such as (1.0,), got {scales!r}")
    out = []
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not (math.isfinite(s) and s > 0):
            raise ValueError(f"{name} must be a non-empty sequence of finite positive numbers, got {list(scales)!r}")
        out.append(float(s))
    if not out:
        raise ValueError(f"{name} must be a non-empty sequence of finite positive numbers, got {list(scales)!r}")
    return out
