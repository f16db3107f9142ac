"""The fused per-pixel pass behind :class:`~segcal_lib.metrics.CalibrationMeter` (``backend="fused"``).

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

import torch

__all__ = ["PRECISIONS", "bin_index", "calibration_sums", "first_argmax"]

# dtype of the per-pixel terms for each documented precision of the meter.
PRECISIONS = {"exact": torch.float64, "fast": torch.float32}
# Scores per tile: 2^18 float32 = 1 MiB, inside a core's L2 cache (measured best among 2^16..2^20 on two cores).
# On accelerators there is no cache to fit and each tile costs kernel launches, so a whole chunk is one tile.
_TILE_ELEMENTS = {"cpu": 2**18}
_TILE_ELEMENTS_DEFAULT = 2**27


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
    x = scores.reshape(n, c, -1)
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


def _tile_terms(x: torch.Tensor, y: torch.Tensor, inputs: str):
    """Per-pixel terms of one tile x (n, C, p) in the working dtype, labels y (n, p).

    Returns (e, r, conf, top_is_y, logp_y, brier): probabilities are ``e * r[:, None]`` ((n, C, p) and (n, p));
    ``top_is_y`` says where the label's score equals the maximum (a hit unless an earlier class ties, see ``_hits``).
    """
    top = x.amax(1, keepdim=True)
    x_y = x.gather(1, y[:, None]).squeeze(1)
    top = top.squeeze(1)
    if inputs == "probs":
        logp_y = x_y.clamp_min(torch.finfo(x.dtype).tiny).log()
        brier = torch.linalg.vecdot(x, x, dim=1) - 2 * x_y + 1
        return x, None, top, x_y == top, logp_y, brier
    e = (x - top[:, None]).exp_()  # exp(x - max): the arg-max class gets exactly 1
    s = e.sum(1)
    r = s.reciprocal()
    z_y = x_y - top
    logp_y = z_y - s.log()
    p_y = z_y.exp() * r
    brier = torch.linalg.vecdot(e, e, dim=1) * r.square() - 2 * p_y + 1  # sum_k p_k^2 = sum_k e_k^2 / s^2
    return e, r, r, z_y == 0, logp_y, brier


def _hits(x: torch.Tensor, e: torch.Tensor, r: torch.Tensor | None, y: torch.Tensor, top_is_y: torch.Tensor,
          valid: torch.Tensor) -> torch.Tensor:
    """Whether the first arg-max of each pixel of x (n, C, p) is its label: (n, p) bool, False where not valid.

    The label's score equals the maximum at ``top_is_y``; it is the *first* arg-max unless an earlier class ties.
    A tie puts two exact 1s into ``sum_k exp(x_k - max)`` (or two copies of the maximum into ``sum_k p_k``), and
    rounding never takes a sum of non-negative terms below a partial sum, so where that sum is below twice the
    maximum's term there is no tie. The few remaining pixels are settled by looking at their scores.
    """
    hit = top_is_y & valid
    top_term = 1 if r is not None else e.amax(1)  # e is exp(x - max) for logits, the probabilities themselves else
    maybe_tie = hit & (e.sum(1) >= 2 * top_term)
    if maybe_tie.any():
        i, j = maybe_tie.nonzero(as_tuple=True)
        cols = x[i, :, j]  # (m, C)
        top = cols.amax(1, keepdim=True)
        classes = torch.arange(x.shape[1], device=x.device)
        earlier = ((cols == top) & (classes < y[i, j, None])).any(1)
        hit[i[earlier], j[earlier]] = False
    return hit


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
    n, c, p = scores.shape
    dev, f64, b = scores.device, torch.float64, edges.numel() - 1
    img_base = (torch.arange(n, device=dev) * b)[:, None]
    per_image = torch.zeros(n * b + 1, dtype=f64, device=dev)  # the extra slot collects ignored pixels
    count_hits = torch.zeros(2 * (n * b + 1), dtype=torch.long, device=dev)
    nll, brier_sum = torch.zeros((), dtype=f64, device=dev), torch.zeros((), dtype=f64, device=dev)
    cw = torch.zeros(3, c, b, dtype=f64, device=dev) if classwise else None
    cw_totals = torch.zeros(c, dtype=f64, device=dev)  # per class, sum of p_k over valid pixels
    first_edge = _first_edge(edges, dtype)
    step = _tile_pixels(dev, n * c)
    for s in range(0, p, step):
        x, yt, vt = scores[:, :, s:s + step].to(dtype), y[:, s:s + step], valid[:, s:s + step]
        e, r, conf, top_is_y, logp_y, brier = _tile_terms(x, yt, inputs)
        hit = _hits(x, e, r, yt, top_is_y, vt)
        k = bin_index(conf, edges)
        ik = torch.where(vt, k + img_base, n * b)
        per_image += torch.bincount(ik.flatten(), weights=conf.flatten().to(f64), minlength=n * b + 1)
        count_hits += torch.bincount((2 * ik + hit).flatten(), minlength=2 * (n * b + 1))
        nll -= torch.where(vt, logp_y, 0).sum(dtype=f64)
        brier_sum += torch.where(vt, brier, 0).sum(dtype=f64)
        if classwise:
            # probabilities, 0 at ignored pixels; e is a private temporary for logits, the caller's scores for probs
            # float32 partial sums over one tile (relative error ~1e-7 of a tile's total), float64 across tiles
            if inputs == "logits":
                prob = e.mul_(torch.where(vt, r, 0)[:, None])
            else:
                prob = (e * vt[:, None]).contiguous()
            cw_totals += prob.sum((0, 2)).to(f64)
            _classwise_tile(cw, prob, yt, vt, edges, first_edge)
    count_hits = count_hits.view(-1, 2)[:-1]
    per_image = torch.stack([count_hits.sum(1).to(f64), per_image[:-1], count_hits[:, 1].to(f64)]).view(3, n, b)
    if classwise:
        # Bin 0 of each class holds whatever its totals leave to the other bins.
        cw[0, :, 0] = valid.sum().to(f64) - cw[0, :, 1:].sum(1)
        cw[1, :, 0] = cw_totals - cw[1, :, 1:].sum(1)
    return per_image, nll, brier_sum, cw


def _classwise_tile(cw: torch.Tensor, prob: torch.Tensor, y: torch.Tensor, valid: torch.Tensor,
                    edges: torch.Tensor, first_edge: torch.Tensor) -> None:
    """Add one tile's class-wise bins >= 1 and label counts into ``cw`` (3, C, B); prob (n, C, p) is 0 if ignored."""
    c, b, f64 = cw.shape[1], cw.shape[2], torch.float64
    p_y = prob.gather(1, y[:, None]).squeeze(1)
    hit_idx = torch.where(valid, y * b + bin_index(p_y, edges), c * b)
    cw[2] += torch.bincount(hit_idx.flatten(), minlength=c * b + 1)[:-1].view(c, b).to(f64)
    if b > 1:
        # Only probabilities >= 1/B leave bin 0, and a pixel has at most B of them: scatter just those.
        flat = torch.nonzero((prob >= first_edge).view(-1)).squeeze(1)
        v = prob.view(-1)[flat]
        idx = (flat // prob.shape[2]) % c * b + bin_index(v, edges)
        cw[0] += torch.bincount(idx, minlength=c * b).view(c, b).to(f64)
        cw[1] += torch.bincount(idx, weights=v.to(f64), minlength=c * b).view(c, b)
