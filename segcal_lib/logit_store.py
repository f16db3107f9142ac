"""LogitStore: a model's logits and labels on one split, written to disk once and read lazily.

Layout of one store (a folder under ``cache_dir("logits")``)::

    logits.npy   float16 (N, C, H, W)   read with numpy memory-mapping, so nothing is loaded until used
    labels.npy   uint8   (N, H, W)      train ids, 255 = ignore
    meta.json    class names, shapes, image names, inference settings, model key, data spec, creation time, and
                 ``files``: the size and SHA-256 of logits.npy and labels.npy

A store is keyed by the model key, the data spec, the split and the inference settings (canonicalised: split aliases
resolved, window sizes as (height, width) pairs with the default stride filled in, scales as floats). It is built in a
temporary folder that is renamed into place when complete (so a store that exists is whole), under an ``fcntl`` lock
so that two notebooks asking for the same store compute it once.

Opening a store validates it: the metadata must parse and hold its keys, the recorded sizes and SHA-256 digests must
match (a truncated or changed file is caught before it is mapped), and logits, labels, names and the recorded shape
must agree. A failure raises :class:`~segcal_lib.fileio.CorruptCacheError` naming the file; :meth:`LogitStore.
build_or_load` reports it (a :class:`~segcal_lib.fileio.CacheCorruptionWarning`) and rebuilds the store. A store
written by hand in this format without ``files`` opens with the shape checks only; the cache never uses one.

Logits are rounded to float16 on writing (about 3 significant digits; enough for calibration, halving the disk). Every
reader sees the rounded values, so fitting and evaluation agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import nn
from torch.utils.data import Dataset

import segcal_lib
from segcal_lib.checks import check_logits_labels, check_scales
from segcal_lib.config import cache_dir
from segcal_lib.data.base import IGNORE_INDEX, data_identity
from segcal_lib.data.synthetic import SPLIT_ALIASES
from segcal_lib.fileio import CacheMiss, CorruptCacheError, load_or_build, read_entry, write_entry
from segcal_lib.inference import predict_dataset, window_settings

__all__ = ["INFERENCE_DEFAULTS", "LogitStore", "store_key"]

STORE_FORMAT = 2  # 2: file checksums in meta.json
_REQUIRED_META = ("shape", "names", "num_classes")
FLOAT16_MAX = float(np.finfo(np.float16).max)

# The inference settings that change the logits, with their defaults; the key hashes the completed dict, so leaving a
# setting out and passing its default give the same store. (batch_size, device: same logits, not in the key.)
INFERENCE_DEFAULTS: dict[str, Any] = {"mode": "whole", "crop_size": None, "stride": None, "scales": [1.0],
                                      "flip": False, "average": "logits", "pad_value": 0.0}
_NOT_KEYED = ("batch_size", "device", "out_device")


def _normalise_settings(inference_kwargs: Mapping | None) -> dict:
    kwargs = dict(inference_kwargs or {})
    unknown = set(kwargs) - set(INFERENCE_DEFAULTS) - set(_NOT_KEYED)
    if unknown:
        raise ValueError(f"inference_kwargs has unknown keys {sorted(unknown)}; expected a subset of "
                         f"{sorted(INFERENCE_DEFAULTS) + list(_NOT_KEYED)}")
    settings = dict(INFERENCE_DEFAULTS)
    settings.update({k: v for k, v in kwargs.items() if k not in _NOT_KEYED})
    settings["scales"] = check_scales(settings["scales"])
    crop, stride = window_settings(settings["mode"], settings["crop_size"], settings["stride"])
    settings["crop_size"] = list(crop) if crop else None
    settings["stride"] = list(stride) if stride else None
    if settings["average"] not in ("logits", "probs"):
        raise ValueError(f"average must be 'logits' or 'probs', got {settings['average']!r}")
    if len(settings["scales"]) == 1 and not settings["flip"]:
        settings["average"] = "logits"  # one view: both ways of averaging give the model's logits unchanged
    return json.loads(json.dumps(settings, sort_keys=True))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))[:80]


def store_key(model_key: str, data_spec: Any, split: str, inference_kwargs: Mapping | None = None,
              data_identity: Mapping | None = None) -> str:
    """Folder name of a store: ``<model_key>--<split>--<hash of all of these and the library version>``.

    ``data_identity`` (a data set's ``fingerprint()``: folders, file names and sizes) is hashed too when given.
    """
    split = SPLIT_ALIASES.get(split, split)
    payload = {"model": model_key, "data": data_spec, "split": split,
               "inference": _normalise_settings(inference_kwargs), "version": segcal_lib.__version__,
               "format": STORE_FORMAT}
    if data_identity is not None:
        payload["data_identity"] = data_identity
    try:
        blob = json.dumps(payload, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"data_spec must be JSON-serialisable, got {data_spec!r}") from exc
    return f"{_safe(model_key)}--{_safe(split)}--{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


class LogitStore:
    """Read access to a stored split: memory-mapped logits and labels plus metadata.

    Open an existing store with ``LogitStore(path)``; create one with :meth:`build_or_load` (from a model and a data
    set) or :meth:`write` (from batches you already have).

    Attributes
    ----------
    path : the store's folder.
    logits : read-only memmap, float16 (N, C, H, W).
    labels : read-only memmap, uint8 (N, H, W); 255 marks ignored pixels.
    meta : dict with ``class_names``, ``num_classes``, ``shape``, ``names``, ``settings``, ``created``, ...
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "meta.json").exists():
            if self.path.is_dir():  # stores are renamed into place whole, so a store folder without it is damaged
                raise CorruptCacheError(self.path / "meta.json", "file is missing")
            raise ValueError(f"path must be a LogitStore folder with meta.json, got {str(self.path)!r}")
        self.meta = read_entry(self.path / "meta.json", _REQUIRED_META, strict=False)
        self.logits = self._map("logits.npy", np.float16, 4)
        self.labels = self._map("labels.npy", np.uint8, 3)
        n, _, h, w = self.logits.shape
        if self.labels.shape != (n, h, w):
            raise CorruptCacheError(self.path / "labels.npy", f"shape {self.labels.shape} does not match logits.npy "
                                                              f"{self.logits.shape} (expected {(n, h, w)})")
        if list(self.meta["shape"]) != list(self.logits.shape) or len(self.meta["names"]) != n:
            raise CorruptCacheError(self.path / "meta.json", f"records shape {self.meta['shape']} and "
                                                             f"{len(self.meta['names'])} names for logits.npy of "
                                                             f"shape {self.logits.shape}")
        self._correct: np.ndarray | None = None

    def _map(self, name: str, dtype, ndim: int) -> np.ndarray:
        path = self.path / name
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as exc:  # missing, truncated (mmap length), or not an .npy file
            raise CorruptCacheError(path, f"cannot be read as .npy ({exc})") from None
        if arr.dtype != dtype or arr.ndim != ndim:
            raise CorruptCacheError(path, f"holds {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} with {ndim} dims")
        return arr

    # ---------------------------------------------------------------- properties
    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def __repr__(self) -> str:
        return f"LogitStore({self.path.name!r}, n={len(self)}, shape={tuple(self.logits.shape)})"

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [str(c) for c in range(self.num_classes)])

    @property
    def names(self) -> list[str]:
        return list(self.meta["names"])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (C, H, W) float32 and labels (H, W) int64 of image ``i``."""
        return (torch.from_numpy(np.asarray(self.logits[i], dtype=np.float32)),
                torch.from_numpy(np.asarray(self.labels[i], dtype=np.int64)))

    # ---------------------------------------------------------------- reading
    def iter_batches(self, batch_size: int = 8, device: torch.device | str | None = None
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(logits, labels)``: float32 (B, C, H, W) and int64 (B, H, W), in store order, read lazily."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        for start in range(0, len(self), batch_size):
            logits = torch.from_numpy(np.asarray(self.logits[start:start + batch_size], dtype=np.float32))
            labels = torch.from_numpy(np.asarray(self.labels[start:start + batch_size], dtype=np.int64))
            if device is not None:
                logits, labels = logits.to(device), labels.to(device)
            yield logits, labels

    def correct_mask(self) -> np.ndarray:
        """bool (N, H, W): argmax of the stored (float16) logits equals the label; computed once, then kept."""
        if self._correct is None:
            correct = np.empty(self.labels.shape, dtype=bool)
            for i in range(len(self)):
                correct[i] = np.asarray(self.logits[i]).argmax(axis=0) == self.labels[i]
            self._correct = correct
        return self._correct

    def sample_pixels(self, n: int, seed: int = 0, stratify_by_correctness: bool = False, wrong_fraction: float = 0.5,
                      return_index: bool = False):
        """Sample ``n`` non-ignored pixels without replacement, uniformly (or stratified by correctness).

        Parameters
        ----------
        n : number of pixels. If fewer are available, all of them are returned, with a warning.
        seed : the draw depends only on the seed and the store.
        stratify_by_correctness : draw ``round(n * wrong_fraction)`` mispredicted pixels (argmax != label) and the rest
            correctly predicted ones, each group uniformly; selective scaling fits on such a balanced sample. When a
            group has too few pixels, all of them are taken, the other group fills up, and a warning says so.
        wrong_fraction : share of mispredicted pixels when stratifying.
        return_index : also return the pixels' positions.

        Returns
        -------
        logits : float32 tensor (n, C).
        labels : int64 tensor (n,), never 255.
        index : int64 tensor (n, 3) of (image, row, column); only with ``return_index``.

        Unstratified samples come in store order (image, then raster order); stratified ones are shuffled.
        """
        if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if not 0.0 <= wrong_fraction <= 1.0:
            raise ValueError(f"wrong_fraction must be in [0, 1], got {wrong_fraction}")
        rng = np.random.default_rng(seed)
        valid = [lambda i: self.labels[i] != IGNORE_INDEX]
        if not stratify_by_correctness:
            groups, sizes = valid, [n]
        else:
            correct = self.correct_mask()
            n_wrong = round(n * wrong_fraction)
            groups = [lambda i: (self.labels[i] != IGNORE_INDEX) & ~correct[i],
                      lambda i: (self.labels[i] != IGNORE_INDEX) & correct[i]]
            sizes = [n_wrong, n - n_wrong]
        counts = [np.array([int(g(i).sum()) for i in range(len(self))], dtype=np.int64) for g in groups]
        totals = [int(c.sum()) for c in counts]
        if sum(totals) < n:
            warnings.warn(f"n={n} exceeds the {sum(totals)} non-ignored pixels of the store; returning all of them",
                          UserWarning, stacklevel=2)
            sizes = totals
        elif stratify_by_correctness and any(s > t for s, t in zip(sizes, totals, strict=True)):
            short = 0 if sizes[0] > totals[0] else 1
            sizes[short] = totals[short]
            sizes[1 - short] = n - totals[short]
            warnings.warn(f"only {totals[short]} {'mispredicted' if short == 0 else 'correct'} pixels available; "
                          f"sampling {sizes[0]} mispredicted and {sizes[1]} correct pixels", UserWarning, stacklevel=2)
        parts = [self._gather(g, c, rng.choice(t, size=s, replace=False) if s < t else np.arange(t))
                 for g, c, t, s in zip(groups, counts, totals, sizes, strict=True)]
        logits = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        index = np.concatenate([p[2] for p in parts])
        if stratify_by_correctness:
            order = rng.permutation(len(labels))
            logits, labels, index = logits[order], labels[order], index[order]
        out = (torch.from_numpy(logits), torch.from_numpy(labels.astype(np.int64)))
        return (*out, torch.from_numpy(index)) if return_index else out

    def _gather(self, mask_fn: Callable[[int], np.ndarray], counts: np.ndarray, ranks: np.ndarray):
        """Pixels whose rank among all pixels selected by ``mask_fn`` (image by image, raster order) is in ``ranks``."""
        ranks = np.sort(ranks)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        logits, labels, index = [], [], []
        c = self.num_classes
        for i in np.flatnonzero(counts):
            lo, hi = np.searchsorted(ranks, [offsets[i], offsets[i + 1]])
            if lo == hi:
                continue
            flat = np.flatnonzero(mask_fn(i))[ranks[lo:hi] - offsets[i]]
            logits.append(np.asarray(self.logits[i]).reshape(c, -1)[:, flat].T.astype(np.float32))
            labels.append(np.asarray(self.labels[i]).reshape(-1)[flat])
            ys, xs = np.divmod(flat, self.labels.shape[2])
            index.append(np.stack([np.full_like(flat, i), ys, xs], axis=1))
        if not logits:
            return (np.zeros((0, c), np.float32), np.zeros(0, np.uint8), np.zeros((0, 3), np.int64))
        return np.concatenate(logits), np.concatenate(labels), np.concatenate(index).astype(np.int64)

    # ---------------------------------------------------------------- writing
    @classmethod
    def write(cls, path: str | Path, batches: Iterable[tuple[torch.Tensor, torch.Tensor, list[str]]], n: int,
              class_names: list[str] | None = None, meta: Mapping | None = None) -> LogitStore:
        """Write ``n`` images given as ``(logits (B, C, H, W), labels (B, H, W), names)`` batches to a new store.

        The store is written to a temporary folder beside ``path`` and renamed onto it at the end; ``path`` must not
        exist. Labels must be in [0, C) or 255; logits must be finite and within the float16 range.
        """
        path = Path(path)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        if n == 0:
            raise ValueError("the data set is empty (n=0): a logit store needs at least one image")
        if path.exists():
            raise ValueError(f"path must not exist yet, got existing {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        try:
            logits_mm = labels_mm = None
            names: list[str] = []
            start_time = time.perf_counter()
            for logits, labels, batch_names in batches:
                logits = torch.as_tensor(logits)
                labels = torch.as_tensor(labels)
                check_logits_labels(logits, labels, finite=False)  # finiteness and range are checked below in float32
                b, c, h, w = logits.shape
                if logits_mm is None:
                    if c > IGNORE_INDEX:
                        raise ValueError(f"logits must have at most {IGNORE_INDEX} classes for uint8 labels, got {c}")
                    logits_mm = open_memmap(tmp / "logits.npy", mode="w+", dtype=np.float16, shape=(n, c, h, w))
                    labels_mm = open_memmap(tmp / "labels.npy", mode="w+", dtype=np.uint8, shape=(n, h, w))
                elif (c, h, w) != logits_mm.shape[1:]:
                    raise ValueError(f"all images must give logits of shape {logits_mm.shape[1:]} (resize the data "
                                     f"set to one size), got {(c, h, w)} for {batch_names[:1]}")
                if len(names) + b > n:
                    raise ValueError(f"batches hold more than n={n} images")
                full = logits.detach().to("cpu", torch.float32)
                if b and not (torch.isfinite(full).all() and full.abs().max() <= FLOAT16_MAX):
                    raise ValueError(f"logits must be finite and within +-{FLOAT16_MAX:g} (float16), got "
                                     f"non-finite values in {batch_names[:1]}")
                logits_mm[len(names):len(names) + b] = full.half().cpu().numpy()
                labels_mm[len(names):len(names) + b] = labels.cpu().numpy().astype(np.uint8)
                names.extend(str(s) for s in batch_names)
            if len(names) != n:
                raise ValueError(f"batches held {len(names)} images, expected n={n}")
            logits_mm.flush()
            labels_mm.flush()
            shape = list(logits_mm.shape)
            del logits_mm, labels_mm  # close the memmaps before the rename
            info = {"format": STORE_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "build_time_s": time.perf_counter() - start_time, "shape": shape, "num_classes": shape[1],
                    "class_names": list(class_names) if class_names is not None else None, "names": names,
                    "ignore_index": IGNORE_INDEX, "logits_dtype": "float16", "labels_dtype": "uint8"}
            info.update(meta or {})
            write_entry(tmp / "meta.json", [tmp / "logits.npy", tmp / "labels.npy"], info)
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(path)

    @classmethod
    def from_arrays(cls, path: str | Path, logits: torch.Tensor, labels: torch.Tensor, names: list[str] | None = None,
                    class_names: list[str] | None = None, meta: Mapping | None = None) -> LogitStore:
        """Write in-memory logits (N, C, H, W) and labels (N, H, W) to a new store at ``path``."""
        names = names if names is not None else [str(i) for i in range(len(logits))]
        return cls.write(path, [(logits, labels, names)], len(logits), class_names=class_names, meta=meta)

    @classmethod
    def build_or_load(cls, model_key: str | None, data_spec: Any, split: str,
                      model: nn.Module | Callable[[], nn.Module], dataset: Dataset | Callable[[], Dataset],
                      inference_kwargs: Mapping | None = None, *, root: str | Path | None = None, batch_size: int = 8,
                      progress: bool = True, force: bool = False, verbose: bool = True,
                      extra_meta: Mapping | None = None) -> LogitStore:
        """Open the store of (model, data, split, inference settings), computing and writing it first if needed.

        Parameters
        ----------
        model_key : identifies the model's weights (e.g. ``model.cache_key`` from ``train_or_load``, or a hub name);
            ``None`` takes ``model.cache_key``.
        data_spec : JSON-serialisable description of the data (as in :class:`~segcal_lib.models.TrainConfig`). A
            ``Dataset`` given with a ``fingerprint()`` (the folder readers) adds its files' identity to the key.
        split : split name, e.g. ``"val"``.
        model, dataset : a model and a data set, or zero-argument callables returning them (called only when the
            store must be built).
        inference_kwargs : settings for :func:`~segcal_lib.inference.predict_logits` (``mode``, ``crop_size``,
            ``stride``, ``scales``, ``flip``, ``average``, ...); part of the key.
        root : parent folder; default ``cache_dir("logits")``.
        batch_size : images per inference batch.
        progress : tqdm bar while computing.
        force : rebuild even if present.
        A damaged store (see the module docstring) is reported with a
        :class:`~segcal_lib.fileio.CacheCorruptionWarning` naming the file and rebuilt.
        verbose : print one line saying whether the store was loaded or built.
        extra_meta : more metadata to record (e.g. the model's training summary).
        """
        if model_key is None:
            model_key = getattr(model, "cache_key", None)
            if model_key is None:
                raise ValueError("model_key is required unless model has a cache_key attribute (from train_or_load)")
        settings = _normalise_settings(inference_kwargs)
        identity = data_identity(dataset) if isinstance(dataset, Dataset) else None
        key = store_key(model_key, data_spec, split, inference_kwargs, identity)
        root = Path(root) if root is not None else cache_dir("logits")
        root.mkdir(parents=True, exist_ok=True)
        path = root / key

        def load():
            if not path.exists():
                raise CacheMiss(str(path))
            store = cls(path)
            if "files" not in store.meta:
                raise CorruptCacheError(path / "meta.json", "no file checksums recorded (written by an older version?)")
            if verbose:
                print(f"loaded cached logits {key} ({len(store)} images, built in {store.meta['build_time_s']:.0f} s)")
            return store

        def build():
            if path.exists():  # force
                shutil.rmtree(path)
            if verbose:
                print(f"computing logits {key} ...")
            net = model if isinstance(model, nn.Module) else model()
            data = dataset if isinstance(dataset, Dataset) or not callable(dataset) else dataset()
            if len(data) == 0:
                raise ValueError("dataset is empty: a logit store needs at least one image")
            kwargs = {k: v for k, v in (inference_kwargs or {}).items() if k != "batch_size"}
            batches = predict_dataset(net, data, batch_size=batch_size, progress=progress, **kwargs)
            meta = {"model_key": model_key, "data_spec": data_spec, "split": SPLIT_ALIASES.get(split, split),
                    "settings": settings}
            meta.update(extra_meta or {})
            store = cls.write(path, batches, len(data), class_names=getattr(data, "class_names", None), meta=meta)
            if verbose:
                print(f"wrote {key} ({len(store)} images) in {store.meta['build_time_s']:.0f} s")
            return store

        return load_or_build(root / f"{key}.lock", load, build, lambda: shutil.rmtree(path, ignore_errors=True),
                             force=force)
