"""The fused per-pixel pass behind :class:`~segcal_lib.metrics.CalibrationMeter` (``backend="fused"``).

On CPU tensors the meter's default backend is :mod:`segcal_lib.metrics_native` (the same terms in one C pass per
pixel, several times faster on two cores); this PyTorch pass runs on every other device, and on the CPU where no C
compiler is found. Both are tested against the plain ``backend="reference"`` computation.

One pass over the scores, tile by tile, computes every per-pixel term the meter needs (max, log-sum-exp, first
arg-max, the label's log-probability, the Brier score, the bin index) and reduces it at once into the meter's float64
per-bin sums. No (N, C, H, W) temporary is made: the largest one is a tile of about ``_TILE_ELEMENTS`` scores, which
stays in the CPU's cache, so the pass reads the scores from memory once.

How it was chosen (two CPU cores, C=19 and C=150; ``python -m segcal_lib.bench`` prints the figures)
---------------------------------------------------------------------------------------------------
- ``torch.compile`` of the same terms (Inductor, C++ on CPU, dynamic shapes) took ~14 s to compile in a fresh process
  and ran no faster than this eager code, since Inductor's arg-max and scatter reductions are not vectorised on CPU.
- Eager PyTorch is fast when every operation is a vectorised reduction over contiguous memory that fits the cache.
  So: tiles of pixels; the first arg-max as ``C - amax((x == max) * [C, C-1, ..., 1])`` (``argmax`` itself is ~8x
  slower on CPU); ``sum p^2`` as one ``vecdot`` of ``exp(x - max)`` with itself; the Brier score in closed form
  ``sum_k p_k^2 - 2 p_y + 1``; ``bincount`` only over compact indices.
- Class-wise bins: since the C probabilities of a pixel sum to 1, at most B of them reach the first edge 1/B; the
  others all fall in bin 0. Only the probabilities >= 1/B are scattered into bins; bin 0 of each class gets what is
  left of that class's total (count and sum), computed by one vectorised reduction. This cuts the scattered values
  from C per pixel to about one or two.

Precision: every per-bin sum, count and total is accumulated in float64, whatever the dtype of the per-pixel terms,
so nothing drifts with the number of pixels.
"""

from __future__ import annotations

import contextlib
import math

import torch

__all__ = ["PRECISIONS", "bin_index", "calibration_sums", "first_argmax"]

# dtype of the per-pixel terms for each documented precision of the meter.
PRECISIONS = {"exact": torch.float64, "fast": torch.float32}
# Scores per tile: 2^18 float32 = 1 MiB, inside a core's L2 cache (measured best among 2^16..2^20 on two cores).
# On accelerators there is no cache to fit and each tile costs kernel launches, so a whole chunk is one tile.
_TILE_ELEMENTS = {"cpu": 2**18}
_TILE_ELEMENTS_DEFAULT = 2**27
# Pixels whose per-pixel terms are held at once (~100 bytes each with the temporaries): bounds the extra memory to
# ~25 MiB whatever the batch size; large enough that the per-pixel operations cost little more than their work.
_BLOCK_PIXELS = 2**18


