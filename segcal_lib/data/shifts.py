"""Named domain shifts of images: dusk, fog, colour, texture and sensor noise, each at severity 0 (identity) to 5.

This module also holds the one registry of image transforms by name (:data:`SHIFTS`, :func:`list_shifts`,
:func:`register_shift`): the common corruptions of :mod:`segcal_lib.data.corruptions` (blur, Gaussian noise,
brightness, contrast, JPEG) register themselves in it, so that :func:`apply_shift`, the synthetic scenes,
:class:`ShiftedDataset` and the pipeline take either kind by name.

A shift changes only the image, never the label, so a model's predictions on shifted data can be scored against the
same ground truth. Every shift works on an image (3, H, W) or a batch (N, 3, H, W) of float RGB in [0, 1], synthetic or
real (CamVid), and is deterministic given ``seed``. Results are kept in [0, 1]: where a shift's physical model
overshoots (hue rotation out of gamut, sensor noise) the output is clipped, as a camera would saturate.

>>> import torch
>>> img = torch.rand(3, 8, 8)
>>> apply_shift(img, "fog", severity=3).shape
torch.Size([3, 8, 8])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from segcal_lib.data.base import Sample

MAX_SEVERITY = 5


def _as_batch(image: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Validate ``image`` and return it as a float batch (N, 3, H, W) plus whether the input had no batch dimension."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a torch.Tensor (3, H, W) or (N, 3, H, W), got {type(image).__name__}")
    if not image.is_floating_point():
        raise ValueError(f"image must be a float tensor with values in [0, 1], got dtype {image.dtype}")
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"image must have shape (3, H, W) or (N, 3, H, W), got {tuple(image.shape)}")
    if image.numel() and (image.min() < 0 or image.max() > 1):
        raise ValueError(f"image values must be in [0, 1], got range [{image.min():.3g}, {image.max():.3g}]")
    single = image.dim() == 3
    return (image.unsqueeze(0) if single else image), single


def _check_severity(severity: int) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= MAX_SEVERITY:
        raise ValueError(f"severity must be an int in 0..{MAX_SEVERITY} (0 = identity), got {severity!r}")
    return severity


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _dusk(x: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    # Dusk frames (CamVid 0001TP) are darker, flatter and bluish: contrast is reduced around each image's mean first
    # (mean kept), then a gamma > 1 and a gain < 1 darken, and the red/green channels lose more than blue.
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * (1.0 - 0.35 * s)
    x = x.clamp(0, 1) ** (1.0 + 0.6 * s)
    cast = torch.tensor([1.0 - 0.25 * s, 1.0 - 0.12 * s, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x * (1.0 - 0.5 * s) * cast


_AIRLIGHT = (0.78, 0.80, 0.82)


def _fog(x: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    # Koschmieder's haze model I = J t + A (1 - t), t = exp(-beta d). Street images have no depth map, so the depth
    # proxy grows from the bottom rows (near road) to the top rows (horizon, sky): d = 0.3 at the bottom, 1 at the top.
    h = x.shape[-2]
    rows = (torch.arange(h, dtype=x.dtype, device=x.device) + 0.5) / h
    depth = (1.0 - 0.7 * rows).view(1, 1, h, 1)
    t = torch.exp(-2.25 * s * depth)
    air = torch.tensor(_AIRLIGHT, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x * t + air * (1.0 - t)


def _hue_rotation(angle: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """3x3 matrix rotating RGB about the grey axis by ``angle`` radians (Rodrigues); 120 degrees permutes R->G->B."""
    k = torch.full((3,), 1.0 / math.sqrt(3.0), dtype=torch.float64)
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64)
    rot = (math.cos(angle) * torch.eye(3, dtype=torch.float64) + math.sin(angle) * cross
           + (1 - math.cos(angle)) * torch.outer(k, k))
    return rot.to(dtype=dtype, device=device)


def _colour(x: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    # Hue rotation by 30 degrees per severity level (150 at 5): greys stay grey, every chromatic colour is remapped.
    rot = _hue_rotation(math.radians(150.0 * s), x.dtype, x.device)
    return torch.einsum("ij,njhw->nihw", rot, x).clamp(0, 1)


def _smooth_noise(shape: tuple[int, ...], cell: int, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-std value noise of ``shape`` with blobs about ``cell`` pixels wide."""
    n, c, h, w = shape
    grid = torch.randn(n, c, max(h // cell, 2), max(w // cell, 2), generator=gen, dtype=torch.float32)
    field = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False).to(like)
    return (field - field.mean(dim=(2, 3), keepdim=True)) / field.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)


