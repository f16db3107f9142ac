"""Data sets: procedural street scenes (the embedded default), their domain shifts, and readers of real folders.

>>> from segcal_lib.data import SyntheticScenes
>>> ds = SyntheticScenes("train", n=4)
>>> ds[0].image.shape, ds[0].label.dtype
(torch.Size([3, 96, 128]), torch.int64)
"""

from segcal_lib.data.base import IGNORE_INDEX, Sample
from segcal_lib.data.datasets import (
    CAMVID_DOMAINS,
    CAMVID_SEQUENCES,
    DATASETS,
    CamVid,
    ImageFolderSegmentation,
    camvid_sequence,
    default_camvid_root,
    find_camvid,
    get_dataset,
    read_image,
)
from segcal_lib.data.shifts import SHIFTS, apply_shift
from segcal_lib.data.synthetic import CLASS_NAMES, NUM_CLASSES, PALETTE, SyntheticScenes, render_scene

__all__ = [
    "CAMVID_DOMAINS", "CAMVID_SEQUENCES", "CLASS_NAMES", "DATASETS", "IGNORE_INDEX", "NUM_CLASSES", "PALETTE", "SHIFTS",
    "CamVid", "ImageFolderSegmentation", "Sample", "SyntheticScenes", "apply_shift", "camvid_sequence",
    "default_camvid_root", "find_camvid", "get_dataset", "read_image", "render_scene",
]
