"""The base every calibrator shares: ``fit`` on a calibration split, then ``cal(logits[, images])``.

A calibrator is an ``nn.Module`` (so it moves between devices and saves with ``state_dict``) that follows
scikit-learn's estimator rules: options go to ``__init__`` and are stored as given; everything learned ends with ``_``
and is set by :meth:`Calibrator.fit`, which returns ``self``; an unfitted calibrator refuses to run with one message.

Most calibrators are *pixel-wise*: they map each pixel's C logits on their own, so they fit on a uniform sample of
valid pixels (:func:`~segcal_lib.calibrators.sampling.sample_pixels`) and implement two methods:

- ``_fit_pixels(logits (P, C) float32, labels (P,) int64)`` sets the learned attributes;
- ``_calibrate(logits (N, C, H, W), images or None)`` returns calibrated logits of the same shape.

Calibrators that need whole maps or images (local temperature scaling) override ``_fit_batches`` instead.
"""

from __future__ import annotations

import torch
from torch import nn

from segcal_lib.calibrators.sampling import as_batches, iter_checked, sample_pixels
from segcal_lib.checks import _tensor, check_images, check_scores

__all__ = ["Calibrator", "NotFittedError"]

IGNORE_INDEX = 255
DEFAULT_MAX_PIXELS = 1_000_000


class NotFittedError(RuntimeError):
    """Raised when an unfitted calibrator is applied."""


class Calibrator(nn.Module):
    """Base class. Subclasses set ``needs_images`` / ``preserves_argmax`` and implement ``_fit_pixels`` and
    ``_calibrate`` (or ``_fit_batches`` for calibrators that are not pixel-wise).

    Parameters
    ----------
    ignore_index : int, default 255; label of pixels left out of fitting.
    max_pixels : int, default 1_000_000; pixel-wise calibrators fit on a uniform sample of at most this many valid
        pixels, drawn while streaming over the batches.
    seed : int, default 0; seeds the pixel sample and any random initialisation, so a fit is deterministic.
    progress : bool, default True; show a progress bar while reading the calibration split.

    Attributes
    ----------
    num_classes_ : int, the class count seen by ``fit`` (applying to another count raises ``ValueError``).
    """

    needs_images: bool = False
    preserves_argmax: bool = True
    registry_name: str = ""

    def __init__(self, ignore_index: int = IGNORE_INDEX, max_pixels: int = DEFAULT_MAX_PIXELS, seed: int = 0,
                 progress: bool = True):
        super().__init__()
        if not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
        self.ignore_index, self.max_pixels, self.seed, self.progress = ignore_index, max_pixels, seed, progress
        self.register_buffer("_num_classes", torch.tensor(-1, dtype=torch.long))

    # ------------------------------------------------------------------------------------------------ fitting
    def fit(self, source, labels: torch.Tensor | None = None, images: torch.Tensor | None = None) -> Calibrator:
        """Fit on a calibration split.

        Parameters
        ----------
        source : logits tensor (N, C, H, W) (with ``labels`` (N, H, W) and optional ``images`` (N, 3, H, W)), or a
            :class:`~segcal_lib.logit_store.LogitStore`, or an iterable of ``(logits, labels[, images])`` batches.

        Returns
        -------
        self, fitted.
        """
        batches, total = as_batches(source, labels, images)
        checked = iter_checked(batches, self.ignore_index, total, self.progress, desc=f"fit {self.registry_name}")
        with torch.no_grad():
            num_classes = self._fit_batches(checked)
        self._num_classes.fill_(int(num_classes))
        return self

    def _fit_batches(self, batches) -> int:
        """Fit from checked batches; return the class count. Default: sample pixels, then ``_fit_pixels``."""
        x, y = sample_pixels(batches, self.max_pixels, self.seed, self.ignore_index)
        with torch.enable_grad():
            self._fit_pixels(x, y)
        return x.shape[1]

    def _fit_pixels(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _fit_pixels or _fit_batches")

    # ------------------------------------------------------------------------------------------------ applying
    @property
    def num_classes_(self) -> int:
        self.check_fitted()
        return int(self._num_classes)

    @property
    def is_fitted(self) -> bool:
        return int(self._num_classes) > 0

    def check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call .fit(logits, labels) or "
                                 f".fit(store) on a calibration split first")

    def forward(self, logits: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated logits (N, C, H, W), same shape and float dtype as ``logits``.

        ``images`` (N, 3, H, W) are used by calibrators with ``needs_images`` and ignored by the rest.
        """
        self.check_fitted()
        check_scores(_tensor(logits, "logits"), name="logits")
        if logits.ndim != 4 or not logits.is_floating_point():
            raise ValueError(f"logits must be a float tensor (N, C, H, W), got {tuple(logits.shape)} {logits.dtype}")
        if logits.shape[1] != self.num_classes_:
            raise ValueError(f"logits have {logits.shape[1]} classes but this {type(self).__name__} was fitted on "
                             f"{self.num_classes_}")
        if self.needs_images:
            if images is None:
                raise ValueError(f"{type(self).__name__} needs images (N, 3, H, W) beside the logits")
            check_images(images)
        return self._calibrate(logits, images)

    def _calibrate(self, logits: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def predict_proba(self, logits: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated probabilities (N, C, H, W)."""
        return self(logits, images).float().softmax(1)

    # ------------------------------------------------------------------------------------------------ saving
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Learned tensors have shapes known only after fit (e.g. C per-class scales): take the saved shapes, so that
        # a freshly made calibrator loads a fitted one's state_dict.
        for name, tensor in [*self._parameters.items(), *self._buffers.items()]:
            key = prefix + name
            if tensor is not None and key in state_dict and state_dict[key].shape != tensor.shape:
                tensor.data = torch.empty_like(state_dict[key], device=tensor.device, dtype=tensor.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"fitted={self.is_fitted}" + (f", num_classes={int(self._num_classes)}" if self.is_fitted else "")
