"""Ensembling (the paper's "Ens."): the mean of the softmax probabilities of several models.

An ensemble is not fitted on calibration data; it changes the model. To compare it with the calibrators behind the
same API, :class:`Ensemble` is a calibrator that *needs images*: called as ``ens(logits, images)``, it runs each
member on the images and returns ``log(mean of the probabilities)`` over the members and (by default) the model whose
``logits`` it was given. ``fit`` only records the class count and checks, on the first batch, that every member
predicts that many classes at the size of the logits.

Members are ``nn.Module`` segmentation models (run whole-image by :func:`~segcal_lib.inference.predict_logits`, in
eval mode, on the model's device) or any callable mapping images (N, 3, H, W) to logits (N, C, H, W), e.g. a
sliding-window :func:`~segcal_lib.inference.predict_logits` wrapped in a lambda. They are not part of
``state_dict``: a saved ensemble is re-made with the same members. Averaging probabilities can change the arg-max
(mIoU is reported).

>>> ens = make_calibrator("ensemble", members=[model_b, model_c]).fit(val_batches)   # doctest: +SKIP
>>> probs = ens(test_logits, test_images).softmax(1)                                  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from segcal_lib.calibrators.base import Calibrator
from segcal_lib.calibrators.registry import register_calibrator
from segcal_lib.inference import predict_logits

__all__ = ["Ensemble", "average_probabilities"]


def average_probabilities(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log(mean_m softmax(logits_m))`` for a list of logits of one shape, via ``logsumexp`` (no underflow)."""
    if not logits:
        raise ValueError("logits must hold at least one tensor")
    shapes = {tuple(z.shape) for z in logits}
    if len(shapes) != 1:
        raise ValueError(f"every member's logits must have the same shape, got {sorted(shapes)}")
    stacked = torch.stack([z.float().log_softmax(1) for z in logits])
    return stacked.logsumexp(0) - math.log(len(logits))


@register_calibrator("ensemble", "ens")
class Ensemble(Calibrator):
    """Average the probabilities of several models' predictions.

    Parameters
    ----------
    members : sequence of ``nn.Module`` or callables ``images (N, 3, H, W) -> logits (N, C, H, W)``, default ().
    include_input : bool, default True; count the model whose logits are passed to ``ens(logits, images)`` as a
        member (False: the result depends on the members only).
    (and those of :class:`~segcal_lib.calibrators.base.Calibrator`)
    """

    needs_images = True
    preserves_argmax = False

    def __init__(self, members: Sequence[nn.Module | Callable] = (), include_input: bool = True, **kw):
        super().__init__(**kw)
        members = list(members)
        if not all(callable(m) for m in members):
            raise ValueError("members must be nn.Modules or callables mapping images to logits")
        if not members and not include_input:
            raise ValueError("an ensemble needs members, or include_input=True")
        self.include_input = include_input
        self.needs_images = bool(members)
        self._members = members  # a plain list: not submodules, so not in state_dict

    @property
    def members(self) -> list:
        return list(self._members)

    def member_logits(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each member's logits (N, C, H, W) on ``images`` (N, 3, H, W)."""
        out = []
        with torch.no_grad():
            for m in self._members:
                # Modules run as the stored logits were computed (whole image, on the model's device).
                out.append(predict_logits(m, images, out_device=images.device) if isinstance(m, nn.Module)
                           else m(images))
        return out

    def _fit_batches(self, batches) -> int:
        for logits, _, images in batches:  # the first batch is enough: nothing is learned
            if self._members:
                if images is None:
                    raise ValueError("Ensemble needs images (N, 3, H, W) in the batches to check its members")
                for z in self.member_logits(images[:1]):
                    if tuple(z.shape[1:]) != tuple(logits.shape[1:]):
                        raise ValueError(f"members must predict logits of shape {tuple(logits.shape[1:])} per "
                                         f"image, got {tuple(z.shape[1:])}")
            return logits.shape[1]
        raise ValueError("no batch to fit on")

    def _calibrate(self, logits, images):
        parts = ([logits] if self.include_input else []) + self.member_logits(images)
        return average_probabilities([p.to(logits.device) for p in parts]).to(logits.dtype)
