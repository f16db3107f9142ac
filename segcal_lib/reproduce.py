"""The paper's own setting for chapter 11: ADE20K validation, SegFormer B0-B5, the paper's calibrators.

:func:`choose_setting` decides what a run can do: with a GPU, the ``hub`` extra, the pretrained weights and ADE20K
(on disk or downloadable), the real setting; otherwise a stand-in that exercises every step offline: generated scenes
in ADE20K's exact layout and SegFormers of a small random configuration. The chapter prints which one ran and why.

>>> s = choose_setting(max_images=8, prefer_real=False)          # doctest: +SKIP
>>> s.real, s.reason                                               # doctest: +SKIP
(False, 'asked for the offline stand-in')
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from segcal_lib.config import cache_dir, has_gpu
from segcal_lib.data.public import ADE20K
from segcal_lib.data.splits import split_names, subset
from segcal_lib.data.synthetic import SyntheticScenes
from segcal_lib.logit_store import LogitStore

__all__ = ["Setting", "choose_setting", "load_variant", "measure_variant", "split_cal_test",
           "store_bytes", "stores_for_variant", "write_ade20k_fixture"]

VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5")
# Stand-in widths: B0's stage widths (32, 64, 160, 256) scaled down, growing as the real variants grow.
_STANDIN_WIDTHS = {"b0": (8, 16, 32, 64), "b2": (16, 32, 64, 128), "b5": (32, 64, 128, 256)}


@dataclass
class Setting:
    """What this run uses: ``real`` (pretrained SegFormers on ADE20K) or the offline stand-in, and why."""

    real: bool
    reason: str
    root: Path
    variants: tuple[str, ...]
    resize: str | None
    inference: dict
    max_images: int
    timings: dict = field(default_factory=dict)

    def describe(self) -> str:
        what = ("pretrained SegFormer on ADE20K validation" if self.real else
                "OFFLINE STAND-IN: generated scenes in ADE20K's layout, SegFormers with random weights of a "
                "small configuration (their numbers say nothing about the paper's models)")
        return f"{what}; {self.reason}; variants {', '.join(self.variants)}; at most {self.max_images} images"


def write_ade20k_fixture(root: str | os.PathLike, n: int = 12, size: tuple[int, int] = (64, 96), seed: int = 0) -> Path:
    """Write ``n`` synthetic street scenes in ADE20K's layout (``images/validation/*.jpg``, ``annotations/...png``,
    label = train id + 1, 0 = "other"), so the ADE20K reader and everything after it run without the data set."""
    root = Path(root)
    img_dir, lbl_dir = root / "images" / "validation", root / "annotations" / "validation"
    if img_dir.is_dir() and len(list(img_dir.glob("*.jpg"))) == n:
        return root
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    scenes = SyntheticScenes("test", n=n, size=size, seed=seed)
    for k in range(n):
        s = scenes[k]
        stem = f"ADE_val_{k + 1:08d}"
        img = (s.image.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        Image.fromarray(img).save(img_dir / f"{stem}.jpg", quality=95)
        lab = s.label.cpu().numpy().astype(np.int64)
        Image.fromarray(np.where(lab == 255, 0, lab + 1).astype(np.uint8), "L").save(lbl_dir / f"{stem}.png")
    return root


def choose_setting(max_images: int, prefer_real: bool = True, variants: Sequence[str] = VARIANTS) -> Setting:
    """The real setting when a GPU, ``transformers``, the weights and ADE20K are all at hand; else the stand-in.

    ADE20K is looked for in ``$SEGCAL_ADE20K`` or ``<cache>/ade20k`` (``python data_scripts/public_data.py ade20k
    --dest DIR`` puts it there). The real setting evaluates as the paper does: sliding 512x512 windows (stride 341)
    over images resized to fit 512x512 with padding (ignored); the stand-in runs whole small images.
    """
    reason = None
    if not prefer_real:
        reason = "asked for the offline stand-in"
    elif not has_gpu():
        reason = "no GPU in this runtime"
    else:
        try:
            from segcal_lib.models.hub import create_hub_model

            create_hub_model(f"segformer-{variants[0]}-ade20k")
        except (ImportError, OSError) as exc:
            reason = f"pretrained weights unavailable ({str(exc).splitlines()[0][:120]})"
    root = ADE20K.default_root()
    if reason is None:
        try:
            ADE20K(root, "val", n=1, cache=False)
        except (FileNotFoundError, ValueError):
            reason = (f"ADE20K not found in {root} (get it with `python data_scripts/public_data.py ade20k "
                      f"--dest {root}`)")
    if reason is None:
        return Setting(True, "GPU, weights and ADE20K found", root, tuple(variants), "pad:512x512",
                       {"mode": "slide", "crop_size": 512, "stride": 341}, max_images)
    stand_in = tuple(v for v in variants if v in _STANDIN_WIDTHS) or ("b0",)
    n = min(max_images, 12)
    fixture = write_ade20k_fixture(cache_dir("fixtures") / f"ade20k-{n}", n=n)
    return Setting(False, reason, fixture, stand_in, None, {}, n)


def load_variant(setting: Setting, variant: str):
    """The pretrained SegFormer ``variant`` (real setting) or a random stand-in of growing width (150 classes)."""
    from segcal_lib.models.hub import create_hub_model, random_segformer

    if setting.real:
        return create_hub_model(f"segformer-{variant}-ade20k")
    return random_segformer(150, hidden_sizes=_STANDIN_WIDTHS[variant], decoder_hidden_size=32, seed=0)


def split_cal_test(setting: Setting, seed: int = 0):
    """ADE20K validation (at most ``max_images``) split in two seeded halves: (calibration, test) data sets."""
    ds = ADE20K(setting.root, "val", resize=setting.resize, n=setting.max_images)
    table = split_names(ds.names, {"val": 0.5, "test": 0.5}, seed=seed)  # "val" is the calibration half
    return subset(ds, table["val"], "cal"), subset(ds, table["test"], "test"), ds.identity()


def stores_for_variant(setting: Setting, variant: str, progress: bool = False) -> tuple[LogitStore, LogitStore]:
    """Calibration and test stores of one variant (built once, then read from the cache); the time goes to
    ``setting.timings["stores " + variant]``."""
    import torch

    from segcal_lib.config import get_device

    t0 = time.perf_counter()
    model = load_variant(setting, variant).to(get_device())
    cal, test, identity = split_cal_test(setting)
    stores = []
    for split, data in (("cal", cal), ("test", test)):
        spec = {"name": "ade20k", "split": "val", "part": split, "resize": setting.resize, "identity": identity,
                "n": setting.max_images}
        stores.append(LogitStore.build_or_load(model.cache_key, spec, split, model, data,
                                               inference_kwargs=setting.inference, progress=progress,
                                               verbose=False, batch_size=4))
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    setting.timings[f"stores {variant}"] = time.perf_counter() - t0
    return stores[0], stores[1]


def measure_variant(setting: Setting, variant: str, progress: bool = False) -> dict:
    """Uncalibrated metrics of one variant on all (at most ``max_images``) validation images, streamed from the
    model into the meters (no store: 150 classes at 512x512 take 79 MB per image in float16).

    Returns
    -------
    dict with ``result`` (``CalibrationMeter.compute()``), ``miou`` (fraction), ``params_m`` (millions) and
    ``seconds`` (also recorded in ``setting.timings["measure " + variant]``).
    """
    import torch

    from segcal_lib.config import get_device
    from segcal_lib.inference import predict_dataset
    from segcal_lib.metrics import CalibrationMeter, SegmentationMeter

    t0 = time.perf_counter()
    model = load_variant(setting, variant).to(get_device())
    ds = ADE20K(setting.root, "val", resize=setting.resize, n=setting.max_images)
    meter = CalibrationMeter(ds.num_classes, classwise=False)
    seg = SegmentationMeter(ds.num_classes)
    for logits, labels, _ in predict_dataset(model, ds, batch_size=4, progress=progress, **setting.inference):
        meter.update(logits, labels)
        seg.update(logits, labels)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    seconds = time.perf_counter() - t0
    setting.timings[f"measure {variant}"] = seconds
    return {"result": meter.compute(), "miou": float(seg.compute()["miou"]), "params_m": params, "seconds": seconds}


def store_bytes(setting: Setting, num_classes: int = 150) -> int:
    """Disk taken by the float16 logits of ``max_images`` images (what the calibration stores cost)."""
    h, w = (512, 512) if setting.real else (64, 96)
    return setting.max_images * num_classes * h * w * 2
