"""Train-or-load: a trained model is cached under ``cache_dir("models")``, keyed by a hash of its full configuration.

Files per model, all written atomically (temporary file, then ``os.replace``):

- ``<key>.pt``   the state dict (the completion marker: present means finished);
- ``<key>.json`` metadata: the configuration, library version, training time, iters, final loss, parameter count,
  whether ImageNet weights were loaded, and the loss/lr history.

Two notebooks that build the same model at once serialise on an ``fcntl`` lock (``<key>.lock``): the first trains, the
second waits and then loads. (Without ``fcntl``, on Windows, there is no lock and both may train; the result is the
same.)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

import segcal_lib
from segcal_lib.config import cache_dir, get_device
from segcal_lib.fileio import atomic_write, file_lock
from segcal_lib.models.segnet import create_model, get_model_config
from segcal_lib.models.train import TrainConfig, train

__all__ = ["CACHE_FORMAT", "atomic_write", "config_key", "file_lock", "load_metadata", "model_paths", "train_or_load"]

# Bump when the checkpoint layout changes so that old files are not misread.
CACHE_FORMAT = 1


def config_key(cfg: TrainConfig) -> str:
    """``<model>-<16 hex digits>``: a hash of every field of ``cfg``, the model's registry entry (so an edited
    architecture never loads an old checkpoint), the library version and the cache format."""
    payload = {"config": cfg.to_dict(), "architecture": get_model_config(cfg.model).to_dict(),
               "version": segcal_lib.__version__, "format": CACHE_FORMAT}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return f"{cfg.model}-{digest}"


def model_paths(key: str, root: str | Path | None = None) -> dict[str, Path]:
    """Paths of the checkpoint (``ckpt``), metadata (``meta``) and lock (``lock``) files of ``key``."""
    root = Path(root) if root is not None else cache_dir("models")
    root.mkdir(parents=True, exist_ok=True)
    return {"ckpt": root / f"{key}.pt", "meta": root / f"{key}.json", "lock": root / f"{key}.lock"}


def load_metadata(key: str, root: str | Path | None = None) -> dict | None:
    """The metadata dict of a cached model, or None when it is not cached."""
    paths = model_paths(key, root)
    if not paths["ckpt"].exists() or not paths["meta"].exists():
        return None
    return json.loads(paths["meta"].read_text())


def _load(cfg: TrainConfig, paths: dict[str, Path], device: torch.device) -> tuple[nn.Module, dict]:
    meta = json.loads(paths["meta"].read_text())
    model = create_model(cfg.model, cfg.num_classes, pretrained=False)
    state = torch.load(paths["ckpt"], map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.pretrained_loaded = bool(meta.get("pretrained_loaded", False))
    return model.to(device).eval(), meta


def _attach(model: nn.Module, key: str, meta: dict) -> nn.Module:
    model.cache_key = key
    model.train_meta = meta
    return model


def train_or_load(cfg: TrainConfig, dataset: Dataset | Callable[[], Dataset], *,
                  device: torch.device | str | None = None, progress: bool = True, root: str | Path | None = None,
                  force: bool = False, num_workers: int | None = None, verbose: bool = True,
                  eval_sets: Mapping[str, Dataset] | Callable[[], Mapping[str, Dataset]] | None = None) -> nn.Module:
    """Return the model ``cfg`` describes: loaded from the cache when present, else trained and cached.

    Parameters
    ----------
    cfg : the full training configuration; its hash (with the library version) is the cache key.
    dataset : the training ``Dataset``, or a zero-argument callable returning it (called only when training is
        needed, so a cached model costs no data loading).
    device : where the returned model lives (and trains); default :func:`~segcal_lib.config.get_device`.
    progress : tqdm bar while training.
    root : cache folder; default ``cache_dir("models")``.
    force : retrain even when cached (the new checkpoint replaces the old one).
    num_workers : DataLoader workers for training (default: 0 on a CPU, up to 8 on a GPU).
    verbose : print one line saying whether the model was loaded or trained.
    eval_sets : {name: Dataset} (or a zero-argument callable returning it) evaluated during training for the
        training curves (``train_meta["history"]["curves"]``); not part of the cache key, since evaluating does not
        change what is trained.

    Returns
    -------
    The model in eval mode on ``device``, with attributes ``cache_key`` (str), ``train_meta`` (dict: ``train_time_s``,
    ``iters``, ``final_loss``, ``num_params``, ``pretrained_loaded``, ``config``, ``history``, ...) and
    ``pretrained_loaded``.
    """
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    device = torch.device(device) if device is not None else get_device()
    key = config_key(cfg)
    paths = model_paths(key, root)

    def report_loaded(meta):
        if verbose:
            print(f"loaded cached model {key} (trained in {meta['train_time_s']:.0f} s, {meta['iters']} iters, "
                  f"final loss {meta['final_loss']:.3f})")
        if cfg.pretrained and not meta.get("pretrained_loaded", False):
            print(f"note: {key} was trained from random initialisation (ImageNet weights were unavailable then)")

    # Fast path without the lock: the checkpoint appears by an atomic rename, after the metadata.
    if not force and paths["ckpt"].exists() and paths["meta"].exists():
        model, meta = _load(cfg, paths, device)
        report_loaded(meta)
        return _attach(model, key, meta)

    with file_lock(paths["lock"]):
        # Another process may have finished while this one waited for the lock.
        if not force and paths["ckpt"].exists() and paths["meta"].exists():
            model, meta = _load(cfg, paths, device)
            report_loaded(meta)
            return _attach(model, key, meta)
        if verbose:
            print(f"training {key} ({cfg.iters} iters, batch {cfg.batch_size}, crop {cfg.crop_size}) on {device} ...")
        data = dataset() if callable(dataset) and not isinstance(dataset, Dataset) else dataset
        evals = eval_sets() if callable(eval_sets) else eval_sets
        model, history = train(cfg, data, device=device, progress=progress, num_workers=num_workers, eval_sets=evals)
        meta = {
            "key": key,
            "config": cfg.to_dict(),
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
            "eval_time_s": history["eval_time_s"],
            "history": {"loss": history["loss"], "lr": history["lr"], **({"curves": history["curves"]}
                                                                          if "curves" in history else {})},
        }
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        # Metadata first: the checkpoint's appearance is what marks the entry complete.
        with atomic_write(paths["meta"], "w") as fh:
            json.dump(meta, fh)
        with atomic_write(paths["ckpt"]) as fh:
            torch.save(state, fh)
        if verbose:
            print(f"trained {key} in {meta['train_time_s']:.0f} s (final loss {meta['final_loss']:.3f}); "
                  f"saved to {paths['ckpt']}")
        return _attach(model, key, meta)
