"""The book's standard pipeline in three calls: a data set by name, its model (trained or loaded), its logits.

Chapters go through these functions so that every chapter asking for the same data and model under the same profile
gets the same cache entry: a model is trained once and its logits computed once, whichever chapter runs first.

>>> spec = data_spec("synthetic", "val", profile="fast")
>>> spec["size"], spec["n"]
([96, 128], 48)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from segcal_lib.config import Profile, get_profile
from segcal_lib.data.datasets import find_camvid, get_dataset
from segcal_lib.data.shifts import SHIFTS
from segcal_lib.data.synthetic import SPLIT_ALIASES
from segcal_lib.logit_store import LogitStore
from segcal_lib.models import TrainConfig, config_key, train_or_load

__all__ = ["DATASET_NAMES", "data_spec", "get_logits", "get_model", "load_dataset", "train_config"]

DATASET_NAMES = ("synthetic", "camvid")
_SPLIT_SIZE = {"train": "n_train", "val": "n_val", "test": "n_test"}


def _profile(profile: Profile | str | None) -> Profile:
    return profile if isinstance(profile, Profile) else get_profile(profile)


def data_spec(name: str, split: str, profile: Profile | str | None = None, shift: str | None = None,
              severity: int | None = None, **extra: Any) -> dict:
    """A canonical, validated, JSON-serialisable description of a data split at the profile's sizes.

    It names the data in cache keys, so equal data always give equal specs and different data different ones:
    split aliases are resolved (``"cal"`` -> ``"val"``); a shift needs a severity in 1..5 (and a severity a shift);
    a CamVid spec records the data root (:func:`~segcal_lib.data.datasets.find_camvid`) and a fingerprint of the
    selected files' names and sizes, so a moved, re-split or edited copy never reuses another copy's models.

    Synthetic scenes take the profile's image size and image counts; CamVid takes the profile's image size and all
    images of the split (``extra`` may narrow it, e.g. ``domain="dusk"`` or ``n=50``). ``shift`` and ``severity``
    name a shift or corruption of the images (:func:`segcal_lib.data.list_shifts`) for either data set.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"name must be one of {DATASET_NAMES}, got {name!r}")
    split = SPLIT_ALIASES.get(split, split)
    if split not in _SPLIT_SIZE:
        raise ValueError(f"split must be one of {sorted(_SPLIT_SIZE) + sorted(SPLIT_ALIASES)}, got {split!r}")
    p = _profile(profile)
    spec = {"name": name, "split": split, "size": list(p.image_size)}
    if name == "synthetic":
        spec.update(n=getattr(p, _SPLIT_SIZE[split]), seed=0)
    if shift is not None or severity is not None:  # a shift or corruption of the images, for any data set
        if shift not in SHIFTS:
            raise ValueError(f"shift must be one of {list(SHIFTS)} when a severity is given, got {shift!r}")
        if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
            raise ValueError(f"severity must be an int in 1..5 with shift={shift!r}, got {severity!r} "
                             f"(for the unshifted data leave both out)")
        spec.update(shift=shift, severity=severity)
    spec.update(extra)
    if name == "camvid":
        root = find_camvid() if "root" not in spec else Path(spec["root"]).expanduser()
        if root is None:
            raise FileNotFoundError("CamVid was not found: set SEGCAL_CAMVID to its folder or run "
                                    "`python data_scripts/download_camvid.py`")
        spec["root"] = str(root.resolve())
        fp = load_dataset(spec).fingerprint()
        spec["files"] = f"{fp['n_files']}:{fp['files']}"
    return spec


def load_dataset(spec: dict) -> Dataset:
    """The data set a :func:`data_spec` describes."""
    kw = {k: v for k, v in spec.items() if k not in ("name", "split", "files")}
    if "size" in kw:
        kw["size"] = tuple(kw["size"])
    return get_dataset(spec["name"], spec["split"], **kw)


def train_config(dataset_name: str = "synthetic", profile: Profile | str | None = None, **overrides) -> TrainConfig:
    """The training configuration of the profile's main model on the ``train`` split of ``dataset_name``."""
    p = _profile(profile)
    spec = data_spec(dataset_name, "train", p)
    num_classes = load_dataset(spec).num_classes
    return TrainConfig.from_profile(p, num_classes=num_classes, data=spec, **overrides)


def get_model(dataset_name: str = "synthetic", profile: Profile | str | None = None, *, progress: bool = True,
              **overrides) -> tuple[nn.Module, TrainConfig]:
    """The profile's main model for ``dataset_name``, trained or loaded from the cache; returns (model, config).

    ``overrides`` change fields of the :class:`~segcal_lib.models.TrainConfig` (e.g. ``model="resnet18_fpn"``).
    """
    cfg = train_config(dataset_name, profile, **overrides)
    model = train_or_load(cfg, lambda: load_dataset(cfg.data), progress=progress)
    return model, cfg


def get_logits(model: nn.Module, cfg: TrainConfig, split: str, profile: Profile | str | None = None,
               shift: str | None = None, severity: int | None = None, inference: dict | None = None, *,
               progress: bool = True, **extra: Any) -> LogitStore:
    """Logits and labels of ``model`` on a split of the data it was trained on, computed once and stored.

    Parameters
    ----------
    model, cfg : as returned by :func:`get_model`.
    split : "val" (the calibration split), "test", or "train".
    shift, severity : a named shift or corruption of the images (:func:`segcal_lib.data.list_shifts`), 1..5.
    inference : keyword arguments of :func:`segcal_lib.inference.predict_logits` (whole image by default).
    extra : passed on to :func:`data_spec` (e.g. ``domain="dusk"`` for CamVid).
    """
    spec = data_spec(cfg.data["name"], split, profile, shift, severity, **extra)
    return LogitStore.build_or_load(config_key(cfg), spec, spec["split"], model, lambda: load_dataset(spec),
                                    inference_kwargs=inference or {}, progress=progress)
