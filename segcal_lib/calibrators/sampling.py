"""Turning what a user passes to ``fit`` into batches, and batches into a uniform sample of valid pixels.

A calibration split can be far larger than memory (10^9 pixels), so pixel-wise calibrators fit on a uniform random
sample of at most ``max_pixels`` valid pixels, drawn in one streaming pass: every valid pixel gets a random key and
the ``max_pixels`` smallest keys are kept (a bottom-k sample), so memory stays at one batch plus the sample, and the
same seed over the same batches gives the same sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from tqdm.auto import tqdm

from segcal_lib.checks import check_logits_labels

__all__ = ["Batch", "as_batches", "sample_pixels"]

Batch = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]
_TENSOR_BATCH = 8  # images per slice when fitting from tensors, to bound the temporaries


def as_batches(source, labels: torch.Tensor | None = None, images: torch.Tensor | None = None,
               batch_size: int = _TENSOR_BATCH) -> tuple[Iterable[Batch], int | None]:
    """Normalise ``fit``'s arguments to an iterable of ``(logits, labels, images_or_None)`` and its length.

    Accepts tensors (``source`` logits (N, C, H, W) with ``labels`` (N, H, W) and optional ``images``), an object with
    ``iter_batches`` (e.g. a :class:`~segcal_lib.logit_store.LogitStore`), or any iterable of ``(logits, labels)`` /
    ``(logits, labels, images)`` tuples.
    """
    if isinstance(source, torch.Tensor):
        if labels is None:
            raise ValueError("labels must be given with logits: fit(logits, labels[, images])")
        n = source.shape[0]
        return ((source[s:s + batch_size], labels[s:s + batch_size],
                 None if images is None else images[s:s + batch_size]) for s in range(0, n, batch_size)), \
            -(-n // batch_size)
    if labels is not None or images is not None:
        raise ValueError("labels and images are given inside the batches when fit() receives an iterable")
    if hasattr(source, "iter_batches"):
        n = len(source)
        return ((lg, lb, None) for lg, lb in source.iter_batches(batch_size)), -(-n // batch_size)
    if isinstance(source, Iterable):
        return (_unpack(b) for b in source), (len(source) if hasattr(source, "__len__") else None)
    raise ValueError(f"fit() takes tensors, a LogitStore or an iterable of (logits, labels[, images]) batches, "
                     f"got {type(source).__name__}")


def _unpack(batch) -> Batch:
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError(f"each batch must be (logits, labels) or (logits, labels, images), got {type(batch).__name__}"
                         f" of length {len(batch) if hasattr(batch, '__len__') else '?'}")
    return batch[0], batch[1], (batch[2] if len(batch) == 3 else None)


def _check_batch(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None, ignore_index: int) -> None:
    # The library's one input check; ``num_classes`` pins every batch to the first batch's class count.
    check_logits_labels(logits, labels, num_classes, ignore_index)


def iter_checked(batches: Iterable[Batch], ignore_index: int, total: int | None = None,
                 progress: bool = True, desc: str = "fit") -> Iterator[Batch]:
    """Yield the batches after checking each (shapes, label range, one class count), with a progress bar."""
    num_classes = None
    for logits, labels, images in tqdm(batches, total=total, disable=not progress, desc=desc, leave=False):
        _check_batch(logits, labels, num_classes, ignore_index)
        num_classes = logits.shape[1]
        yield logits, labels, images


def sample_pixels(batches: Iterable[Batch], max_pixels: int, seed: int = 0, ignore_index: int = 255
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniform sample of at most ``max_pixels`` valid pixels, streamed.

    Returns
    -------
    logits : float32 (P, C), labels : int64 (P,), P = min(max_pixels, number of valid pixels), in a deterministic
    order (by random key). Raises ``ValueError`` when no valid pixel is seen.
    """
    if not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    gen = torch.Generator().manual_seed(seed)
    keys = torch.empty(0)
    kept_x, kept_y = None, torch.empty(0, dtype=torch.long)
    for logits, labels, _ in batches:
        c = logits.shape[1]
        x = logits.detach().float().permute(0, 2, 3, 1).reshape(-1, c).cpu()
        y = labels.reshape(-1).long().cpu()
        valid = y != ignore_index
        x, y = x[valid], y[valid]
        k = torch.rand(y.numel(), generator=gen)
        keys = torch.cat([keys, k])
        kept_x = x if kept_x is None else torch.cat([kept_x, x])
        kept_y = torch.cat([kept_y, y])
        if keys.numel() > max_pixels:
            keys, order = keys.topk(max_pixels, largest=False, sorted=False)
            kept_x, kept_y = kept_x[order], kept_y[order]
    if kept_x is None or kept_y.numel() == 0:
        raise ValueError("no valid (non-ignored) pixel to fit on")
    order = keys.argsort()
    return kept_x[order], kept_y[order]
