"""Profiles, device choice, the cache folder and seeding.

Every chapter reads its sizes from :func:`get_profile`, so the same notebook runs in about two minutes on two CPU cores
(``fast``) and at realistic sizes on a GPU (``full``). The profile is chosen by ``SEGCAL_PROFILE`` and otherwise by the
device: ``full`` when a CUDA GPU is present, ``fast`` otherwise (Apple MPS included).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

PROFILE_ENV = "SEGCAL_PROFILE"
CACHE_ENV = "SEGCAL_CACHE"
DEVICE_ENV = "SEGCAL_DEVICE"
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Profile:
    """Sizes a chapter uses; ``fast`` fits two CPU cores, ``full`` a Colab GPU.

    Attributes
    ----------
    name : "fast" or "full".
    image_size : (height, width) of synthetic scenes and of resized real images.
    n_train, n_val, n_test : number of images per split for synthetic data (real data sets use their own splits,
        truncated to these counts when they are smaller than the split).
    crop_size : training crop (square side, pixels).
    train_iters : optimisation steps when training a segmentation model.
    batch_size : training batch size.
    model : default model name of the registry for a chapter's main model.
    lr : peak AdamW learning rate of that model's training.
    scale_range : (min, max) random rescaling of training images.
    pretrained : start the backbone from ImageNet weights when they can be had (random otherwise, with a warning).
    amp : mixed-precision training on CUDA (ignored on a CPU).

    The fast sizes were measured on a 2-core CPU: ``resnet10t_half_fpn`` (1.3 M parameters) trains at about 30 steps/s
    at crop 64, batch 16 on an idle machine, so its 6000 steps take about 3.5 minutes; it reaches test mIoU 0.62 on
    the synthetic scenes (0.57 after 1500 steps, 0.60 after 3000).
    """

    name: str
    image_size: tuple[int, int]
    n_train: int
    n_val: int
    n_test: int
    crop_size: int
    train_iters: int
    batch_size: int
    model: str
    lr: float = 1e-3
    scale_range: tuple[float, float] = (0.5, 2.0)
    pretrained: bool = False
    amp: bool = False


PROFILES: dict[str, Profile] = {
    # 6000 steps (1000 epochs of 96 scenes, about 3.5 minutes on two CPU cores): the validation loss has stopped
    # improving well before the end (analysis.stopped_improving), while the training loss still falls as the network
    # memorises its 96 scenes; chapter 2 shows 1500, 3000 and 6000 steps side by side.
    "fast": Profile("fast", image_size=(96, 128), n_train=96, n_val=48, n_test=48, crop_size=64,
                    train_iters=6000, batch_size=16, model="resnet10t_half_fpn", lr=3e-3, scale_range=(0.75, 1.5)),
    # Not measured here (no GPU): sized for a Colab T4 at roughly 10 steps/s with AMP, i.e. about 10 minutes.
    "full": Profile("full", image_size=(360, 480), n_train=2000, n_val=300, n_test=300, crop_size=320,
                    train_iters=6000, batch_size=8, model="resnet34_fpn", lr=5e-4, scale_range=(0.5, 2.0),
                    pretrained=True, amp=True),
}


def has_gpu() -> bool:
    """True when CUDA is usable: the only accelerator that picks the ``full`` profile by default.

    Apple MPS is not counted: it is used for models when present (:func:`get_device`), but it lacks float64, so the
    meters keep their sums on the CPU there, and the full profile's training was sized for a CUDA GPU with mixed
    precision. Set ``SEGCAL_PROFILE=full`` to run it on MPS anyway.
    """
    return torch.cuda.is_available()


def profile_name() -> str:
    """The active profile name: ``SEGCAL_PROFILE`` if set, else ``full`` on a CUDA GPU and ``fast`` otherwise."""
    name = os.environ.get(PROFILE_ENV, "").strip().lower()
    if not name:
        return "full" if has_gpu() else "fast"
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV} must be one of {sorted(PROFILES)}, got {name!r}")
    return name


def get_profile(name: str | None = None, **overrides) -> Profile:
    """Return the active :class:`Profile` (or the one named), with optional field overrides.

    >>> get_profile("fast").crop_size
    64
    """
    name = name or profile_name()
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {name!r}")
    return replace(PROFILES[name], **overrides) if overrides else PROFILES[name]


def get_device(prefer: str | None = None) -> torch.device:
    """Pick a device: ``prefer`` or ``SEGCAL_DEVICE`` if given, else CUDA, then MPS, then CPU."""
    wanted = prefer or os.environ.get(DEVICE_ENV)
    if wanted:
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cache_dir(*parts: str) -> Path:
    """The cache folder for trained models and logits (``SEGCAL_CACHE``, default ``~/.cache/segcal``), created on use.

    Extra ``parts`` name a sub-folder, e.g. ``cache_dir("models")``.
    """
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "segcal").expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def seed_everything(seed: int = DEFAULT_SEED) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU ``torch.Generator`` seeded the same."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 -- seeds the legacy global RNG that user code may still call
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def describe() -> str:
    """One line a chapter prints first: profile, device, torch version, cache folder."""
    return (f"profile={profile_name()}  device={get_device()}  torch={torch.__version__}  "
            f"threads={torch.get_num_threads()}  cache={cache_dir()}")
