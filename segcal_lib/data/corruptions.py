"""Common image corruptions (blur, Gaussian noise, brightness, contrast, JPEG) at severity 0 (identity) to 5.

The five follow ImageNet-C's definitions and severity tables (Hendrycks and Dietterich, ICLR 2019), so a reader
can relate our severities to theirs; blur's width is given relative to the image height (ImageNet-C's 224 pixels),
so that a severity looks the same at the fast profile's 96 rows and the full profile's 360. They are registered in
the one registry of :mod:`segcal_lib.data.shifts` (kind ``"corruption"``): :func:`~segcal_lib.data.shifts.apply_shift`,
the synthetic scenes, :class:`~segcal_lib.data.shifts.ShiftedDataset` and the pipeline take them by name, with the
shifts' conventions (float RGB in [0, 1], (3, H, W) or (N, 3, H, W), same shape and dtype out, deterministic by
seed, severity 0 an unchanged copy, outputs clipped to [0, 1] where the model overshoots).

>>> import torch
>>> img = torch.rand(3, 8, 8)
>>> jpeg(img, severity=5).shape, contrast(img, severity=0).equal(img)
(torch.Size([3, 8, 8]), True)
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from segcal_lib.data.shifts import MAX_SEVERITY, apply_shift, register_shift

__all__ = ["CORRUPTIONS", "blur", "brightness", "contrast", "gaussian_noise", "jpeg"]

# ImageNet-C's parameters for severities 1..5.
BLUR_SIGMA_224 = (1.0, 2.0, 3.0, 4.0, 6.0)  # Gaussian std in pixels of a 224-pixel-high image
NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)
BRIGHTNESS_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to the HSV value channel
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)  # distance to the image mean is multiplied by it
JPEG_QUALITY = (80, 65, 58, 50, 40)


def _level(s: float) -> int:
    """Index into a severity table from ``s = severity / 5``."""
    return round(s * MAX_SEVERITY) - 1


def _gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def _blur(x: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    # Separable Gaussian; replicated borders (valid at any image size) keep every output a convex combination of
    # inputs, so the range stays [0, 1] without clipping.
    sigma = BLUR_SIGMA_224[_level(s)] * x.shape[-2] / 224
    k = _gaussian_kernel(sigma, x.dtype, x.device)
    r = k.numel() // 2
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w).clamp(0, 1)


def _gaussian_noise(x: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    # Additive white noise of a fixed std, independent of the signal (unlike the "noise" shift's shot noise).
    z = torch.randn(x.shape, generator=gen, dtype=torch.float32).to(x)
    return (x + NOISE_STD[_level(s)] * z).clamp(0, 1)


def _brightness(x: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    # HSV value + c with hue and saturation kept: scaling RGB by V'/V does exactly that (V = max channel). Black
    # (V = 0) has no hue and becomes the grey V' = c, as the HSV round trip gives.
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + BRIGHTNESS_SHIFT[_level(s)]).clamp(max=1)
    scaled = x * (v_new / v.clamp_min(1e-12))
    return torch.where(v > 0, scaled, v_new.expand_as(x)).clamp(0, 1)


def _contrast(x: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    # Pull every value toward the image's mean (over pixels and channels); a convex combination, so no clipping.
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (x - mean) * CONTRAST_FACTOR[_level(s)]


def _jpeg(x: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    # A real JPEG round trip through Pillow (8-bit, its default 4:2:0 chroma subsampling): blocking and ringing as
    # a camera or a web pipeline produces them.
    quality = JPEG_QUALITY[_level(s)]
    out = []
    for img in (x.detach().cpu().double().clamp(0, 1) * 255).round().to(torch.uint8):
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).cpu().numpy()).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as im:
            out.append(torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255))
    return torch.stack(out).to(x)


def blur(image: torch.Tensor, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """Gaussian blur (defocus), std 1, 2, 3, 4, 6 pixels per 224 rows. See :func:`.shifts.apply_shift`."""
    return apply_shift(image, "blur", severity, seed)


def gaussian_noise(image: torch.Tensor, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """Additive Gaussian noise, std 0.08 to 0.38, clipped to [0, 1]. See :func:`~segcal_lib.data.shifts.apply_shift`."""
    return apply_shift(image, "gaussian_noise", severity, seed)


def brightness(image: torch.Tensor, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """HSV value raised by 0.1 to 0.5 (hue and saturation kept). See :func:`~segcal_lib.data.shifts.apply_shift`."""
    return apply_shift(image, "brightness", severity, seed)


def contrast(image: torch.Tensor, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """Contrast reduced to 40% down to 5% around the image mean. See :func:`~segcal_lib.data.shifts.apply_shift`."""
    return apply_shift(image, "contrast", severity, seed)


def jpeg(image: torch.Tensor, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """JPEG round trip at quality 80, 65, 58, 50, 40. See :func:`~segcal_lib.data.shifts.apply_shift`."""
    return apply_shift(image, "jpeg", severity, seed)


#: The corruptions, by registry name.
CORRUPTIONS = {"blur": blur, "gaussian_noise": gaussian_noise, "brightness": brightness, "contrast": contrast,
               "jpeg": jpeg}
_IMPL = {"blur": _blur, "gaussian_noise": _gaussian_noise, "brightness": _brightness, "contrast": _contrast,
         "jpeg": _jpeg}
for _name, _fn in CORRUPTIONS.items():
    register_shift(_name, _IMPL[_name], _fn, kind="corruption")
