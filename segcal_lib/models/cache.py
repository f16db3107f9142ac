"""Train-or-load: a trained model is cached under ``cache_dir("models")``, keyed by a hash of its full configuration.

Files per model (see :mod:`segcal_lib.fileio` for the validated-entry mechanism):

- ``<key>.pt``   the state dict, written atomically (temporary file, then ``os.replace``);
- ``<key>.json`` metadata, written last (its presence marks the entry complete): the configuration, the training
  data's identity, library version, training time, iters, final loss, parameter count, whether ImageNet weights were
  loaded, the loss/lr history, and the size and SHA-256 of ``<key>.pt``.

An entry whose metadata is unreadable or incomplete, or whose checkpoint is missing, truncated or changed, is reported
(a :class:`~segcal_lib.fileio.CacheCorruptionWarning` naming the file), deleted and retrained, never loaded.

Two notebooks that build the same model at once serialise on an ``fcntl`` lock (``<key>.lock``): the first trains, the
second waits and then loads. (Without ``fcntl``, on Windows, there is no lock and both may train; the result is the
same.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

import segcal_lib
from segcal_lib.config import cache_dir, get_device
from segcal_lib.data.base import data_identity
from segcal_lib.fileio import (
    CacheMiss,
    CorruptCacheError,
    atomic_write,
    file_lock,
    load_or_build,
    read_entry,
    write_entry,
)
from segcal_lib.models.segnet import create_model, get_model_config
from segcal_lib.models.train import TrainConfig, train

__all__ = ["CACHE_FORMAT", "atomic_write", "config_key", "file_lock", "load_metadata", "model_paths", "train_or_load"]

# Bump when the checkpoint layout changes so that old files are not misread. 2: checksums in the metadata.
CACHE_FORMAT = 2
# Keys the metadata must hold for a cached model to be loaded (and reported).
REQUIRED_META = ("config", "train_time_s", "iters", "final_loss", "pretrained_loaded")


def config_key(cfg: TrainConfig, data: dict | None = None) -> str:
    """``<model>-<16 hex digits>``: a hash of every field of ``cfg``, the model's registry entry (so an edited
    architecture never loads an old checkpoint), the library version, the cache format and, when given, the training
    data's identity ``data`` (:func:`data_identity`: for a folder, its root, file names and sizes)."""
    payload = {"config": cfg.to_dict(), "architecture": get_model_config(cfg.model).to_dict(),
               "version": segcal_lib.__version__, "format": CACHE_FORMAT}
    if data is not None:
        payload["data_identity"] = data
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return f"{cfg.model}-{digest}"


def model_paths(key: str, root: str | Path | None = None) -> dict[str, Path]:
    """Paths of the checkpoint (``ckpt``), metadata (``meta``) and lock (``lock``) files of ``key``."""
    root = Path(root) if root is not None else cache_dir("models")
    root.mkdir(parents=True, exist_ok=True)
    return {"ckpt": root / f"{key}.pt", "meta": root / f"{key}.json", "lock": root / f"{key}.lock"}


def load_metadata(key: str, root: str | Path | None = None) -> dict | None:
    """The metadata dict of a cached model, or None when it is not cached (or its entry is damaged)."""
    try:
        return read_entry(model_paths(key, root)["meta"], REQUIRED_META)
    except (CacheMiss, CorruptCacheError):
        return None


def _load(cfg: TrainConfig, paths: dict[str, Path], device: torch.device) -> tuple[nn.Module, dict]:
    meta = read_entry(paths["meta"], REQUIRED_META)
    model = create_model(cfg.model, cfg.num_classes, pretrained=False)
    try:
        state = torch.load(paths["ckpt"], map_location="cpu", weights_only=True)
    except Exception as exc:  # the checksum matched, so the writer itself saved something unreadable
        raise CorruptCacheError(paths["ckpt"], f"cannot be read by torch.load ({type(exc).__name__})") from exc
    model.load_state_dict(state)
    model.pretrained_loaded = bool(meta.get("pretrained_loaded", False))
    return model.to(device).eval(), meta


def _attach(model: nn.Module, key: str, meta: dict) -> nn.Module:
    model.cache_key = key
    model.train_meta = meta
    return model