def _tile_pixels(device: torch.device, per_pixel: int) -> int:
    return max(256, _TILE_ELEMENTS.get(device.type, _TILE_ELEMENTS_DEFAULT) // max(1, per_pixel))


def _reverse_ranks(c: int, device) -> torch.Tensor:
    """[C, C-1, ..., 1] as a (C, 1) column of the narrowest integer type that holds C."""
    dtype = torch.uint8 if c < 256 else torch.int16 if c < 2**15 else torch.int32
    return torch.arange(c, 0, -1, dtype=dtype, device=device)[:, None]


def _first_argmax_tile(x: torch.Tensor, top: torch.Tensor, rev: torch.Tensor) -> torch.Tensor:
    """First arg-max over dim 1 of x (n, C, p), given its max ``top`` (n, 1, p): the lowest class equal to the max."""
    return x.shape[1] - ((x == top) * rev).amax(1).long()


def first_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(1)`` (ties go to the first class) for (N, C, ...) scores, tile by tile; int64 (N, ...)."""
    n, c = scores.shape[:2]
    x = scores.reshape(n, c, math.prod(scores.shape[2:]))  # not -1: a batch may hold no pixel at all
    rev = _reverse_ranks(c, x.device)
    step = _tile_pixels(x.device, n * c)
    out = torch.empty(n, x.shape[2], dtype=torch.long, device=x.device)
    for s in range(0, x.shape[2], step):
        t = x[:, :, s:s + step]
        out[:, s:s + step] = _first_argmax_tile(t, t.amax(1, keepdim=True), rev)
    return out.view(n, *scores.shape[2:])


def bin_index(conf: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin ``k`` with ``edges[k] <= conf < edges[k+1]`` (float64 ``edges = arange(B+1) / B``); the last bin holds 1.

    float32 or lower ``conf``: ``floor(float64(conf) * B)`` is exact, because the product of a 24-bit significand and
    an integer B < 2^29 is exact in float64, and no float64 number lies strictly between ``k/B`` and its float64
    rounding ``edges[k]``. float64 ``conf``: the product may round across an integer within an ulp of an edge, so two
    comparisons with ``edges`` settle it.
    """
    n_bins = edges.numel() - 1
    if conf.dtype != torch.float64:
        return (conf.double() * n_bins).long().clamp_(0, n_bins - 1)  # truncation is floor for conf >= 0
    k = (conf * n_bins).long().clamp_(0, n_bins - 1)
    k -= (conf < edges[k]).long()
    k += ((conf >= edges[k + 1]) & (k < n_bins - 1)).long()
    return k


def _first_edge(edges: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The smallest ``dtype`` number >= ``edges[1]``: ``v >= it`` exactly when ``bin_index(v) >= 1``."""
    e = edges[1].to(dtype)
    if e.double() < edges[1]:
        e = torch.nextafter(e, torch.tensor(float("inf"), dtype=dtype, device=e.device))
    return e


def _reduce_tiles(scores: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, inputs: str, dtype: torch.dtype,
                  first_edge: torch.Tensor | None):
    """The passes over the C scores of each pixel, tile by tile; everything per pixel is left to the caller.

    Returns (N, P) tensors ``top`` (max score), ``x_y`` (label's score), ``s`` (``sum_k e_k``), ``sq``
    (``sum_k e_k^2``), ``e_y`` (label's term), with ``e = exp(x - max)`` for logits and ``e = x`` for probabilities;
    and, when ``first_edge`` is given (class-wise bins), ``p_y`` (label's probability, exactly as binned below),
    ``totals`` (C,) float64 (sum of p_k over valid pixels) and ``above`` (class index, probability) of every
    probability >= ``first_edge`` at a valid pixel.
    """
    n, c, p = scores.shape
    dev, f64 = scores.device, torch.float64
    out = {k: torch.empty(n, p, dtype=dtype, device=dev) for k in ("top", "x_y", "s", "sq", "e_y")}
    if first_edge is not None:
        out["p_y"] = torch.empty(n, p, dtype=dtype, device=dev)
        totals, classes, values = torch.zeros(c, dtype=f64, device=dev), [], []
    step = _tile_pixels(dev, n * c)
    for s in range(0, p, step):
        cols = slice(s, s + step)
        x, yt = scores[:, :, cols].to(dtype), y[:, None, cols]
        top = x.amax(1, keepdim=True)
        out["top"][:, cols] = top.squeeze(1)
        out["x_y"][:, cols] = x.gather(1, yt).squeeze(1)
        e = x if inputs == "probs" else (x - top).exp_()  # exp(x - max): the arg-max class gets exactly 1
        out["s"][:, cols] = e.sum(1)
        out["sq"][:, cols] = torch.linalg.vecdot(e, e, dim=1)
        out["e_y"][:, cols] = e.gather(1, yt).squeeze(1)
        if first_edge is None:
            continue
        vt = valid[:, None, cols]
        if inputs == "probs":  # the caller's tensor: not to be written to
            prob = (e * vt).contiguous()
        else:  # 1 / s at valid pixels, 0 at ignored ones (in no bin above 0)
            prob = e.mul_(torch.where(vt, out["s"][:, None, cols].reciprocal(), 0)).contiguous()
        out["p_y"][:, cols] = prob.gather(1, yt).squeeze(1)
        # float32 partial sums within a tile (relative error ~1e-7 of a tile's total), float64 across tiles
        totals += prob.sum((0, 2)).to(f64)
        # Only probabilities >= 1/B leave bin 0, and a pixel has at most B of them: gather just those.
        i, k, j = torch.nonzero(prob >= first_edge, as_tuple=True)
        classes.append(k)
        values.append(prob.view(-1).index_select(0, (i * c + k) * prob.shape[2] + j))
    if first_edge is not None:
        out["totals"], out["above"] = totals, (torch.cat(classes), torch.cat(values))
    return out


def _hits(scores: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, t: dict, top_e) -> torch.Tensor:
    """Whether the first arg-max of each pixel is its label: (N, P) bool, False where not valid.

    Where the label's score equals the maximum it is the *first* arg-max unless an earlier class ties. A tie puts
    two copies of the maximum's term ``top_e`` into ``s``, and rounding never takes a sum of non-negative terms below
    one of its partial sums, so where ``s < 2 * top_e`` there is no tie. The few other pixels are settled from the
    scores.
    """
    hit = (t["x_y"] == t["top"]) & valid
    maybe_tie = hit & (t["s"] >= 2 * top_e)
    if maybe_tie.any():
        i, j = maybe_tie.nonzero(as_tuple=True)
        cols = scores[i, :, j]  # (m, C)
        classes = torch.arange(scores.shape[1], device=scores.device)
        earlier = ((cols == cols.amax(1, keepdim=True)) & (classes < y[i, j, None])).any(1)
        hit[i[earlier], j[earlier]] = False
    return hit


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device):
    """Run the tile loop on one intra-op thread on the CPU.

    Each tile is a few hundred microseconds of work split into a dozen operations; with two threads every operation
    is a parallel region with its barrier, and on a machine whose cores are busy with other processes a thread
    waiting at a barrier waits for a time slice. Measured on two shared cores (load average ~13, C=19, 2x256x512):
    one thread 0.2 s a batch, two threads 8 s.
    """
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@torch.no_grad()
def calibration_sums(scores: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, inputs: str, dtype: torch.dtype,
                     edges: torch.Tensor, classwise: bool):
    """The float64 sums one chunk adds to a :class:`~segcal_lib.metrics.CalibrationMeter`.

    Parameters
    ----------
    scores : (N, C, P) float tensor, logits or probabilities (``inputs``); any float dtype, any strides.
    y : (N, P) int64 labels, ignored pixels replaced by any valid class.
    valid : (N, P) bool, the pixels that count.
    dtype : torch.float32 or torch.float64, the dtype of the per-pixel terms (see ``PRECISIONS``).
    edges : (B+1,) float64 bin edges ``arange(B+1) / B``, on the scores' device.
    classwise : also return the per-class bins.

    Returns
    -------
    per_image : (3, N, B) float64, per image and bin: count, sum of confidences, number correct.
    nll, brier : 0-d float64, sums of -log p_y and of the Brier score over valid pixels.
    classwise : (3, C, B) float64, per class and bin: count, sum of p_k, number of pixels labelled k; or None.
    """
    with _one_thread_on_cpu(scores.device):
        return _calibration_sums(scores, y, valid, inputs, dtype, edges, classwise)


def _calibration_sums(scores, y, valid, inputs, dtype, edges, classwise):
    n, p = y.shape
    step = max(1, _BLOCK_PIXELS // n)
    if p > step:  # blocks of pixels, so that the per-pixel buffers stay small whatever the batch
        parts = [_calibration_sums(scores[:, :, s:s + step], y[:, s:s + step], valid[:, s:s + step], inputs, dtype,
                                  edges, classwise) for s in range(0, p, step)]
        per_image = torch.stack([q[0] for q in parts]).sum(0)
        cw = torch.stack([q[3] for q in parts]).sum(0) if classwise else None
        return per_image, sum(q[1] for q in parts), sum(q[2] for q in parts), cw
    c, dev, f64, b = scores.shape[1], scores.device, torch.float64, edges.numel() - 1
    t = _reduce_tiles(scores, y, valid, inputs, dtype, _first_edge(edges, dtype) if classwise else None)
    if inputs == "probs":
        conf, top_e, p_y = t["top"], t["top"], t["x_y"]
        logp_y = p_y.clamp_min(torch.finfo(dtype).tiny).log()
        brier = t["sq"] - 2 * p_y + 1
    else:
        r = t["s"].reciprocal()
        conf, top_e = r, 1
        logp_y = (t["x_y"] - t["top"]) - t["s"].log()
        brier = t["sq"] * r.square() - 2 * t["e_y"] * r + 1  # sum_k p_k^2 = sum_k e_k^2 / s^2
    hit = _hits(scores, y, valid, t, top_e)
    # Per image and bin; ignored pixels go to one extra slot, dropped.
    ik = torch.where(valid, bin_index(conf, edges) + (torch.arange(n, device=dev) * b)[:, None], n * b).flatten()
    conf_sum = torch.bincount(ik, weights=conf.flatten().to(f64), minlength=n * b + 1)[:-1]
    count_hits = torch.bincount(2 * ik + hit.flatten(), minlength=2 * (n * b + 1)).view(-1, 2)[:-1].to(f64)
    per_image = torch.stack([count_hits.sum(1), conf_sum, count_hits[:, 1]]).view(3, n, b)
    nll = -torch.where(valid, logp_y, 0).sum(dtype=f64)
    brier_sum = torch.where(valid, brier, 0).sum(dtype=f64)
    if not classwise:
        return per_image, nll, brier_sum, None
    cw = torch.zeros(3, c, b, dtype=f64, device=dev)
    hit_idx = torch.where(valid, y * b + bin_index(t["p_y"], edges), c * b).flatten()
    cw[2] = torch.bincount(hit_idx, minlength=c * b + 1)[:-1].view(c, b)
    if b > 1:
        k, v = t["above"]
        idx = k * b + bin_index(v, edges)
        cw[0] = torch.bincount(idx, minlength=c * b).view(c, b)
        cw[1] = torch.bincount(idx, weights=v.to(f64), minlength=c * b).view(c, b)
    # Bin 0 of each class holds whatever its totals leave to the other bins.
    cw[0, :, 0] = valid.sum() - cw[0, :, 1:].sum(1)
    cw[1, :, 0] = t["totals"] - cw[1, :, 1:].sum(1)
    return per_image, nll, brier_sum, cw