def _texture(x: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    # Replace a growing share of the local texture (image minus its 5x5 local mean) by a foreign grey texture:
    # shapes and colours stay, the surface statistics a CNN keys on change.
    low = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    pattern = _smooth_noise((x.shape[0], 1, *x.shape[-2:]), cell=3, gen=gen, like=x)
    return (low + (1.0 - 0.75 * s) * (x - low) + 0.1 * s * pattern).clamp(0, 1)


def _noise(x: torch.Tensor, s: float, gen: torch.Generator) -> torch.Tensor:
    # Sensor noise: shot noise with variance proportional to the signal plus signal-independent read noise,
    # Gaussian approximation of Poisson-Gaussian noise.
    shot, read = 0.02 * s, 0.03 * s
    z = torch.randn(x.shape, generator=gen, dtype=torch.float32).to(x)
    return (x + torch.sqrt(shot * x + read**2) * z).clamp(0, 1)


_IMPLEMENTATIONS: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "dusk": _dusk, "fog": _fog, "colour": _colour, "texture": _texture, "noise": _noise,
}
#: The kind of each registered transform: "shift" (this module) or "corruption" (:mod:`.corruptions`).
SHIFT_KINDS: dict[str, str] = dict.fromkeys(_IMPLEMENTATIONS, "shift")


