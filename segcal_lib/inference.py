"""Whole-image and sliding-window inference, with multi-scale and flip testing.

How views are combined
----------------------
Each view (a scale, flipped or not) is run at its own size, its logits are flipped back and resized bilinearly to the
input size (H, W), and then:

- ``average="logits"`` (default): the result is the mean of the views' logits;
- ``average="probs"``: the result is ``log(mean of the views' softmax probabilities)`` -- MMSegmentation's test-time
  augmentation averages softmax scores; returning their log keeps the output a valid logit tensor whose softmax is that
  mean (probabilities below the float32 ``tiny`` are clamped to it, i.e. logits of about -87).

With one view (``scales=(1.0,)``, ``flip=False``) both give the model's logits unchanged. The choice matters for
calibration: averaging probabilities is a small ensemble and usually lowers confidence; averaging logits keeps it
sharper.

Sliding windows
---------------
Windows of ``crop_size`` step by ``stride``; the last window in each direction is aligned to the image border, so every
pixel is covered when ``stride <= crop_size``. An image smaller than the crop is padded at the bottom/right with
``pad_value`` and the padding is cropped away afterwards. Overlapping logits are averaged with a count map. Windows are
run in chunks of ``batch_size``, so memory is bounded by one chunk plus one accumulator per image chunk.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from segcal_lib.checks import check_images, check_labels, check_positive_int, check_scales

__all__ = ["predict_dataset", "predict_logits", "window_settings", "window_starts"]


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, Sequence) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ValueError(f"{name} must be a positive int or a pair (height, width) of positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def window_settings(mode: str, crop_size, stride) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """Validated ``(crop, stride)`` pairs (height, width) of a sliding-window mode, with the default stride (two
    thirds of the crop) filled in; ``(None, None)`` for ``mode="whole"``, which takes neither."""
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "whole":
        if crop_size is not None or stride is not None:
            raise ValueError("crop_size and stride apply to mode='slide'; mode='whole' runs on whole images")
        return None, None
    if crop_size is None:
        raise ValueError("crop_size is required when mode='slide'")
    crop = _pair(crop_size, "crop_size")
    strides = _pair(stride, "stride") if stride is not None else tuple(max(1, 2 * c // 3) for c in crop)
    if strides[0] > crop[0] or strides[1] > crop[1]:
        raise ValueError(f"stride {strides} must not exceed crop_size {crop}: windows would leave gaps")
    return crop, strides


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of size ``crop`` stepping by ``stride`` over ``length``; the last ends at ``length``.

    ``length`` must be at least ``crop`` (pad first) and ``1 <= stride <= crop``, so that consecutive windows overlap
    or touch and every pixel of ``[0, length)`` is covered at least once. The starts are strictly increasing, the
    first is 0 and the last is ``length - crop``. ``window_starts(10, 4, 3) == [0, 3, 6]``.
    """
    for name, value in (("length", length), ("crop", crop), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if stride > crop:
        raise ValueError(f"stride ({stride}) must not exceed crop ({crop}): windows would leave gaps")
    if length < crop:
        raise ValueError(f"length ({length}) must be at least crop ({crop}); pad the image first")
    n = max(math.ceil((length - crop) / stride), 0) + 1
    starts = [min(i * stride, length - crop) for i in range(n)]
    return sorted(set(starts))


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the model; resize its output to the input size when it predicts at a lower resolution."""
    y = model(x)
    if y.dim() != 4 or y.shape[0] != x.shape[0]:
        raise ValueError(f"model must return logits (N, C, h, w) for input {tuple(x.shape)}, got {tuple(y.shape)}")
    if y.shape[-2:] != x.shape[-2:]:
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return y.float()


def _whole(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([_forward(model, x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def _slide(model: nn.Module, x: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int], batch_size: int,
           pad_value: float) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = crop
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=pad_value)
    hp, wp = x.shape[-2:]
    windows = [(i, y0, x0) for i in range(b) for y0 in window_starts(hp, ch, stride[0])
               for x0 in window_starts(wp, cw, stride[1])]
    total = count = None
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        out = _forward(model, torch.stack([x[i, :, y0:y0 + ch, x0:x0 + cw] for i, y0, x0 in chunk]))
        if total is None:
            total = x.new_zeros((b, out.shape[1], hp, wp), dtype=torch.float32)
            count = x.new_zeros((b, 1, hp, wp), dtype=torch.float32)
        for o, (i, y0, x0) in zip(out, chunk, strict=True):
            total[i, :, y0:y0 + ch, x0:x0 + cw] += o
            count[i, :, y0:y0 + ch, x0:x0 + cw] += 1
    return (total / count)[:, :, :h, :w]


def predict_logits(model: nn.Module, images: torch.Tensor, mode: str = "whole", crop_size: int | tuple[int, int] |
                   None = None, stride: int | tuple[int, int] | None = None, scales: Sequence[float] = (1.0,),
                   flip: bool = False, batch_size: int = 8, average: str = "logits", pad_value: float = 0.0,
                   device: torch.device | str | None = None, out_device: torch.device | str = "cpu") -> torch.Tensor:
    """Full-resolution logits of ``model`` on ``images``: whole or sliding-window, optionally multi-scale + flip.

    Parameters
    ----------
    model : maps images (B, 3, h, w) in [0, 1] to logits (B, C, h', w'); outputs at a lower resolution are resized
        bilinearly. It is put in eval mode for the call (and restored afterwards); it is not moved.
    images : float tensor (N, 3, H, W) with values in [0, 1].
    mode : ``"whole"`` (one forward pass per image) or ``"slide"`` (windows of ``crop_size``).
    crop_size : window size, an int or (height, width); required for ``"slide"``.
    stride : window step, an int or (height, width), at most ``crop_size``; default two thirds of ``crop_size``.
    scales : rescaling factors of the input; each view is resized back to (H, W).
    flip : add horizontally flipped views.
    batch_size : forward passes are run on at most this many images (whole) or windows (slide) at once.
    average : ``"logits"`` or ``"probs"``: how views are combined (see the module docstring).
    pad_value : value of the padding added to images smaller than the window (in [0, 1] image space).
    device : where to compute; default the model's device. Images are moved there chunk by chunk.
    out_device : where the result is gathered (default CPU, so that GPU memory stays bounded).

    Returns
    -------
    logits : float32 tensor (N, C, H, W) on ``out_device``.
    """
    check_images(images)
    if average not in ("logits", "probs"):
        raise ValueError(f"average must be 'logits' or 'probs', got {average!r}")
    check_positive_int(batch_size, "batch_size")
    scales = tuple(check_scales(scales))
    crop, strides = window_settings(mode, crop_size, stride)

    device = torch.device(device) if device is not None else _model_device(model)
    n, _, h, w = images.shape
    views = [(s, f) for s in scales for f in ((False, True) if flip else (False,))]
    if mode == "whole":
        chunk = batch_size
    else:  # stack windows of several small images into one forward pass
        hp, wp = max(h, crop[0]), max(w, crop[1])
        n_win = len(window_starts(hp, crop[0], strides[0])) * len(window_starts(wp, crop[1], strides[1]))
        chunk = max(1, batch_size // n_win)

    was_training = model.training
    model.eval()
    out = None
    try:
        # no_grad rather than inference_mode: inference tensors cannot be saved for backward, and calibrators fit
        # parameters on these logits.
        with torch.no_grad():
            for start in range(0, n, chunk):
                x = images[start:start + chunk].to(device=device, dtype=torch.float32)
                acc = None
                for scale, flipped in views:
                    xv = x
                    if scale != 1.0:
                        size = (max(1, round(h * scale)), max(1, round(w * scale)))
                        xv = F.interpolate(xv, size=size, mode="bilinear", align_corners=False)
                    if flipped:
                        xv = xv.flip(-1)
                    y = _whole(model, xv, batch_size) if mode == "whole" else _slide(
                        model, xv, crop, strides, batch_size, pad_value)
                    if flipped:
                        y = y.flip(-1)
                    if y.shape[-2:] != (h, w):
                        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
                    if average == "probs" and len(views) > 1:
                        y = y.softmax(dim=1)
                    acc = y if acc is None else acc.add_(y)
                if len(views) > 1:
                    acc = acc / len(views)
                    if average == "probs":
                        acc = acc.clamp_min(torch.finfo(torch.float32).tiny).log()
                if out is None:
                    out = torch.empty((n, acc.shape[1], h, w), dtype=torch.float32, device=out_device)
                out[start:start + acc.shape[0]] = acc.to(out_device)
    finally:
        model.train(was_training)
    if out is None:  # no images
        out = torch.empty((0, 0, h, w), dtype=torch.float32, device=out_device)
    return out


def predict_dataset(model: nn.Module, dataset: Dataset, batch_size: int = 8, progress: bool = True,
                    **predict_kwargs) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Iterate ``dataset`` in order and yield ``(logits, labels, names)`` batches.

    Parameters
    ----------
    model : as in :func:`predict_logits`.
    dataset : items start with ``image`` (3, H, W) float in [0, 1] and ``label`` (H, W); a third item, if present, is
        the image's name (a :class:`~segcal_lib.data.base.Sample` has all three).
    batch_size : images per yielded batch (also the forward batch size unless ``predict_kwargs`` sets it). Consecutive
        images of different sizes go to different batches.
    progress : tqdm bar over images.
    predict_kwargs : passed to :func:`predict_logits` (``mode``, ``crop_size``, ``stride``, ``scales``, ``flip``, ...).

    Yields
    ------
    logits : float32 (B, C, H, W) on ``out_device`` (CPU by default).
    labels : int64 (B, H, W) on the CPU.
    names : list of B str.
    """
    predict_kwargs.setdefault("batch_size", batch_size)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")

    def flush(items):
        images = torch.stack([it[0] for it in items])
        labels = torch.stack([it[1] for it in items]).long()
        return predict_logits(model, images, **predict_kwargs), labels, [it[2] for it in items]

    pending = []
    with tqdm(total=len(dataset), desc="inference", disable=not progress, unit="img") as bar:
        for i in range(len(dataset)):
            item = dataset[i]
            image, label = item[0], item[1]
            name = str(item[2]) if len(item) > 2 else str(i)
            if image.dim() != 3 or label.shape != image.shape[-2:]:
                raise ValueError(f"dataset item {i}: image must be (3, H, W) and label (H, W), got "
                                 f"{tuple(image.shape)} and {tuple(label.shape)}")
            check_labels(label, None, name=f"dataset item {i} ({name}): label")
            if pending and (image.shape != pending[0][0].shape or len(pending) == batch_size):
                yield flush(pending)
                bar.update(len(pending))
                pending = []
            pending.append((image, label, name))
        if pending:
            yield flush(pending)
            bar.update(len(pending))
