"""Local temperature scaling (Ding, Liu, Xiong, Shi, ICCV 2021): a small conv net predicts a temperature per pixel.

``z'(x) = z(x) / T(x)`` with ``T(x) = softplus(f(x) + s) + t_min > 0``, where ``f`` is a small fully convolutional
net that sees the softmax probabilities and (by default) the image around ``x``. Its last layer starts at zero and the
offset ``s`` is set so that the starting T equals the temperature-scaling fit: LTS starts where TS ends and is trained
from there by the NLL of the calibration pixels (Adam, float32). A positive per-pixel temperature keeps every pixel's
ranking of the classes, so the arg-max and mIoU are preserved.

``lts_image`` is the image-level variant (Ding et al.'s image-based temperature scaling): the same conv features,
averaged over the image, give one temperature per image.

**What the fit reads.** LTS needs whole neighbourhoods, so it does not fit on a pixel sample: each calibration image
contributes one random crop (``crop_size``, the whole image when smaller), and at most ``max_pixels // crop area``
crops are kept (a uniform sample of images, drawn while streaming), in float16. Ignore pixels are left out of the loss
but, as at test time, they are part of their neighbours' input; ``lts_image`` averages its features over every pixel
of an image, ignored or not, because at test time it cannot know which pixels a label would ignore.

**Images.** A :class:`~segcal_lib.logit_store.LogitStore` holds logits and labels only; fit and apply with images
through :func:`segcal_lib.pipeline.with_images` (or any iterable of ``(logits, labels, images)`` batches), or pass
``use_images=False`` to predict the temperature from the logits alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from segcal_lib.calibrators.base import Calibrator
from segcal_lib.calibrators.registry import register_calibrator
from segcal_lib.calibrators.temperature import fit_inverse_temperature
from segcal_lib.config import get_device

__all__ = ["ImageTemperatureScaling", "LocalTemperatureScaling"]


class _TemperatureNet(nn.Module):
    """Two 3x3 conv layers, then a zero-initialised head: per pixel (1x1 conv) or per image (mean, then linear)."""

    def __init__(self, in_channels: int, hidden: int, image_level: bool):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(hidden, 1) if image_level else nn.Conv2d(hidden, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.image_level = image_level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        if self.image_level:
            return self.head(h.mean((2, 3)))[:, :, None, None]  # (N, 1, 1, 1)
        return self.head(h)  # (N, 1, H, W)


@register_calibrator("lts", "local_ts")
class LocalTemperatureScaling(Calibrator):
    """Local temperature scaling: a positive temperature per pixel from a small conv net, trained by NLL.

    Parameters
    ----------
    use_images : bool, default True; feed the image (N, 3, H, W) in [0, 1] beside the probabilities.
    hidden : int, default 16; channels of the conv layers.
    steps : int, default 150; Adam steps. batch_size : int, default 8; crops per step. lr : float, default 3e-3.
    crop_size : int, default 128; side of the random crop taken from each calibration image.
    t_min : float, default 0.05; the smallest temperature the net can output.
    device : str or None, default None; where to train (``segcal_lib.config.get_device()`` when None). The fitted
        calibrator is moved back to the device it was on.
    (and those of :class:`~segcal_lib.calibrators.base.Calibrator`)

    Attributes
    ----------
    net : the temperature net (built by ``fit``). offset_ : float32 scalar, the softplus offset s.
    init_temperature_ : float64 scalar, the temperature-scaling fit the net starts from.
    loss_history_ : list of float, the training loss per step (not saved in ``state_dict``).
    """

    needs_images = True
    _image_level = False

    def __init__(self, use_images: bool = True, hidden: int = 16, steps: int = 150, batch_size: int = 8,
                 lr: float = 3e-3, crop_size: int = 128, t_min: float = 0.05, device: str | None = None, **kw):
        super().__init__(**kw)
        for name, value in (("hidden", hidden), ("steps", steps), ("batch_size", batch_size),
                            ("crop_size", crop_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (lr > 0 and t_min > 0):
            raise ValueError(f"lr and t_min must be > 0, got lr={lr!r}, t_min={t_min!r}")
        self.use_images, self.hidden, self.steps, self.batch_size = use_images, hidden, steps, batch_size
        self.lr, self.crop_size, self.t_min, self.device = lr, crop_size, t_min, device
        self.needs_images = use_images
        self.net: _TemperatureNet | None = None
        self.register_buffer("offset_", torch.tensor(0.0))
        self.register_buffer("init_temperature_", torch.tensor(math.nan, dtype=torch.float64))
        self.loss_history_: list[float] = []

    # ------------------------------------------------------------------------------------------------ the model
    def _build(self, num_classes: int) -> None:
        in_channels = num_classes + (3 if self.use_images else 0)
        self.net = _TemperatureNet(in_channels, self.hidden, self._image_level).to(self.offset_.device)

    def _features(self, logits: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        probs = logits.float().softmax(1)
        if not self.use_images:
            return probs
        if images is None or images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != logits.shape[2:] \
                or images.shape[0] != logits.shape[0]:
            raise ValueError(f"images must have shape {(logits.shape[0], 3, *logits.shape[2:])} to go with logits "
                             f"{tuple(logits.shape)}, got {None if images is None else tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")
        return torch.cat([probs, images.to(probs) - 0.5], 1)

    def temperature(self, logits: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """The predicted temperatures: (N, 1, H, W) for ``lts``, (N, 1, 1, 1) for ``lts_image``."""
        self.check_fitted()
        return F.softplus(self.net(self._features(logits, images)) + self.offset_) + self.t_min

    def _calibrate(self, logits, images):
        return logits / self.temperature(logits, images).to(logits.dtype)

    # ------------------------------------------------------------------------------------------------ fitting
    def _collect_crops(self, batches, gen: torch.Generator):
        """A uniform sample of images (bottom-k on random keys), one random crop each, kept in float16."""
        kept: list[tuple[float, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        n_keep, num_classes = None, None
        for logits, labels, images in batches:
            if self.use_images:
                self._features(logits[:1], None if images is None else images[:1])  # shape check only
            num_classes = logits.shape[1]
            h, w = logits.shape[2:]
            ch, cw = min(self.crop_size, h), min(self.crop_size, w)
            n_keep = n_keep or max(1, self.max_pixels // (ch * cw))
            for i in range(len(logits)):
                key = float(torch.rand(1, generator=gen))
                y0 = int(torch.randint(h - ch + 1, (1,), generator=gen))
                x0 = int(torch.randint(w - cw + 1, (1,), generator=gen))
                lab = labels[i, y0:y0 + ch, x0:x0 + cw].long().cpu()
                if not (lab != self.ignore_index).any():
                    continue  # nothing to learn from
                img = images[i, :, y0:y0 + ch, x0:x0 + cw].half().cpu() if self.use_images else None
                kept.append((key, logits[i, :, y0:y0 + ch, x0:x0 + cw].half().cpu(), lab, img))
                if len(kept) > n_keep:
                    kept.remove(max(kept, key=lambda t: t[0]))
        if not kept:
            raise ValueError("no valid (non-ignored) pixel to fit on")
        kept.sort(key=lambda t: t[0])
        return kept, num_classes

    def _fit_batches(self, batches) -> int:
        gen = torch.Generator().manual_seed(self.seed)
        crops, num_classes = self._collect_crops(batches, gen)
        z = [c[1].float() for c in crops]
        y = [c[2] for c in crops]
        pairs = [(zz.flatten(1)[:, yy.flatten() != self.ignore_index], yy[yy != self.ignore_index])
                 for zz, yy in zip(z, y, strict=True)]
        beta = fit_inverse_temperature(torch.cat([p[0] for p in pairs], 1).T, torch.cat([p[1] for p in pairs]))
        self.init_temperature_.fill_(1.0 / beta)
        start = max(1.0 / beta - self.t_min, 1e-3)
        self.offset_.fill_(math.log(math.expm1(start)))  # softplus(offset) + t_min = the TS temperature
        torch.manual_seed(self.seed)  # the net's initialisation
        self._build(num_classes)
        home = self.offset_.device
        device = torch.device(self.device) if self.device is not None else get_device()
        self.to(device)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        self.loss_history_ = []
        with torch.enable_grad():
            for _ in tqdm(range(self.steps), disable=not self.progress, desc=f"train {self.registry_name}",
                          leave=False):
                idx = torch.randperm(len(crops), generator=gen)[:self.batch_size].tolist()
                size = min(z[i].shape[1] for i in idx), min(z[i].shape[2] for i in idx)
                zb = torch.stack([z[i][:, :size[0], :size[1]] for i in idx]).to(device)
                yb = torch.stack([y[i][:size[0], :size[1]] for i in idx]).to(device)
                ib = (torch.stack([crops[i][3][:, :size[0], :size[1]] for i in idx]).float().to(device)
                      if self.use_images else None)
                t = F.softplus(self.net(self._features(zb, ib)) + self.offset_) + self.t_min
                loss = F.cross_entropy(zb / t, yb, ignore_index=self.ignore_index)
                opt.zero_grad()
                loss.backward()
                opt.step()
                self.loss_history_.append(float(loss.detach()))
        self.to(home)
        self.net.eval()
        return num_classes

    # ------------------------------------------------------------------------------------------------ saving
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The net's input width depends on the class count, known after fit: build it from the saved weights.
        key = prefix + "net.trunk.0.weight"
        if key in state_dict:
            extra = 3 if self.use_images else 0
            self._build(state_dict[key].shape[1] - extra)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@register_calibrator("lts_image", "ibts")
class ImageTemperatureScaling(LocalTemperatureScaling):
    """Image-level variant of :class:`LocalTemperatureScaling`: one temperature per image from pooled conv features.

    Same parameters and attributes as :class:`LocalTemperatureScaling`.
    """

    _image_level = True
