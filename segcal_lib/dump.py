"""Bring your own model: write the logits of any PyTorch segmentation model on a data set into a LogitStore.

The model is anything that maps a batch of images to logits: an ``nn.Module`` or a plain function. Its output may
be at any stride (SegFormer predicts at 1/4 of the input; DeepLab at 1/8): it is upsampled bilinearly to the image
(= label) size, as :mod:`segcal_lib.inference` does for every model, and sliding-window or multi-scale inference
apply unchanged. Outputs given as a dict (``{"out": ...}`` from torchvision) or an object with ``.logits`` (Hugging
Face) are unwrapped.

>>> from segcal_lib.dump import dump_logits
>>> store = dump_logits(my_model, FolderDataset("my_data", "val"), "stores/val", normalize="imagenet")  # doctest: +SKIP

Logits computed elsewhere (another framework, another machine) are written with
:meth:`segcal_lib.logit_store.LogitStore.from_arrays` or :meth:`~segcal_lib.logit_store.LogitStore.write`; the format
is documented in :mod:`segcal_lib.logit_store`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from segcal_lib.inference import predict_dataset
from segcal_lib.logit_store import LogitStore

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SegmentationCallable", "as_segmentation_model", "dump_logits"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _unwrap(out) -> torch.Tensor:
    """The logits tensor of a model's output: a tensor, ``out["out"]``/``out["logits"]`` or ``out.logits``."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        for key in ("out", "logits"):
            if key in out:
                return out[key]
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ValueError(f"model output must be a logits tensor (N, C, h, w), a dict with 'out' or 'logits', or an object "
                     f"with .logits; got {type(out).__name__}")


class SegmentationCallable(nn.Module):
    """Wraps a model or function so that it takes images in [0, 1] and returns a logits tensor.

    Parameters
    ----------
    fn : callable mapping images (N, 3, h, w) to logits (N, C, h', w') (any stride), or to a dict / object holding
        them (see the module docstring). An ``nn.Module`` is registered as a sub-module (so ``.to(device)``,
        ``.eval()`` reach it).
    normalize : ``None`` (the model takes images in [0, 1]), ``"imagenet"`` (subtract ImageNet's mean and divide by
        its std first, as most pretrained backbones expect) or a pair ``(mean, std)`` of 3-sequences.
    """

    def __init__(self, fn: Callable, normalize: str | tuple | None = None):
        super().__init__()
        if not callable(fn):
            raise ValueError(f"fn must be callable (images -> logits), got {type(fn).__name__}")
        if isinstance(fn, nn.Module):
            self.net = fn
        else:
            self.fn = fn
        if normalize is None:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        elif normalize == "imagenet":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif isinstance(normalize, (tuple, list)) and len(normalize) == 2 and all(len(v) == 3 for v in normalize):
            mean, std = normalize
        else:
            raise ValueError(f"normalize must be None, 'imagenet' or (mean, std) of 3 values each, got {normalize!r}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fn = self.net if hasattr(self, "net") else self.fn
        return _unwrap(fn((images - self.mean) / self.std))


def as_segmentation_model(fn: Callable, normalize: str | tuple | None = None) -> nn.Module:
    """``fn`` as an ``nn.Module`` taking images in [0, 1] (see :class:`SegmentationCallable`)."""
    return SegmentationCallable(fn, normalize)


def dump_logits(model: Callable, dataset: Dataset, path: str | os.PathLike, *, normalize: str | tuple | None = None,
                inference: Mapping | None = None, batch_size: int = 8, device: torch.device | str | None = None,
                progress: bool = True, meta: Mapping | None = None) -> LogitStore:
    """Run ``model`` on every item of ``dataset`` and write logits and labels to a new store at ``path``.

    Parameters
    ----------
    model : ``nn.Module`` or function: images (N, 3, h, w) -> logits at any stride (see the module docstring).
    dataset : items ``(image (3, H, W) float in [0, 1], label (H, W)[, name])``, all of one size (resize first, e.g.
        ``FolderDataset(..., resize="pad:512x512")``); ``class_names`` is recorded when the data set has it.
    path : the new store's folder; it must not exist. It is written to a temporary folder and renamed at the end, so
        an error leaves nothing behind.
    normalize : how the model wants its input (see :class:`SegmentationCallable`).
    inference : keyword arguments of :func:`~segcal_lib.inference.predict_logits` (``mode="slide"``, ``crop_size``,
        ``scales``, ``flip``, ...); default one whole-image pass.
    batch_size : images per forward pass.
    device : where to run; default the model's device.
    progress : tqdm bar.
    meta : extra metadata recorded in ``meta.json`` (e.g. ``{"model": "my-deeplab-v3"}``).

    Returns
    -------
    The new :class:`~segcal_lib.logit_store.LogitStore`.
    """
    path = Path(path)
    if path.exists():
        raise ValueError(f"path must not exist yet, got existing {str(path)!r}")
    net = SegmentationCallable(model, normalize)  # also unwraps dict / .logits outputs
    if device is not None:
        net = net.to(device)
    kwargs = dict(inference or {})
    if device is not None:
        kwargs["device"] = device
    batches = predict_dataset(net, dataset, batch_size=batch_size, progress=progress, **kwargs)
    record = {"settings": dict(inference or {}), "normalize": normalize if not isinstance(normalize, tuple) else
              [list(v) for v in normalize], "source": "segcal_lib.dump.dump_logits", **dict(meta or {})}
    return LogitStore.write(path, batches, len(dataset), class_names=getattr(dataset, "class_names", None),
                            meta=record)