def train_or_load(cfg: TrainConfig, dataset: Dataset | Callable[[], Dataset], *,
                  device: torch.device | str | None = None, progress: bool = True, root: str | Path | None = None,
                  force: bool = False, num_workers: int | None = None, verbose: bool = True) -> nn.Module:
    """Return the model ``cfg`` describes: loaded from the cache when present, else trained and cached.

    Parameters
    ----------
    cfg : the full training configuration; its hash (with the library version) is the cache key.
    dataset : the training ``Dataset``, or a zero-argument callable returning it (called only when training is
        needed, so a cached model costs no data loading). A ``Dataset`` with a ``fingerprint()`` method (the folder
        readers) adds what identifies its data (root, file names and sizes) to the key, so a
        re-split folder under the same ``cfg.data`` is retrained; with a callable, ``cfg.data`` must identify the
        data (as :func:`segcal_lib.pipeline.data_spec` does).
    device : where the returned model lives (and trains); default :func:`~segcal_lib.config.get_device`.
    progress : tqdm bar while training.
    root : cache folder; default ``cache_dir("models")``.
    force : retrain even when cached (the new checkpoint replaces the old one).
    A damaged entry (unreadable metadata, a checkpoint missing, truncated or changed) is reported with a
    :class:`~segcal_lib.fileio.CacheCorruptionWarning` and retrained.
    num_workers : DataLoader workers for training (default: 0 on a CPU, up to 8 on a GPU).
    verbose : print one line saying whether the model was loaded or trained.

    Returns
    -------
    The model in eval mode on ``device``, with attributes ``cache_key`` (str), ``train_meta`` (dict: ``train_time_s``,
    ``iters``, ``final_loss``, ``num_params``, ``pretrained_loaded``, ``config``, ``history``, ...) and
    ``pretrained_loaded``.
    """
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    device = torch.device(device) if device is not None else get_device()
    identity = data_identity(dataset) if isinstance(dataset, Dataset) else None
    key = config_key(cfg, identity)
    paths = model_paths(key, root)

    def load():
        model, meta = _load(cfg, paths, device)
        if verbose:
            print(f"loaded cached model {key} (trained in {meta['train_time_s']:.0f} s, {meta['iters']} iters, "
                  f"final loss {meta['final_loss']:.3f})")
        if cfg.pretrained and not meta.get("pretrained_loaded", False):
            print(f"note: {key} was trained from random initialisation (ImageNet weights were unavailable then)")
        return _attach(model, key, meta)

    def discard():
        for p in (paths["meta"], paths["ckpt"]):  # metadata first: without it the entry is incomplete, not damaged
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def build():
        if verbose:
            print(f"training {key} ({cfg.iters} iters, batch {cfg.batch_size}, crop {cfg.crop_size}) on {device} ...")
        data = dataset() if callable(dataset) and not isinstance(dataset, Dataset) else dataset
        model, history = train(cfg, data, device=device, progress=progress, num_workers=num_workers)
        meta = {
            "key": key,
            "config": cfg.to_dict(),
            "data_identity": identity if identity is not None else data_identity(data),
            "version": segcal_lib.__version__,
            "format": CACHE_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch.__version__,
            "device": str(device),
            "train_time_s": history["train_time_s"],
            "steps_per_s": history["steps_per_s"],
            "iters": history["iters"],
            "final_loss": history["final_loss"],
            "num_params": history["num_params"],
            "pretrained_loaded": history["pretrained_loaded"],
            "history": {"loss": history["loss"], "lr": history["lr"]},
        }
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        # An old metadata file must not vouch for the new checkpoint while it is being replaced.
        with contextlib.suppress(FileNotFoundError):
            paths["meta"].unlink()
        with atomic_write(paths["ckpt"]) as fh:
            torch.save(state, fh)
        meta = write_entry(paths["meta"], [paths["ckpt"]], meta)
        if verbose:
            print(f"trained {key} in {meta['train_time_s']:.0f} s (final loss {meta['final_loss']:.3f}); "
                  f"saved to {paths['ckpt']}")
        return _attach(model, key, meta)

    return load_or_build(paths["lock"], load, build, discard, force=force)
