"""Data sets: procedural street scenes (the embedded default), domain shifts and common corruptions (one registry,
:func:`list_shifts`), and readers of real folders.

>>> from segcal_lib.data import SyntheticScenes
>>> ds = SyntheticScenes("train", n=4)
>>> ds[0].image.shape, ds[0].label.dtype
(torch.Size([3, 96, 128]), torch.int64)
"""

from segcal_lib.data import corruptions  # noqa: F401  (registers blur, gaussian_noise, brightness, contrast, jpeg)
from segcal_lib.data.base import IGNORE_INDEX, Sample
from segcal_lib.data.corruptions import CORRUPTIONS
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
from segcal_lib.data.folder import FolderDataset, parse_resize, read_class_names
from segcal_lib.data.public import ADE20K, BDD100K, Cityscapes, COCOStuff
from segcal_lib.data.shifts import SHIFTS, ShiftedDataset, apply_shift, list_shifts
from segcal_lib.data.splits import SplitSubset, load_splits, make_splits, split_names, subset
from segcal_lib.data.synthetic import CLASS_NAMES, NUM_CLASSES, PALETTE, SyntheticScenes, render_scene

__all__ = [
    "ADE20K", "BDD100K", "COCOStuff", "Cityscapes",
    "CAMVID_DOMAINS", "CAMVID_SEQUENCES", "CLASS_NAMES", "CORRUPTIONS", "DATASETS", "IGNORE_INDEX", "NUM_CLASSES",
    "PALETTE", "SHIFTS", "CamVid", "FolderDataset", "ImageFolderSegmentation", "Sample", "ShiftedDataset",
    "SplitSubset", "SyntheticScenes", "apply_shift", "camvid_sequence", "default_camvid_root", "find_camvid",
    "get_dataset", "list_shifts", "load_splits", "make_splits", "parse_resize", "read_class_names", "read_image",
    "render_scene", "split_names", "subset",
]
