"""Your own folder of images and label maps as a first-class data set (registry name ``"folder"``).

Layout (the defaults; ``image_dir``/``label_dir``/``classes``/``splits`` change each name)::

    ROOT/images/<stem>.jpg|.png|...   RGB images
    ROOT/labels/<stem>.png            single-channel label PNGs with the same stems (values = train ids, 255 = ignore)
    ROOT/classes.txt                  optional: one class name per line; line i names train id i (gives num_classes)
    ROOT/splits.json                  optional: written by :func:`segcal_lib.data.splits.make_splits`

Images are returned as the rest of the library expects them: float32 RGB in [0, 1], *not* normalised (models
normalise internally, e.g. with ImageNet's mean and std).

A folder without splits is one pool (``split="all"``); asking it for ``"train"`` raises an error that says how to make
splits, instead of silently returning the whole folder (which would put the same images in train and test).

Decoded (and resized) pairs are kept on disk under ``cache_dir("decoded")`` as raw uint8 arrays keyed by each file's
path, size and modification time and by the resize and class settings, so a second pass (inference after training,
another chapter) reads an array instead of decoding a JPEG.

>>> ds = FolderDataset("my_data", split="all", resize="pad:360x480")        # doctest: +SKIP
>>> ds.num_classes, ds.class_names[:2], ds[0].image.shape                     # doctest: +SKIP
(59, ('background', 'hat'), torch.Size([3, 360, 480]))
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segcal_lib.config import cache_dir
from segcal_lib.data.base import IGNORE_INDEX, Sample
from segcal_lib.data.datasets import DATASETS, ImageFolderSegmentation
from segcal_lib.fileio import atomic_write

__all__ = ["DEFAULT_CLASSES", "DEFAULT_SPLITS", "FolderDataset", "parse_resize", "read_class_names", "resize_pair"]

DEFAULT_CLASSES = "classes.txt"
DEFAULT_SPLITS = "splits.json"
ALL = "all"
_SPLIT_ALIASES = {"cal": "val"}
_RESIZE = re.compile(r"^(?P<mode>short|pad|stretch):(?P<a>\d+)(?:x(?P<b>\d+))?$")


def parse_resize(resize) -> tuple | None:
    """Normalise a resize setting to ``None``, ``("short", S)``, ``("pad", H, W)`` or ``("stretch", H, W)``.

    Parameters
    ----------
    resize : None (keep the files' sizes), ``"short:S"`` (scale so that the shorter side is S, keeping the aspect
        ratio), ``"pad:HxW"`` (scale to fit inside H x W keeping the aspect ratio, then pad the bottom/right with 0
        for images and 255 (ignore) for labels, so every item has the same shape), ``"stretch:HxW"`` or a pair
        ``(H, W)`` (resize to exactly H x W, distorting the aspect ratio).
    """
    if resize is None:
        return None
    if isinstance(resize, (tuple, list)) and len(resize) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in resize):
        return ("stretch", int(resize[0]), int(resize[1]))
    m = _RESIZE.match(resize) if isinstance(resize, str) else None
    if m is None or (m["mode"] == "short") != (m["b"] is None) or int(m["a"]) < 1 or int(m["b"] or 1) < 1:
        raise ValueError(f"resize must be None, 'short:S', 'pad:HxW', 'stretch:HxW' or a pair (H, W) of positive ints, "
                         f"got {resize!r}")
    return (m["mode"], int(m["a"])) if m["mode"] == "short" else (m["mode"], int(m["a"]), int(m["b"]))


def resize_spec_str(spec: tuple | None) -> str | None:
    """The string form of a parsed resize setting (what data specs and cache keys record)."""
    if spec is None:
        return None
    return f"short:{spec[1]}" if spec[0] == "short" else f"{spec[0]}:{spec[1]}x{spec[2]}"


def resize_pair(image: Image.Image, label: Image.Image, spec: tuple | None) -> tuple[np.ndarray, np.ndarray]:
    """Resize an RGB image (bilinear) and its label map (nearest: no invented label values) as ``spec`` says.

    Returns uint8 arrays (H, W, 3) and (H, W).
    """
    w, h = image.size
    if spec is None:
        return np.asarray(image, dtype=np.uint8), np.asarray(label, dtype=np.uint8)
    if spec[0] == "stretch":
        size = (spec[2], spec[1])
    elif spec[0] == "short":
        s = spec[1] / min(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
    else:
        s = min(spec[1] / h, spec[2] / w)
        size = (min(spec[2], max(1, round(w * s))), min(spec[1], max(1, round(h * s))))
    img = np.asarray(image.resize(size, Image.BILINEAR) if size != (w, h) else image, dtype=np.uint8)
    lab = np.asarray(label.resize(size, Image.NEAREST) if size != (w, h) else label, dtype=np.uint8)
    if spec[0] == "pad":
        out_img = np.zeros((spec[1], spec[2], 3), np.uint8)
        out_lab = np.full((spec[1], spec[2]), IGNORE_INDEX, np.uint8)
        out_img[:img.shape[0], :img.shape[1]] = img
        out_lab[:lab.shape[0], :lab.shape[1]] = lab
        img, lab = out_img, out_lab
    return img, lab


def read_class_names(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names from a text file: one per line, line i naming train id i; blank lines and ``#`` comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classes file {str(path)!r} does not exist; expected one class name per line")
    names = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    names = [n for n in names if n]
    if not 2 <= len(names) <= IGNORE_INDEX:
        raise ValueError(f"classes file {str(path)!r} must name 2..255 classes (one per line), got {len(names)}")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"classes file {str(path)!r} names some classes twice: {dupes}")
    return tuple(names)


class FolderDataset(ImageFolderSegmentation):
    """A folder of images and label PNGs, optionally split, with class names from a file.

    Parameters
    ----------
    root : the data set's folder (holding ``images/``, ``labels/``, optionally ``classes.txt`` and ``splits.json``).
        May be None when ``image_dir`` and ``label_dir`` are both given.
    split : ``"all"`` (default: every pair), or a split name (``"train"``, ``"val"`` (alias ``"cal"``), ``"test"``,
        ...) that the splits file lists, or that fills ``{split}`` in ``image_dir``/``label_dir``.
    image_dir, label_dir : folders of images and labels; relative paths are taken under ``root``. Default
        ``root/images`` and ``root/labels``. They may contain ``{split}`` (a folder that is already split).
    classes : a class-names file (see :func:`read_class_names`) or a sequence of names; default ``root/classes.txt``
        when it exists. It gives ``num_classes`` and ``class_names``.
    splits : a splits JSON file (from :func:`~segcal_lib.data.splits.make_splits`); default ``root/splits.json`` when
        it exists.
    resize : see :func:`parse_resize`; default None (files' own sizes).
    class_map : optional ``{raw label value: train id}`` (values not in it become 255).
    num_classes : number of classes when no class list is given (else it must agree with the list).
    n : keep this many pairs, spread evenly over the (split's) sorted stems.
    cache : keep decoded, resized pairs on disk (``cache_dir("decoded")``) so a second pass does not re-decode.

    Attributes
    ----------
    num_classes, class_names, ignore_index (255), palette (None), names (the kept stems), files (path pairs),
    split, resize (the string form of the resize setting).

    Raises
    ------
    FileNotFoundError : a folder or file is missing.
    ValueError : images and labels do not pair up, the split is not defined for this folder, the splits file names
        images that are not in the folder, or a bad argument.
    """

    def __init__(self, root: str | os.PathLike | None = None, split: str = ALL, *,
                 image_dir: str | os.PathLike | None = None, label_dir: str | os.PathLike | None = None,
                 classes: str | os.PathLike | Sequence[str] | None = None, splits: str | os.PathLike | None = None,
                 resize=None, class_map: Mapping[int, int] | None = None, num_classes: int | None = None,
                 n: int | None = None, cache: bool = True):
        if root is None and (image_dir is None or label_dir is None):
            raise ValueError("root must be given unless both image_dir and label_dir are")
        self.root = Path(root).expanduser().resolve() if root is not None else None
        if not isinstance(split, str):
            raise ValueError(f"split must be a str such as 'all', 'train', 'val' or 'test', got {split!r}")
        self.split = _SPLIT_ALIASES.get(split, split)
        self._resize = parse_resize(resize)
        self.resize = resize_spec_str(self._resize)
        self.cache = bool(cache)
        img_dir, lbl_dir = (self._under(d, default) for d, default in ((image_dir, "images"), (label_dir, "labels")))
        templated = "{split}" in img_dir or "{split}" in lbl_dir
        self._selected: set[str] | None = None
        if templated:
            if self.split == ALL:
                raise ValueError("split must name a split when image_dir/label_dir contain '{split}', got 'all'")
            img_dir, lbl_dir = img_dir.format(split=self.split), lbl_dir.format(split=self.split)
        else:
            self._selected = self._select(splits)
        class_names = self._class_names(classes)
        if class_names is not None:
            if num_classes is not None and num_classes != len(class_names):
                raise ValueError(f"num_classes={num_classes} disagrees with the {len(class_names)} class names")
            num_classes = len(class_names)
        super().__init__(img_dir, lbl_dir, class_map=class_map, num_classes=num_classes, n=n,
                         class_names=class_names)
        if self._selected is not None:
            missing = sorted(self._selected - {img.stem for img, _ in self.files}) if n is None else []
            if missing:
                raise ValueError(f"the splits file lists {len(missing)} {self.split!r} images that are not in "
                                 f"{str(self.image_dir)!r} (e.g. {missing[:3]}); make the splits again")

    # -- construction helpers -----------------------------------------------------------------------------------------

    def _under(self, path, default: str) -> str:
        path = Path(path if path is not None else default).expanduser()
        if not path.is_absolute():
            if self.root is None:
                raise ValueError(f"relative folder {str(path)!r} needs a root")
            path = self.root / path
        return str(path)

    def _class_names(self, classes) -> tuple[str, ...] | None:
        if classes is None:
            default = self.root / DEFAULT_CLASSES if self.root is not None else None
            return read_class_names(default) if default is not None and default.is_file() else None
        if isinstance(classes, (str, os.PathLike)):
            path = Path(classes).expanduser()
            return read_class_names(path if path.is_absolute() or self.root is None else self.root / path)
        names = tuple(str(c) for c in classes)
        if not 2 <= len(names) <= IGNORE_INDEX:
            raise ValueError(f"classes must name 2..255 classes, got {len(names)}")
        return names

    def _select(self, splits) -> set[str] | None:
        """The stems of the requested split (None: all), from the splits file; errors for undefined splits."""
        from segcal_lib.data.splits import load_splits  # splits imports this module for its subsets

        path = None
        if splits is not None:
            path = Path(splits).expanduser()
            if not path.is_absolute() and self.root is not None:
                path = self.root / path
            if not path.is_file():
                raise FileNotFoundError(f"splits file {str(path)!r} does not exist")
        elif self.root is not None and (self.root / DEFAULT_SPLITS).is_file():
            path = self.root / DEFAULT_SPLITS
        if path is None:
            if self.split != ALL:
                where = str(self.root) if self.root is not None else "this folder"
                raise ValueError(
                    f"split {self.split!r} is not defined: {where} has no {DEFAULT_SPLITS} and its folders contain no "
                    f"'{{split}}'. Make splits first (`segcal split {where}` or "
                    f"segcal_lib.data.make_splits(...)), or ask for split='all' to read every image")
            return None
        self.splits_file = path
        table = load_splits(path)
        if self.split == ALL:
            return None
        if self.split not in table:
            raise ValueError(f"split {self.split!r} is not in {str(path)!r}; it defines {sorted(table)} (and 'all')")
        return set(table[self.split])

    def _keep(self, stem: str) -> bool:
        return self._selected is None or stem in self._selected

    # -- identity -----------------------------------------------------------------------------------------------------

    def identity(self, content: bool = False) -> str:
        """A hash of what this data set reads: every kept pair's file names and sizes (or, with ``content``, their
        bytes), the class names and map, and the resize setting. It changes when a file, the split or a setting
        changes, so it keys trained models and stored logits (never a hand-written description)."""
        digest = hashlib.sha256()
        head = {"classes": list(self.class_names), "num_classes": self.num_classes, "resize": self.resize,
                "class_map": sorted(self.class_map.items()) if self.class_map is not None else None}
        digest.update(json.dumps(head, sort_keys=True).encode())
        for img, lbl in self.files:
            for p in (img, lbl):
                digest.update(f"{p.name}\0{p.stat().st_size}\0".encode())
                if content:
                    digest.update(hashlib.sha256(p.read_bytes()).digest())
        return digest.hexdigest()[:16]

    # -- reading ------------------------------------------------------------------------------------------------------

    def _decoded_path(self, img_path: Path, lbl_path: Path) -> Path:
        parts = [self.resize, self.num_classes, sorted(self.class_map.items()) if self.class_map else None]
        for p in (img_path, lbl_path):
            st = p.stat()
            parts += [str(p.resolve()), st.st_size, st.st_mtime_ns]
        key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]
        return cache_dir("decoded") / key[:2] / f"{key}.npy"

    def read_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image uint8 (H, W, 3) and label uint8 (H, W) of pair ``i``, decoded and resized (or read from the cache)."""
        img_path, lbl_path = self.files[i]
        cached = self._decoded_path(img_path, lbl_path) if self.cache else None
        if cached is not None and cached.is_file():
            try:
                both = np.load(cached)
                return both[..., :3], both[..., 3]
            except (OSError, ValueError):  # a damaged entry is rebuilt, never used
                cached.unlink(missing_ok=True)
        with Image.open(img_path) as im:
            image = im.convert("RGB")
        label = Image.fromarray(self.read_label(lbl_path))
        if image.size != label.size:
            raise ValueError(f"image {img_path.name} is {image.size[0]}x{image.size[1]} but its label is "
                             f"{label.size[0]}x{label.size[1]} (W x H)")
        img, lab = resize_pair(image, label, self._resize)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(cached) as fh:
                np.save(fh, np.concatenate([img, lab[..., None]], axis=-1))
        return img, lab

    def __getitem__(self, i: int) -> Sample:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        if not 0 <= i < len(self.files):
            raise IndexError(f"index {i} out of range for {len(self.files)} images")
        img, lab = self.read_pair(int(i))
        # In NumPy, as ImageFolderSegmentation does: small torch ops wake every thread, which on a busy machine costs
        # more than reading the cached pair (measured: 55 ms vs 1 ms per 480x360 image under load).
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0))
        return Sample(image, torch.from_numpy(lab.astype(np.int64)), self.files[i][0].stem)

    def __repr__(self) -> str:
        return (f"FolderDataset({str(self.root or self.image_dir)!r}, split={self.split!r}, n={len(self)}, "
                f"num_classes={self.num_classes}, resize={self.resize!r})")


DATASETS["folder"] = lambda split=ALL, **kw: FolderDataset(split=split, **kw)