def apply_shift(image: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Apply the named shift to an image or a batch.

    Parameters
    ----------
    image : float tensor (3, H, W) or (N, 3, H, W), RGB in [0, 1].
    name : one of :func:`list_shifts` (the shifts "dusk", "fog", "colour", "texture", "noise" and the corruptions of
        :mod:`segcal_lib.data.corruptions`).
    severity : int 0..5; 0 returns an unchanged copy, 5 is the strongest.
    seed : seeds the random parts (e.g. "texture", "noise"); the others are deterministic anyway.

    Returns
    -------
    Tensor of the same shape, dtype and device as ``image``, values in [0, 1].

    Raises
    ------
    ValueError : unknown ``name``, severity outside 0..5, or an image of the wrong shape, dtype or range.
    """
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown shift {name!r}; known shifts: {sorted(_IMPLEMENTATIONS)}")
    severity = _check_severity(severity)
    gen = _generator(seed)
    batch, single = _as_batch(image)
    if severity == 0:
        return image.clone()
    out = _IMPLEMENTATIONS[name](batch, severity / MAX_SEVERITY, gen).to(image.dtype)
    return out[0] if single else out


def dusk(image: torch.Tensor, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """Low light: lower contrast, darker (gamma and gain), bluish cast. See :func:`apply_shift`."""
    return apply_shift(image, "dusk", severity, seed)


def fog(image: torch.Tensor, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """Haze toward a grey airlight, denser toward the top of the image (far away). See :func:`apply_shift`."""
    return apply_shift(image, "fog", severity, seed)


def colour(image: torch.Tensor, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """Hue rotation by 30 degrees per severity level. See :func:`apply_shift`."""
    return apply_shift(image, "colour", severity, seed)


def texture(image: torch.Tensor, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """Local texture replaced by a foreign fine-grained pattern. See :func:`apply_shift`."""
    return apply_shift(image, "texture", severity, seed)


def noise(image: torch.Tensor, severity: int = 3, seed: int = 0) -> torch.Tensor:
    """Shot plus read sensor noise. See :func:`apply_shift`."""
    return apply_shift(image, "noise", severity, seed)


#: Registry of the named shifts and corruptions: name -> ``fn(image, severity=3, seed=0)``.
SHIFTS: dict[str, Callable[..., torch.Tensor]] = {
    "dusk": dusk, "fog": fog, "colour": colour, "texture": texture, "noise": noise,
}


def register_shift(name: str, implementation: Callable[[torch.Tensor, float, torch.Generator], torch.Tensor],
                   function: Callable[..., torch.Tensor], kind: str = "shift") -> None:
    """Add a transform to the registry, so that :func:`apply_shift` and the data sets take it by name.

    Parameters
    ----------
    name : the registry name (must be new).
    implementation : ``impl(batch (N, 3, H, W), s, generator) -> batch`` with ``s = severity / 5`` in (0, 1];
        :func:`apply_shift` checks the input, handles severity 0 and the batch dimension, and casts back.
    function : the public ``fn(image, severity=3, seed=0)`` listed in :data:`SHIFTS`.
    kind : "shift" or "corruption" (see :func:`list_shifts`).
    """
    if name in _IMPLEMENTATIONS:
        raise ValueError(f"a shift named {name!r} is already registered")
    if kind not in ("shift", "corruption"):
        raise ValueError(f"kind must be 'shift' or 'corruption', got {kind!r}")
    _IMPLEMENTATIONS[name], SHIFTS[name], SHIFT_KINDS[name] = implementation, function, kind


def list_shifts(kind: str | None = None) -> list[str]:
    """Registered names in registration order; ``kind`` "shift" or "corruption" keeps only that kind.

    >>> list_shifts("shift")
    ['dusk', 'fog', 'colour', 'texture', 'noise']
    """
    if kind not in (None, "shift", "corruption"):
        raise ValueError(f"kind must be None, 'shift' or 'corruption', got {kind!r}")
    return [n for n, k in SHIFT_KINDS.items() if kind is None or k == kind]


def image_seed(seed: int, *index: int) -> int:
    """The seed of one image's shift in a data set seeded ``seed``: one independent stream per image.

    ``index`` identifies the image (e.g. its position, or split id and position).
    """
    return int(np.random.SeedSequence([int(seed), *(int(i) for i in index), 7]).generate_state(1)[0])


class ShiftedDataset(Dataset):
    """A data set whose images go through a named shift or corruption; labels, names and attributes are kept.

    Parameters
    ----------
    dataset : any data set of :class:`~segcal_lib.data.base.Sample` (e.g. CamVid).
    shift : a name from :func:`list_shifts`.
    severity : int 1..5 (0 returns the images unchanged).
    seed : seeds the random transforms; image ``i`` uses :func:`image_seed` ``(seed, i)``, so an item is the same
        whichever order it is read in.

    Items are samples with the shifted image and the name ``"<name>+<shift><severity>"``. Other attributes
    (``num_classes``, ``class_names``, ``palette``, ...) are those of ``dataset``.
    """

    def __init__(self, dataset: Dataset, shift: str, severity: int, seed: int = 0):
        if shift not in SHIFTS:
            raise ValueError(f"unknown shift {shift!r}; known shifts: {list_shifts()}")
        self.dataset, self.shift, self.severity = dataset, shift, _check_severity(severity)
        _generator(seed)  # validates seed
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Sample:
        s = self.dataset[i]
        image = apply_shift(s.image, self.shift, self.severity, seed=image_seed(self.seed, i))
        return Sample(image, s.label, f"{s.name}+{self.shift}{self.severity}")

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f"ShiftedDataset({self.dataset!r}, shift={self.shift!r}, severity={self.severity}, seed={self.seed})"
