"""Selective scaling (Wang, Gong, Wang, CVPR 2023): soften only the pixels a selector flags as mispredicted.

A *selector* predicts, per pixel, whether the segmentation model's prediction there is wrong. Pixels it flags get their
logits divided by a large temperature ``t_mis`` (towards the uniform distribution); the others by ``t_cor`` (1: left
alone). Selective scaling composes with any calibrator as its *base*: the base calibrates first, the selector reads
the base's log-probabilities, and the temperatures rescale the base's logits.

The paper's selector (its authors' release) is an MLP on the C log-probabilities of one pixel, no image and no
spatial context: Linear(C, C) (identity init) -> BN -> ReLU -> Linear(C, 2C) -> BN -> ReLU -> Linear(2C, C) -> BN ->
ReLU -> Linear(C, 2), trained by cross-entropy on "correct / mispredicted" pixel labels with mispredicted pixels
counted twice, ignore pixels left out, the best epoch kept on held-out pixels. Options beyond the paper:

- ``soft=True``: the inverse temperature is interpolated by the selector's probability q of "mispredicted",
  ``beta = q / t_mis + (1 - q) / t_cor``, instead of thresholding q.
- ``selector="conv"``: a small conv net over the log-probability map (and the image with ``use_image=True``), so a
  pixel's decision sees its neighbourhood. It fits on whole maps (held-out part = a seeded subset of images).
- ``fit_temperatures=True``: ``t_mis`` and ``t_cor`` are fitted by NLL on the held-out pixels instead of fixed.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from segcal_lib.calibrators.base import Calibrator
from segcal_lib.calibrators.registry import make_calibrator, register_calibrator
from segcal_lib.calibrators.sampling import sample_pixels
from segcal_lib.checks import IGNORE_INDEX, check_logits_labels

__all__ = ["SelectiveScaling", "apply_selective_scaling", "auroc", "conv_selector", "detection_quality",
           "fit_two_temperatures", "mlp_selector", "selector_quality", "selector_scores"]

# Temperature the paper uses for flagged pixels when the selector is accurate (logits / 1e10: uniform).
PAPER_T_MIS = 1e10
_QUALITY_KEYS = ("accuracy", "precision", "recall", "auroc", "flagged_share", "mispredicted_share", "n_pixels")
BETA_MAX = 1e4  # smallest temperature a fit may reach: 1e-4
_APPLY_CHUNK = 1 << 18  # pixels per selector forward at inference, to bound the temporaries
_HELD_OUT_CHECK = 1 << 16  # held-out pixels scored at each check of the MLP selector


# ------------------------------------------------------------------------------------------------ building blocks
def mlp_selector(num_classes: int) -> nn.Sequential:
    """The paper's per-pixel selector on C log-probabilities: (P, C) -> (P, 2) logits of (correct, mispredicted).

    The first layer starts at the identity, so at initialisation the net sees the log-probabilities themselves.
    """
    c = num_classes
    first = nn.Linear(c, c)
    with torch.no_grad():
        first.weight.copy_(torch.eye(c))
        first.bias.zero_()
    return nn.Sequential(first, nn.BatchNorm1d(c), nn.ReLU(),
                         nn.Linear(c, 2 * c), nn.BatchNorm1d(2 * c), nn.ReLU(),
                         nn.Linear(2 * c, c), nn.BatchNorm1d(c), nn.ReLU(),
                         nn.Linear(c, 2))


def conv_selector(in_channels: int, hidden: int = 16) -> nn.Sequential:
    """A small selector with spatial context: (N, in_channels, H, W) -> (N, 2, H, W).

    Two 3x3 convolutions (the second dilated by 2) give each pixel a 7x7 receptive field; a 1x1 convolution reads
    the pixel's own log-probabilities beside them, so the net can fall back on the per-pixel rule.
    """
    return _ConvSelector(in_channels, hidden)


class _ConvSelector(nn.Module):
    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.context = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2), nn.BatchNorm2d(hidden), nn.ReLU())
        self.pixel = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU())
        self.head = nn.Conv2d(2 * hidden, 2, 1)

    def forward(self, x):
        return self.head(torch.cat([self.context(x), self.pixel(x)], 1))


def _random_crop(x: torch.Tensor, t: torch.Tensor, size: int, gen: torch.Generator):
    """One random ``size`` x ``size`` window (the same for the whole batch) of inputs (N, K, H, W) and targets."""
    h, w = x.shape[-2:]
    i = int(torch.randint(0, max(1, h - size + 1), (1,), generator=gen))
    j = int(torch.randint(0, max(1, w - size + 1), (1,), generator=gen))
    return x[..., i:i + size, j:j + size], t[..., i:i + size, j:j + size]


# ------------------------------------------------------------------------------------------------ the scaling rule
def apply_selective_scaling(logits: torch.Tensor, mis_score: torch.Tensor, t_mis: float = PAPER_T_MIS,
                            t_cor: float = 1.0, soft: bool = False, threshold: float = 0.5) -> torch.Tensor:
    """Divide each pixel's logits by ``t_mis`` where the selector says "mispredicted", by ``t_cor`` elsewhere.

    Parameters
    ----------
    logits : float tensor (N, C, H, W), the (base-calibrated) logits.
    mis_score : tensor (N, H, W): the selector's probability of "mispredicted" in [0, 1], or a bool mask of flags.
    t_mis, t_cor : temperatures > 0 (``math.inf`` allowed: the pixel becomes exactly uniform).
    soft : interpolate the inverse temperature, ``q / t_mis + (1 - q) / t_cor``, instead of thresholding q.
    threshold : a pixel is flagged when ``q > threshold`` (hard rule only).

    Returns
    -------
    Tensor of the shape and dtype of ``logits``. The argmax is unchanged (each pixel is scaled by a positive number;
    a pixel made uniform keeps its logits' order only up to ties, see :class:`SelectiveScaling`).
    """
    if logits.ndim != 4 or mis_score.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"mis_score must have shape {(logits.shape[0], *logits.shape[2:])} for logits "
                         f"{tuple(logits.shape)}, got {tuple(mis_score.shape)}")
    for name, t in (("t_mis", t_mis), ("t_cor", t_cor)):
        if not t > 0:
            raise ValueError(f"{name} must be > 0 (inf allowed), got {t!r}")
    b_mis, b_cor = 1.0 / t_mis, 1.0 / t_cor
    q = mis_score.to(logits.device, torch.float32)
    beta = q * b_mis + (1 - q) * b_cor if soft else torch.where(q > threshold, b_mis, b_cor)
    return (logits.float() * beta[:, None]).to(logits.dtype)


# ------------------------------------------------------------------------------------------------ selector quality
def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve, exactly, from ranks (Mann-Whitney U; tied scores count one half).

    Parameters
    ----------
    scores : float tensor (P,), higher = more likely positive.
    positive : bool tensor (P,).

    Returns
    -------
    float in [0, 1]; NaN when one of the two classes is empty.
    """
    s, pos = scores.reshape(-1).double(), positive.reshape(-1).bool()
    if s.shape != pos.shape:
        raise ValueError(f"scores and positive must have the same number of elements, got {s.numel()} and "
                         f"{pos.numel()}")
    n_pos, n = int(pos.sum()), s.numel()
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = s.argsort()
    s_sorted = s[order]
    # Average rank of each group of tied scores (1-based): the mean of its first and last positions.
    _, inverse, counts = torch.unique_consecutive(s_sorted, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg_rank = (ends - (counts.double() - 1) / 2)[inverse]
    rank_sum = float(avg_rank[pos[order]].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def detection_quality(mis_score: torch.Tensor, mispredicted: torch.Tensor, threshold: float = 0.5) -> dict:
    """How well a selector finds mispredicted pixels.

    Parameters
    ----------
    mis_score : float tensor (P,), the selector's probability of "mispredicted".
    mispredicted : bool tensor (P,), the truth.
    threshold : a pixel is flagged when ``mis_score > threshold``.

    Returns
    -------
    dict: ``accuracy`` (flag == truth), ``precision`` and ``recall`` for "mispredicted" (NaN when undefined),
    ``auroc``, ``flagged_share``, ``mispredicted_share``, ``n_pixels``.
    """
    q, m = mis_score.reshape(-1), mispredicted.reshape(-1).bool()
    flag = q > threshold
    tp = float((flag & m).sum())
    n_flag, n_mis, n = float(flag.sum()), float(m.sum()), q.numel()
    return {"accuracy": float((flag == m).double().mean()) if n else math.nan,
            "precision": tp / n_flag if n_flag else math.nan, "recall": tp / n_mis if n_mis else math.nan,
            "auroc": auroc(q, m), "flagged_share": n_flag / n if n else math.nan,
            "mispredicted_share": n_mis / n if n else math.nan, "n_pixels": n}


@torch.no_grad()
def selector_scores(logits: torch.Tensor, labels: torch.Tensor, selector, images: torch.Tensor | None = None,
                    ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """A selector's probability of "mispredicted" and the truth, on the valid pixels of one batch.

    Parameters
    ----------
    logits : float tensor (N, C, H, W). With a calibrator as ``selector``: the model's raw logits (the truth is the
        argmax of its base calibrator, ``selector.base``, when it has one). With scores: the logits the scores judge.
    labels : integer tensor (N, H, W); ``ignore_index`` pixels are left out.
    selector : a fitted :class:`SelectiveScaling` (or any object with ``mispredicted_proba(logits, images)``), or a
        float tensor (N, H, W) of scores in [0, 1] (higher = more likely mispredicted) or a bool tensor of flags.
    images : float tensor (N, 3, H, W) for selectors that read the image.

    Returns
    -------
    (scores, mispredicted): float32 (P,) and bool (P,) on the CPU, P = number of valid pixels.
    """
    check_logits_labels(logits, labels, ignore_index=ignore_index)
    expected = (logits.shape[0], *logits.shape[2:])
    if isinstance(selector, torch.Tensor):
        if tuple(selector.shape) != expected:
            raise ValueError(f"selector scores must have shape {expected} (logits without the class dim), got "
                             f"{tuple(selector.shape)}")
        q, judged = selector, logits
    elif hasattr(selector, "mispredicted_proba"):
        q = selector.mispredicted_proba(logits, images)
        base = getattr(selector, "base", None)
        judged = logits if base is None else base(logits, images)
    else:
        raise ValueError("selector must be a fitted selective calibrator (with mispredicted_proba) or a tensor of "
                         f"scores (N, H, W), got {type(selector).__name__}")
    valid = labels != ignore_index
    wrong = judged.argmax(1) != labels.to(judged.device)
    return q[valid.to(q.device)].float().cpu(), wrong[valid.to(wrong.device)].cpu()


def selector_quality(logits: torch.Tensor, labels: torch.Tensor, selector, images: torch.Tensor | None = None, *,
                     threshold: float | None = None, ignore_index: int = IGNORE_INDEX) -> dict:
    """How well a selector finds the mispredicted pixels of a set of images: accuracy, precision, recall, AUROC.

    Parameters
    ----------
    logits, labels, selector, images, ignore_index : as in :func:`selector_scores`.
    threshold : a pixel is flagged when its score exceeds it; default the selector's own ``threshold``
        (0.5 for scores).

    Returns
    -------
    dict of :func:`detection_quality` (``accuracy``, ``precision`` and ``recall`` for "mispredicted", ``auroc``,
    ``flagged_share``, ``mispredicted_share``, ``n_pixels``) over the valid pixels. For a split too large to hold in
    memory, :func:`segcal_lib.calibrators.selective_eval.selector_detection` streams it in batches.

    Examples
    --------
    >>> selector_quality(test_logits, test_labels, fitted_selective)["auroc"]   # doctest: +SKIP
    """
    q, wrong = selector_scores(logits, labels, selector, images, ignore_index)
    if threshold is None:
        threshold = getattr(selector, "threshold", 0.5)
    return detection_quality(q, wrong, threshold)


# ------------------------------------------------------------------------------------------------ temperatures
def fit_two_temperatures(logits: torch.Tensor, labels: torch.Tensor, mis_score: torch.Tensor, soft: bool = False,
                         threshold: float = 0.5, max_iter: int = 100, tol: float = 1e-12) -> tuple[float, float]:
    """Inverse temperatures (beta_mis, beta_cor) >= 0 minimising the mean NLL of the selective rule; float64.

    With ``s_i = w_i * beta_mis + (1 - w_i) * beta_cor`` (``w`` = the flag, or q when ``soft``) the NLL
    ``mean(logsumexp(s_i z_i) - s_i z_iy)`` is convex in (beta_mis, beta_cor), so a projected Newton iteration with
    backtracking finds the optimum. For a hard selector it splits into one temperature scaling per group.

    Parameters
    ----------
    logits : (P, C); labels : (P,) in [0, C); mis_score : (P,) selector probabilities of "mispredicted".

    Returns
    -------
    (beta_mis, beta_cor); divide by them to get temperatures (beta 0 means T = inf, i.e. uniform).
    """
    z = logits.double()
    zy = z.gather(1, labels.long()[:, None]).squeeze(1)
    q = mis_score.double().reshape(-1)
    w = q if soft else (q > threshold).double()
    a = torch.stack([w, 1 - w], 1)  # (P, 2): the inverse temperature of pixel i is a_i @ beta
    # A group without pixels has no say in the NLL: its temperature stays at 1.
    active = (a.sum(0) > 0).nonzero().squeeze(1)

    def nll(beta):
        s = a @ beta
        return float(((s[:, None] * z).logsumexp(1) - s * zy).mean())

    beta = torch.ones(2, dtype=torch.float64)
    f = nll(beta)
    for _ in range(max_iter):
        s = a @ beta
        p = (s[:, None] * z).softmax(1)
        ez = (p * z).sum(1)
        var = ((p * z * z).sum(1) - ez * ez).clamp_min(0)
        g = ((a * (ez - zy)[:, None]).mean(0))[active]
        h = ((a.T * var) @ a / a.shape[0])[active][:, active]
        if float(g.abs().max()) < tol:
            break
        step = torch.zeros(2, dtype=torch.float64)
        step[active] = torch.linalg.solve(h + 1e-12 * torch.eye(len(active), dtype=h.dtype), g)
        t, cand = 1.0, None
        while t > 1e-12:
            trial = (beta - t * step).clamp(0.0, BETA_MAX)
            if nll(trial) < f:
                cand = trial
                break
            t /= 2
        if cand is None:
            break
        done = float((cand - beta).abs().max()) < tol * (1 + float(beta.abs().max()))
        beta, f = cand, nll(cand)
        if done:
            break
    return float(beta[0]), float(beta[1])


# ------------------------------------------------------------------------------------------------ the calibrator
@register_calibrator("selective", "selective_scaling")
class SelectiveScaling(Calibrator):
    """Selective scaling on top of a base calibrator.

    Parameters
    ----------
    base : str or Calibrator, default "ts"; a registered name (made with ``base_options``) or an instance. An unfitted
        base is fitted on the same calibration split first; a fitted instance is used as it is.
    base_options : dict, options of the base when ``base`` is a name.
    selector : "mlp" (the paper's, per pixel) or "conv" (spatial context, fits on whole maps).
    t_mis : float, default 1e10 (the paper's value for an accurate selector: flagged pixels become uniform).
    t_cor : float, default 1.0 (the paper's: pixels flagged correct keep the base's probabilities).
    soft : bool, default False; interpolate the inverse temperature by the selector's probability.
    threshold : float, default 0.5; flag a pixel when P(mispredicted) > threshold (hard rule).
    fit_temperatures : bool, default False; fit ``t_mis`` and ``t_cor`` by NLL on the held-out pixels.
    mis_weight : float, default 2.0; weight of mispredicted pixels in the selector's loss (2: the paper's
        duplication).
    steps, batch_size, lr, weight_decay : selector training: AdamW with a cosine decay, ``steps`` steps (default
        500) of ``batch_size`` pixels (default 4096; the conv selector takes ``conv_batch_images`` random crops of
        ``crop`` pixels a side per step), peak lr 1e-2, weight decay 1e-6 (the paper's). A budget in steps, not
        epochs, keeps the fit's time independent of the calibration split's size (the paper: AdamW lr 1e-3, 40
        epochs; at lr 1e-3 our fits had not converged within this budget, at 1e-2 they had).
    checks : int, default 20; held-out evaluations during training (the best one is kept).
    held_out : float, default 0.2; share of the calibration pixels (images, for the conv selector) kept out of
        training to pick the best epoch and to fit the temperatures.
    use_image : bool, default False; the conv selector also reads the image (then the calibrator needs images).
    hidden : int, default 16; channels of the conv selector.
    device : str or None; where the selector trains (default: the best available, mixed precision on CUDA).
        The fitted selector is then moved to where the calibrator lives, like the base.
    (and those of :class:`~segcal_lib.calibrators.base.Calibrator`)

    Attributes
    ----------
    selector_ : the trained selector (nn.Module).
    t_mis_, t_cor_ : floats, the temperatures in use (fixed or fitted; ``inf`` means uniform).
    selector_quality_ : dict from :func:`detection_quality` on the held-out calibration pixels.
    history_ : list of dicts (epoch, train loss, held-out loss) of the last fit (not saved in the state_dict).

    Notes
    -----
    The argmax never changes: each pixel's logits are multiplied by a positive number. A pixel sent to ``t_mis=inf``
    becomes exactly uniform, so its arg-max becomes a tie; the default 1e10 keeps the order.

    Examples
    --------
    >>> cal = make_calibrator("selective", base="ts", progress=False)    # doctest: +SKIP
    >>> cal.fit(val_store).selector_quality_["auroc"]                       # doctest: +SKIP
    """

    def __init__(self, base: str | Calibrator = "ts", base_options: dict | None = None, selector: str = "mlp",
                 t_mis: float = PAPER_T_MIS, t_cor: float = 1.0, soft: bool = False, threshold: float = 0.5,
                 fit_temperatures: bool = False, mis_weight: float = 2.0, steps: int = 500, batch_size: int = 4096,
                 lr: float = 1e-2, weight_decay: float = 1e-6, checks: int = 20, held_out: float = 0.2,
                 use_image: bool = False, hidden: int = 16, conv_batch_images: int = 4, crop: int = 64,
                 device: str | None = None, **kw):
        super().__init__(**kw)
        if selector not in ("mlp", "conv"):
            raise ValueError(f"selector must be 'mlp' or 'conv', got {selector!r}")
        if use_image and selector != "conv":
            raise ValueError("use_image=True needs selector='conv' (the paper's MLP reads log-probabilities only)")
        for name, t in (("t_mis", t_mis), ("t_cor", t_cor)):
            if not t > 0:
                raise ValueError(f"{name} must be > 0 (inf allowed), got {t!r}")
        if not 0 < held_out < 1:
            raise ValueError(f"held_out must lie in (0, 1), got {held_out!r}")
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
        if not mis_weight > 0:
            raise ValueError(f"mis_weight must be > 0, got {mis_weight!r}")
        for name, v in (("steps", steps), ("batch_size", batch_size), ("hidden", hidden), ("checks", checks),
                        ("conv_batch_images", conv_batch_images), ("crop", crop)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if isinstance(base, str):
            base_cal = make_calibrator(base, **{"progress": False, **(base_options or {})})
        elif isinstance(base, Calibrator):
            if base_options:
                raise ValueError("base_options apply to a base given by name, not to an instance")
            base_cal = base
        else:
            raise ValueError(f"base must be a registered calibrator name or a Calibrator, got {type(base).__name__}")
        if isinstance(base_cal, SelectiveScaling):
            raise ValueError("base must not itself be selective scaling")
        self.base = base_cal
        self.base_options, self.selector, self.soft, self.threshold = base_options, selector, soft, threshold
        self.t_mis, self.t_cor, self.fit_temperatures, self.mis_weight = t_mis, t_cor, fit_temperatures, mis_weight
        self.steps, self.batch_size, self.lr, self.weight_decay, self.checks = steps, batch_size, lr, weight_decay, \
            checks
        self.held_out, self.use_image, self.hidden = held_out, use_image, hidden
        self.conv_batch_images, self.crop = conv_batch_images, crop
        self.device = device
        self.needs_images = base_cal.needs_images or use_image
        self.preserves_argmax = base_cal.preserves_argmax
        self.selector_: nn.Module | None = None
        self.history_: list[dict] = []
        self.register_buffer("inverse_temperatures", torch.tensor([1.0 / t_mis, 1.0 / t_cor], dtype=torch.float64))
        self.register_buffer("quality", torch.full((len(_QUALITY_KEYS),), math.nan, dtype=torch.float64))

    # -------------------------------------------------------------------------------------------- learned values
    @property
    def t_mis_(self) -> float:
        self.check_fitted()
        b = float(self.inverse_temperatures[0])
        return math.inf if b == 0 else 1.0 / b

    @property
    def t_cor_(self) -> float:
        self.check_fitted()
        b = float(self.inverse_temperatures[1])
        return math.inf if b == 0 else 1.0 / b

    @property
    def selector_quality_(self) -> dict:
        self.check_fitted()
        q = dict(zip(_QUALITY_KEYS, self.quality.tolist(), strict=True))
        q["n_pixels"] = int(q["n_pixels"])
        return q

    def _new_selector(self, num_classes: int) -> nn.Module:
        if self.selector == "mlp":
            return mlp_selector(num_classes)
        return conv_selector(num_classes + (3 if self.use_image else 0), self.hidden)

    # -------------------------------------------------------------------------------------------- fitting
    def _base_is_pixelwise(self) -> bool:
        return type(self.base)._fit_batches is Calibrator._fit_batches and not self.base.needs_images

    def _fit_batches(self, batches) -> int:
        torch.manual_seed(self.seed)
        if self.selector == "mlp" and self._base_is_pixelwise():
            # One streamed pass: the base fits on the same pixel sample the selector trains on.
            x, y = sample_pixels(batches, self.max_pixels, self.seed, self.ignore_index)
            c = x.shape[1]
            if not self.base.is_fitted:
                with torch.enable_grad():
                    self.base._fit_pixels(x, y)
                self.base._num_classes.fill_(c)
            z = self._base_logits(x)
            self._fit_mlp(z, y)
            return c
        maps = [(lg, lb, im) for lg, lb, im in batches]
        if not maps:
            raise ValueError("no batch to fit on")
        c = maps[0][0].shape[1]
        if self.needs_images and any(im is None for _, _, im in maps):
            raise ValueError(f"{type(self).__name__} with this base/selector needs images beside the logits in fit()")
        if not self.base.is_fitted:
            self.base.fit(maps)
        based = [(self.base(lg, im).float(), lb, im) for lg, lb, im in maps]
        if self.selector == "mlp":
            z, y = sample_pixels(based, self.max_pixels, self.seed, self.ignore_index)
            self._fit_mlp(z, y)
        else:
            self._fit_conv(based, c)
        return c

    def _base_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Base-calibrated logits of pixels (P, C), through the base's map interface."""
        return self.base(x[:, :, None, None]).reshape(x.shape).float()

    def _train_device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        from segcal_lib.config import get_device

        return get_device()

    def _fit_mlp(self, z: torch.Tensor, y: torch.Tensor) -> None:
        mis = (z.argmax(1) != y).long()
        n = z.shape[0]
        if n < 10:
            raise ValueError(f"selective scaling needs at least 10 valid calibration pixels, got {n}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        n_val = max(1, int(round(n * self.held_out)))
        tr, va = perm[n_val:], perm[:n_val]
        logp = z.log_softmax(1)
        dev = self._train_device()
        net = mlp_selector(z.shape[1])
        bs = self.batch_size

        def train_batches(gen):
            order = tr[torch.randperm(tr.numel(), generator=gen)]
            # Drop a last batch of one pixel: BatchNorm cannot train on it.
            for s in range(0, order.numel() - (1 if order.numel() % bs == 1 else 0), bs):
                idx = order[s:s + bs]
                yield logp[idx], mis[idx]

        checked = va[:_HELD_OUT_CHECK]  # enough pixels to rank the checks; all of them are used below

        def held_out_batches():
            for s in range(0, checked.numel(), 1 << 15):
                idx = checked[s:s + (1 << 15)]
                yield logp[idx], mis[idx]

        self.selector_ = self._train(net, train_batches, held_out_batches, dev)
        q = self._mlp_proba(logp[va])
        self._finish(z[va], y[va], q, mis[va].bool())

    def _fit_conv(self, based, c: int) -> None:
        # Split by image: whole maps are needed for spatial context.
        items = []
        for lg, lb, im in based:
            for i in range(lg.shape[0]):
                items.append((lg[i:i + 1], lb[i:i + 1], None if im is None else im[i:i + 1]))
        n = len(items)
        if n < 2:
            raise ValueError(f"the conv selector needs at least 2 calibration images (train and held-out), got {n}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        n_val = min(n - 1, max(1, int(round(n * self.held_out))))
        tr, va = perm[n_val:], perm[:n_val]

        def stack(idx):
            lg = torch.cat([items[i][0] for i in idx])
            lb = torch.cat([items[i][1] for i in idx])
            im = None if items[idx[0]][2] is None else torch.cat([items[i][2] for i in idx])
            target = (lg.argmax(1) != lb).long().masked_fill(lb == self.ignore_index, self.ignore_index)
            return self._conv_input(lg, im), target

        def train_batches(gen):
            order = [tr[i] for i in torch.randperm(len(tr), generator=gen).tolist()]
            for s in range(0, len(order), self.conv_batch_images):
                x, t = stack(order[s:s + self.conv_batch_images])
                yield _random_crop(x, t, self.crop, gen)

        def held_out_batches():
            for s in range(0, len(va), self.conv_batch_images):
                yield stack(va[s:s + self.conv_batch_images])

        net = conv_selector(c + (3 if self.use_image else 0), self.hidden)
        self.selector_ = self._train(net, train_batches, held_out_batches, self._train_device())
        zs, ys, qs = [], [], []
        for i in va:
            lg, lb, im = items[i]
            valid = (lb != self.ignore_index).reshape(-1)
            zs.append(lg.permute(0, 2, 3, 1).reshape(-1, c)[valid])
            ys.append(lb.reshape(-1)[valid].long())
            qs.append(self._conv_proba(lg, im).reshape(-1)[valid])
        z, y, q = torch.cat(zs), torch.cat(ys), torch.cat(qs)
        self._finish(z, y, q, z.argmax(1) != y)

    def _conv_input(self, base_logits: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        x = base_logits.float().log_softmax(1)
        if self.use_image:
            x = torch.cat([x, images.to(x.device, torch.float32)], 1)
        return x

    def _train(self, net: nn.Module, train_batches, held_out_batches, dev: torch.device) -> nn.Module:
        """AdamW on the weighted cross-entropy for ``steps`` steps; the net at its best held-out check is kept.

        ``train_batches(generator)`` yields one pass of (input, target) batches; passes repeat until ``steps``.
        Returns the net in eval mode, on the calibrator's device.
        """
        net = net.to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.steps)
        weight = torch.tensor([1.0, self.mis_weight], device=dev)
        cuda = dev.type == "cuda"
        amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)
        gen = torch.Generator().manual_seed(self.seed)
        check_every = max(1, self.steps // self.checks)
        best, best_loss, self.history_ = None, math.inf, []
        total = count = 0.0
        bar = tqdm(total=self.steps, desc="train selector", disable=not self.progress, leave=False)
        step = 0
        with torch.enable_grad():
            while step < self.steps:
                for x, t in train_batches(gen):
                    net.train()
                    x, t = x.to(dev, non_blocking=True), t.to(dev, non_blocking=True)
                    with torch.autocast(dev.type, dtype=amp_dtype, enabled=cuda):
                        loss = F.cross_entropy(net(x).float(), t, weight=weight, ignore_index=self.ignore_index)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    sched.step()
                    step += 1
                    total, count = total + float(loss.detach()), count + 1
                    bar.update()
                    if step % check_every == 0 or step == self.steps:
                        held = self._held_out_loss(net, held_out_batches, weight, dev, cuda, amp_dtype)
                        self.history_.append({"step": step, "train_loss": total / count, "held_out_loss": held})
                        bar.set_postfix(held_out_loss=f"{held:.4f}")
                        total = count = 0.0
                        if held < best_loss:
                            best_loss, best = held, copy.deepcopy(net.state_dict())
                    if step >= self.steps:
                        break
        bar.close()
        if best is not None:
            net.load_state_dict(best)
        return net.eval().to(self._num_classes.device)

    def _held_out_loss(self, net, held_out_batches, weight, dev, cuda, amp_dtype) -> float:
        net.eval()
        num = den = 0.0
        with torch.no_grad():
            for x, t in held_out_batches():
                x, t = x.to(dev), t.to(dev)
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=cuda):
                    out = net(x).float()
                # Sum of weighted losses and of weights: the same normalisation as the training loss.
                num += float(F.cross_entropy(out, t, weight=weight, ignore_index=self.ignore_index, reduction="sum"))
                valid = t != self.ignore_index
                den += float(weight[t[valid]].sum())
        return num / den if den else math.inf

    def _finish(self, z, y, q, mispredicted) -> None:
        """Set the temperatures (fixed or fitted on the held-out pixels) and record the selector's quality there."""
        if self.fit_temperatures:
            betas = fit_two_temperatures(z, y, q, soft=self.soft, threshold=self.threshold)
        else:
            betas = (1.0 / self.t_mis, 1.0 / self.t_cor)
        self.inverse_temperatures.copy_(torch.tensor(betas, dtype=torch.float64))
        quality = detection_quality(q, mispredicted, self.threshold)
        self.quality.copy_(torch.tensor([float(quality[k]) for k in _QUALITY_KEYS], dtype=torch.float64))

    # -------------------------------------------------------------------------------------------- applying
    def _mlp_proba(self, logp: torch.Tensor) -> torch.Tensor:
        net = self.selector_
        dev = next(net.parameters()).device
        out = [net(logp[s:s + _APPLY_CHUNK].to(dev, torch.float32)).float().softmax(1)[:, 1]
               for s in range(0, logp.shape[0], _APPLY_CHUNK)]
        return torch.cat(out).to(logp.device)

    def _conv_proba(self, base_logits: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        net = self.selector_
        dev = next(net.parameters()).device
        x = self._conv_input(base_logits, images).to(dev)
        return net(x).float().softmax(1)[:, 1].to(base_logits.device)

    @torch.no_grad()
    def _mis_proba_from_base(self, z: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        if self.selector == "conv":
            return self._conv_proba(z, images)
        n, c, h, w = z.shape
        logp = z.float().log_softmax(1).permute(0, 2, 3, 1).reshape(-1, c)
        return self._mlp_proba(logp).view(n, h, w)

    @torch.no_grad()
    def mispredicted_proba(self, logits: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """The selector's probability (N, H, W) that the (base-calibrated) prediction of each pixel is wrong."""
        self.check_fitted()
        return self._mis_proba_from_base(self.base(logits, images), images)

    def _calibrate(self, logits, images):
        z = self.base(logits, images)
        q = self._mis_proba_from_base(z, images)
        t_mis, t_cor = self.t_mis_, self.t_cor_
        return apply_selective_scaling(z, q, t_mis, t_cor, soft=self.soft, threshold=self.threshold)

    # -------------------------------------------------------------------------------------------- saving
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The selector's size is known only after fit: build it from the saved class count before loading into it.
        key = prefix + "_num_classes"
        has_selector = any(k.startswith(prefix + "selector_.") for k in state_dict)
        if has_selector and key in state_dict and int(state_dict[key]) > 0:
            self.selector_ = self._new_selector(int(state_dict[key])).to(self._num_classes.device).eval()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"selector={self.selector!r}, soft={self.soft}, fit_temperatures={self.fit_temperatures}, "
                + super().extra_repr())
