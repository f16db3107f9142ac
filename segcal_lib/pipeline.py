"""The book's standard pipeline in three calls: a data set by name, its model (trained or loaded), its logits.

Chapters go through these functions so that every chapter asking for the same data and model under the same profile
gets the same cache entry: a model is trained once and its logits computed once, whichever chapter runs first.

>>> spec = data_spec("synthetic", "val", profile="fast")
>>> spec["size"], spec["n"]
([96, 128], 48)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset, Subset

from segcal_lib.calibrators.evaluate import ImageBatches
from segcal_lib.config import Profile, get_profile
from segcal_lib.data.datasets import find_camvid, get_dataset
from segcal_lib.data.shifts import SHIFTS
from segcal_lib.data.synthetic import SPLIT_ALIASES
from segcal_lib.logit_store import LogitStore
from segcal_lib.models import TrainConfig, config_key, train_or_load

__all__ = ["DATASET_NAMES", "data_spec", "default_crop_size", "get_logits", "get_model", "load_dataset",
           "train_config", "with_images"]

DATASET_NAMES = ("synthetic", "camvid", "folder")
_SPLIT_SIZE = {"train": "n_train", "val": "n_val", "test": "n_test"}
# Fields of a spec that are not constructor arguments: the split (given separately) and the data's identity.
_NOT_ARGS = ("name", "split", "identity", "files")


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
    images of the split (``extra`` may narrow it, e.g. ``domain="dusk"`` or ``n=50``). A folder (``extra``: ``root``
    and any other :class:`~segcal_lib.data.folder.FolderDataset` argument) is resized to fit the profile's image size
    keeping its aspect ratio (``resize="pad:HxW"``; pass ``resize=`` to change it) and gets an ``identity``: a hash of
    its files' names and sizes, the split's members and the class list, so that the cache keys of models and logits
    change whenever the data or the split do. ``shift`` and ``severity`` name a
    shift or corruption of the images (:func:`segcal_lib.data.list_shifts`) for any data set.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"name must be one of {DATASET_NAMES}, got {name!r}")
    split = SPLIT_ALIASES.get(split, split)
    if split not in _SPLIT_SIZE and name != "folder":  # a folder's splits are named by its splits file
        raise ValueError(f"split must be one of {sorted(_SPLIT_SIZE) + sorted(SPLIT_ALIASES)}, got {split!r}")
    p = _profile(profile)
    if name == "folder":
        if shift is not None:
            raise ValueError("shift applies to synthetic scenes, not to a folder")
        if "root" not in extra and "image_dir" not in extra:
            raise ValueError("a folder's data_spec needs root= (or image_dir= and label_dir=)")
        spec = {"name": name, "split": split, "resize": f"pad:{p.image_size[0]}x{p.image_size[1]}"}
        spec.update({k: str(Path(v).expanduser().resolve()) if k in ("root", "image_dir", "label_dir") else v
                     for k, v in extra.items()})
        spec["identity"] = load_dataset(spec, check=False).identity()
        return spec
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


def load_dataset(spec: dict, check: bool = True) -> Dataset:
    """The data set a :func:`data_spec` describes.

    For a folder, ``check`` compares the files with the spec's ``identity`` and raises ``ValueError`` when they
    changed (a model or logits keyed by the old files must not be paired with the new ones).
    """
    kw = {k: v for k, v in spec.items() if k not in _NOT_ARGS}
    if "size" in kw:
        kw["size"] = tuple(kw["size"])
    ds = get_dataset(spec["name"], spec["split"], **kw)
    if check and spec.get("identity") is not None and ds.identity() != spec["identity"]:
        raise ValueError(f"the folder's files or splits changed since this spec was made (identity "
                         f"{ds.identity()} != {spec['identity']}); make the spec again with data_spec(...)")
    return ds


def default_crop_size(image_size: tuple[int, int], profile: Profile) -> int:
    """A training crop relative to the image: the profile's crop-to-image ratio (e.g. 64/96 in ``fast``) times the
    image's shorter side, rounded down to a multiple of 8 (at least 32, at most the profile's crop)."""
    ratio = profile.crop_size / min(profile.image_size)
    return max(32, min(profile.crop_size, int(ratio * min(image_size)) // 8 * 8))


def train_config(dataset_name: str = "synthetic", profile: Profile | str | None = None, *,
                 data: Mapping[str, Any] | None = None, **overrides) -> TrainConfig:
    """The training configuration of the profile's main model on the ``train`` split of ``dataset_name``.

    ``data`` holds extra data-spec fields (for a folder: ``root=`` and optionally ``resize=``, ``classes=``, ...).
    A folder's crop size defaults to :func:`default_crop_size` of its (resized) images.
    """
    p = _profile(profile)
    spec = data_spec(dataset_name, "train", p, **dict(data or {}))
    ds = load_dataset(spec)
    if getattr(ds, "num_classes", None) is None:
        raise ValueError(f"the {dataset_name} data set does not say how many classes it has: give a classes file "
                         f"(one name per line) or num_classes")
    if dataset_name == "folder" and "crop_size" not in overrides:
        overrides["crop_size"] = default_crop_size(tuple(ds[0].label.shape), p)
    return TrainConfig.from_profile(p, num_classes=ds.num_classes, data=spec, **overrides)


def get_model(dataset_name: str = "synthetic", profile: Profile | str | None = None, *, progress: bool = True,
              verbose: bool = True, data: Mapping[str, Any] | None = None,
              **overrides) -> tuple[nn.Module, TrainConfig]:
    """The profile's main model for ``dataset_name``, trained or loaded from the cache; returns (model, config).

    ``data`` holds extra data-spec fields (a folder needs ``root=``); ``overrides`` change fields of the
    :class:`~segcal_lib.models.TrainConfig` (e.g. ``model="resnet18_fpn"``). When the model is trained, its training
    curves (loss and mIoU on the whole images of the ``val`` split and of as many ``train`` images) are recorded in
    ``model.train_meta["history"]["curves"]``. ``verbose`` prints one line saying whether it was loaded or trained.

    >>> model, cfg = get_model("folder", data={"root": "my_data"})  # with my_data/splits.json  # doctest: +SKIP
    """
    cfg = train_config(dataset_name, profile, data=data, **overrides)

    def eval_sets():
        train = load_dataset(cfg.data)
        try:
            val = load_dataset(data_spec(dataset_name, "val", profile, **dict(data or {})))
        except ValueError:  # a folder split without a val part: curves on training images only
            return {"train": Subset(train, range(min(16, len(train))))}
        return {"train": Subset(train, range(min(len(val), len(train)))), "val": val}

    model = train_or_load(cfg, lambda: load_dataset(cfg.data), progress=progress, verbose=verbose,
                          eval_sets=eval_sets)
    return model, cfg


def get_logits(model: nn.Module, cfg: TrainConfig, split: str, profile: Profile | str | None = None,
               shift: str | None = None, severity: int | None = None, inference: dict | None = None, *,
               progress: bool = True, verbose: bool = True, **extra: Any) -> LogitStore:
    """Logits and labels of ``model`` on a split of the data it was trained on, computed once and stored.

    Parameters
    ----------
    model, cfg : as returned by :func:`get_model`.
    split : "val" (the calibration split), "test", or "train".
    shift, severity : a named shift or corruption of the images (:func:`segcal_lib.data.list_shifts`), 1..5.
    inference : keyword arguments of :func:`segcal_lib.inference.predict_logits` (whole image by default).
    progress : a progress bar while computing.
    verbose : print one line saying whether the logits were loaded or computed (default True).
    extra : passed on to :func:`data_spec` (e.g. ``domain="dusk"`` for CamVid). A folder's root, resize and class
        settings are taken from ``cfg.data`` (the data the model was trained on) unless given here.
    """
    if cfg.data["name"] == "folder":
        extra = {**{k: v for k, v in cfg.data.items() if k not in _NOT_ARGS}, **extra}
    spec = data_spec(cfg.data["name"], split, profile, shift, severity, **extra)
    return LogitStore.build_or_load(config_key(cfg), spec, spec["split"], model, lambda: load_dataset(spec),
                                    inference_kwargs=inference or {}, progress=progress, verbose=verbose)


def with_images(store: LogitStore, batch_size: int = 8) -> ImageBatches:
    """A store's ``(logits, labels, images)`` batches, the images read again from the data set the store names.

    Calibrators that look at the image (local temperature scaling, ensembles) fit and apply on these; the store keeps
    logits and labels only. Each pass checks that the data set's labels equal the stored ones.
    """
    spec = store.meta.get("data_spec")
    if not isinstance(spec, dict):
        raise ValueError(f"store must record the data spec it was computed on (meta['data_spec']), as stores made by "
                         f"get_logits do; {store!r} has none")
    return ImageBatches(store, load_dataset(spec), batch_size=batch_size)
