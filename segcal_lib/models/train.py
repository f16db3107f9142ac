"""The training loop: AdamW, poly learning rate with linear warmup, scale/crop/flip augmentation, cross-entropy.

:class:`TrainConfig` is the full configuration of a training run (the cache key of :func:`~segcal_lib.models.cache.
train_or_load` hashes all of it). :func:`train` seeds, creates the model and runs :func:`train_model`; both return a
history with the loss of every step.

Determinism: the sample order and every augmentation draw come from generators seeded by ``cfg.seed`` and keyed by the
position in the sample stream, so a run gives the same losses whatever ``num_workers`` is. On a CPU two runs are
identical; on a GPU some kernels (e.g. the backward of bilinear upsampling) use atomics and differ in the last bits.
Training images are used at 8-bit precision, as a camera writes them, whether or not they are kept in memory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from segcal_lib.checks import check_images, check_labels
from segcal_lib.config import Profile, get_device, get_profile, seed_everything
from segcal_lib.data.base import IGNORE_INDEX
from segcal_lib.models.segnet import count_parameters, create_model, get_model_config

__all__ = ["TrainConfig", "augment", "evaluate", "poly_lr_factor", "train", "train_model"]

# Datasets whose samples take less than this (as 8-bit images) are read once and kept in memory: synthetic scenes are
# generated on the fly and real images decoded from disk, both slower than a training step on a GPU (2000 full-profile
# scenes at 360x480 take 1.4 GB, well within a Colab runtime's 12 GB).
MEMORY_CACHE_BYTES = 4 << 30
# Steps between two reads of the loss by the host (each read waits for the device to finish the queued steps).
_LOSS_READ_EVERY = 10


@dataclass(frozen=True)
class TrainConfig:
    """The full configuration of a training run; every field goes into the cache key.

    Attributes
    ----------
    model : registry name (see :func:`~segcal_lib.models.list_models`).
    num_classes : number of classes of the data set.
    data : a JSON-serialisable description of the training data, e.g. ``{"name": "synthetic", "split": "train",
        "n": 192, "size": [96, 128], "seed": 0}``. It does not load anything; it names the data in the cache key, so
        two configurations that train on different data never share a checkpoint.
    crop_size : side of the square training crop (pixels); smaller images are padded with the ignore label.
    iters : optimisation steps.
    batch_size : images per step.
    lr : peak learning rate of AdamW (reached after ``warmup_iters``).
    weight_decay : AdamW weight decay, applied to conv/linear weights only (not to norms and biases).
    seed : seeds the initialisation, the sample order and the augmentation.
    pretrained : start the backbone from ImageNet weights when they can be had.
    warmup_iters : steps of linear warmup from ``lr / 100``; ``None`` means 5% of ``iters``.
    poly_power : exponent of the poly decay ``(1 - step / iters) ** poly_power``.
    scale_range : (min, max) of the random rescaling factor, drawn uniformly.
    hflip : random horizontal flips with probability 1/2.
    amp : mixed precision on CUDA (bfloat16 where supported, else float16 with a grad scaler); ignored on a CPU.
    """

    model: str
    num_classes: int
    data: Any = field(default_factory=dict)
    crop_size: int = 64
    iters: int = 500
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-2
    seed: int = 0
    pretrained: bool = False
    warmup_iters: int | None = None
    poly_power: float = 0.9
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True
    amp: bool = False

    def __post_init__(self):
        get_model_config(self.model)  # ValueError naming the known models
        for name in ("num_classes", "crop_size", "iters", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_classes > IGNORE_INDEX:
            raise ValueError(f"num_classes must be at most {IGNORE_INDEX} (255 is the ignore label), "
                             f"got {self.num_classes}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.poly_power >= 0):
            raise ValueError(f"lr must be > 0, weight_decay and poly_power >= 0; got lr={self.lr}, "
                             f"weight_decay={self.weight_decay}, poly_power={self.poly_power}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {self.scale_range}")
        if self.warmup_iters is not None and not 0 <= self.warmup_iters <= self.iters:
            raise ValueError(f"warmup_iters must be in [0, iters={self.iters}] or None, got {self.warmup_iters}")
        try:
            json.dumps(self.data, sort_keys=True)
        except TypeError as exc:
            raise ValueError(f"data must be JSON-serialisable (a dict of names, numbers), got {self.data!r}") from exc
        # Normalise so that equal configurations serialise equally (a list from JSON vs a tuple).
        object.__setattr__(self, "scale_range", (float(lo), float(hi)))

    @property
    def warmup(self) -> int:
        """The number of warmup steps actually used."""
        return self.warmup_iters if self.warmup_iters is not None else max(1, round(0.05 * self.iters))

    def to_dict(self) -> dict:
        """All fields as plain JSON types (what the cache key hashes)."""
        d = asdict(self)
        d["scale_range"] = list(d["scale_range"])
        return json.loads(json.dumps(d, sort_keys=True))

    @classmethod
    def from_dict(cls, d: Mapping) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}; expected a subset of {sorted(known)}")
        d = dict(d)
        if "scale_range" in d:
            d["scale_range"] = tuple(d["scale_range"])
        return cls(**d)

    @classmethod
    def from_profile(cls, profile: Profile | str | None = None, *, num_classes: int, data: Any,
                     **overrides) -> TrainConfig:
        """A configuration with the profile's model, crop, iters, batch size, lr, scale range, pretrained and amp
        settings; ``overrides`` win."""
        p = profile if isinstance(profile, Profile) else get_profile(profile)
        base = dict(model=p.model, crop_size=p.crop_size, iters=p.train_iters, batch_size=p.batch_size, lr=p.lr,
                    scale_range=tuple(p.scale_range), pretrained=p.pretrained, amp=p.amp)
        base.update(overrides)
        return cls(num_classes=num_classes, data=data, **base)

    def replace(self, **changes) -> TrainConfig:
        return replace(self, **changes)


def poly_lr_factor(step: int, iters: int, warmup: int, power: float = 0.9, warmup_ratio: float = 0.01) -> float:
    """Multiplier of the peak lr at ``step``: linear warmup from ``warmup_ratio`` to 1, poly decay to 0 at ``iters``.

    The warmup multiplies the poly factor (as in MMSegmentation), so the curve is continuous.
    """
    poly = (1.0 - min(step, iters) / iters) ** power
    if step < warmup:
        poly *= warmup_ratio + (1.0 - warmup_ratio) * step / warmup
    return poly


def augment(image: torch.Tensor, label: torch.Tensor, crop_size: int, scale_range: tuple[float, float] = (0.5, 2.0),
            hflip: bool = True, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rescale, random crop (padding with the ignore label where needed) and random horizontal flip.

    Parameters
    ----------
    image : float tensor (3, H, W).
    label : integer tensor (H, W).
    crop_size : side of the square output.
    scale_range : the rescaling factor is drawn uniformly from this range; sizes are rounded to whole pixels.
    hflip : flip left-right with probability 1/2.
    generator : source of randomness (CPU ``torch.Generator``).

    Returns
    -------
    image (3, crop_size, crop_size) float32, label (crop_size, crop_size) int64. Padded image pixels are 0 and padded
    label pixels are ``IGNORE_INDEX``, so padding never contributes to the loss.
    """
    if image.dim() != 3 or label.dim() != 2 or image.shape[-2:] != label.shape:
        raise ValueError(f"image must be (3, H, W) and label (H, W) of the same size, got {tuple(image.shape)} and "
                         f"{tuple(label.shape)}")
    h, w = label.shape
    lo, hi = scale_range
    s = lo + (hi - lo) * torch.rand((), generator=generator).item()
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) != (h, w):
        image = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0]
        # Nearest on a float copy of the ids: exact for ids <= 255.
        label = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest")[0, 0]
    image, label = image.float(), label.long()
    ph, pw = max(crop_size - nh, 0), max(crop_size - nw, 0)
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), value=0.0)
        label = F.pad(label, (0, pw, 0, ph), value=IGNORE_INDEX)
    y = int(torch.randint(0, image.shape[1] - crop_size + 1, (), generator=generator))
    x = int(torch.randint(0, image.shape[2] - crop_size + 1, (), generator=generator))
    image = image[:, y:y + crop_size, x:x + crop_size]
    label = label[y:y + crop_size, x:x + crop_size]
    if hflip and torch.rand((), generator=generator).item() < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image.contiguous(), label.contiguous()


class _EightBit(Dataset):
    """A data set's (image, label) as uint8: images as a camera writes them, labels as ids (255 = ignore).

    Training always sees these 8-bit images, whether they are read on the fly or kept in memory (exact for images
    decoded from 8-bit files, within 1/510 otherwise); other items of a sample (names) are dropped. Each sample is
    checked here, on the CPU and before any indexing: images float in [0, 1] and finite, labels integer in
    [0, num_classes) or 255 (a label of 256 or -1 would otherwise wrap around in uint8, and one >= num_classes crash
    the loss, on CUDA with a device-side assert).
    """

    def __init__(self, dataset: Dataset, num_classes: int):
        self.dataset, self.num_classes = dataset, num_classes

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, label = self.dataset[i][:2]
        check_images(image, name=f"images (training sample {i})", ndim=3)
        check_labels(label, self.num_classes, IGNORE_INDEX, shape=image.shape[1:], name=f"labels (training sample {i})")
        return (image.float() * 255).round_().clamp_(0, 255).to(torch.uint8), label.to(torch.uint8)


class _InMemory(Dataset):
    """Reads every item of a data set once (an :class:`_EightBit` one for training: a quarter of float32's memory), in
    ``num_workers`` processes when > 0."""

    def __init__(self, dataset: Dataset, progress: bool, num_workers: int = 0):
        loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
        self.items = list(tqdm(loader, desc="reading training data", disable=not progress, leave=False))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _kept_in_memory(dataset: Dataset) -> Dataset:
    """An evaluation set read once into memory, items as the data set returns them (no 8-bit rounding, so the curves
    are the same), when its float32 images fit the memory cache's limit. The training curves evaluate the same images
    every few steps, and reading, decoding or rendering (procedural scenes) each again every time cost as much as
    training the factor chapters' small models (measured: about 14 s per run of 21 evaluations of 96 images, 72x96)."""
    if len(dataset) and 4 * _estimated_bytes(dataset) < MEMORY_CACHE_BYTES:
        return _InMemory(dataset, progress=False)
    return dataset


class _Augmented(Dataset):
    """Maps a key (index, seed) to an augmented crop, so the result depends on the key only (not on worker order)."""

    def __init__(self, dataset: Dataset, cfg: TrainConfig):
        self.dataset, self.cfg = dataset, cfg

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        image, label = self.dataset[index]  # uint8, from _EightBit or _InMemory
        gen = torch.Generator().manual_seed(int(seed))
        with _single_thread():
            return augment(image.float().div_(255), label.long(), self.cfg.crop_size, self.cfg.scale_range,
                           self.cfg.hflip, gen)


@contextlib.contextmanager
def _single_thread():
    """Run small per-sample ops on one thread: on a busy 2-core machine, waking a second thread for a 100x100 resize
    costs several times the resize itself (measured: 11 ms vs 2 ms per sample)."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _sample_keys(n: int, total: int, seed: int) -> list[tuple[int, int]]:
    """``total`` (index, augmentation seed) pairs: epochs of random permutations of ``range(n)``."""
    gen = torch.Generator().manual_seed(seed)
    epochs = math.ceil(total / n)
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])[:total]
    seeds = torch.randint(0, 2**62, (total,), generator=gen)
    return list(zip(order.tolist(), seeds.tolist(), strict=True))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # Weight decay on norms and biases only shrinks them towards 0 for no regularisation benefit (timm's convention).
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _check_dataset(dataset: Dataset, cfg: TrainConfig) -> None:
    if len(dataset) == 0:
        raise ValueError("dataset is empty")
    n = getattr(dataset, "num_classes", None)
    if n is not None and n != cfg.num_classes:
        raise ValueError(f"cfg.num_classes ({cfg.num_classes}) differs from dataset.num_classes ({n})")


def _estimated_bytes(dataset: Dataset) -> int:
    image, label = dataset[0][:2]
    return len(dataset) * (image.numel() + label.numel())  # both kept as 8-bit


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, device: torch.device | str | None = None,
             batch_size: int = 16) -> dict:
    """Mean cross-entropy over the valid pixels of ``dataset`` (whole images) and its mIoU.

    Used for the training curves; it leaves the model in the mode it found it in and draws no random numbers, so
    evaluating during training does not change what is trained.

    Returns
    -------
    dict with ``loss`` (float, mean over valid pixels) and ``miou`` (float, fraction; classes absent from both labels
    and predictions are left out, as in :class:`~segcal_lib.metrics.SegmentationMeter`).
    """
    from segcal_lib.metrics import SegmentationMeter  # metrics is a floor below; imported here to keep start-up light

    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    meter, loss_sum, n_valid = None, 0.0, 0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i][:2] for i in range(start, min(start + batch_size, len(dataset)))]
        images = torch.stack([im for im, _ in items]).float().to(device)
        labels = torch.stack([lb for _, lb in items]).long().to(device)
        logits = model(images).float()
        meter = meter or SegmentationMeter(logits.shape[1])
        valid = labels != IGNORE_INDEX
        loss_sum += F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum").item()
        n_valid += int(valid.sum())
        meter.update(logits.argmax(1).cpu(), labels.cpu())
    model.train(was_training)
    return {"loss": loss_sum / max(n_valid, 1), "miou": meter.compute()["miou"]}


def train_model(model: nn.Module, dataset: Dataset, cfg: TrainConfig, *, device: torch.device | str | None = None,
                progress: bool = True, num_workers: int | None = None, cache_in_memory: bool | None = None,
                eval_sets: Mapping[str, Dataset] | None = None, eval_every: int | None = None) -> dict:
    """Train ``model`` in place on ``dataset`` as ``cfg`` says; leave it in eval mode on ``device``.

    Parameters
    ----------
    model : a segmentation model mapping images (N, 3, h, w) in [0, 1] to logits (N, C, h, w).
    dataset : a ``Dataset`` whose items start with ``image`` (3, H, W) float in [0, 1] and ``label`` (H, W) integer with
        ids in [0, C) or 255 (a :class:`~segcal_lib.data.base.Sample` does).
    cfg : the configuration (``cfg.model``, ``cfg.pretrained`` are not used here: the model is given).
    device : where to train; default :func:`~segcal_lib.config.get_device`.
    progress : show a tqdm bar with the running loss.
    num_workers : DataLoader workers (reading the data and augmenting); the result does not depend on it. Default: 0
        on a CPU (the training step needs the cores), up to 8 on a GPU.
    cache_in_memory : read the data set once into memory (default: when its 8-bit images take under 4 GiB).
    eval_sets : optional {name: Dataset} evaluated (whole images, :func:`evaluate`) every ``eval_every`` steps and
        after the last one, for the training curves. Evaluation does not change what is trained.
    eval_every : steps between evaluations (default: a twentieth of ``cfg.iters``).

    Returns
    -------
    history : dict with ``loss`` and ``lr`` (lists, one entry per step), ``train_time_s`` (without evaluation),
        ``eval_time_s``, ``steps_per_s``, ``iters``, ``final_loss`` (mean loss of the last 5% of steps),
        ``num_params`` and, with ``eval_sets``, ``curves``: {``step``: [...], ``<name>_loss``: [...],
        ``<name>_miou``: [...]}.
    """
    _check_dataset(dataset, cfg)
    device = torch.device(device) if device is not None else get_device()
    if num_workers is None:
        num_workers = 0 if device.type == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 1))
    if cache_in_memory is None:
        cache_in_memory = _estimated_bytes(dataset) < MEMORY_CACHE_BYTES
    source = _EightBit(dataset, cfg.num_classes)
    if cache_in_memory:
        source = _InMemory(source, progress, num_workers)
    keys = _sample_keys(len(source), cfg.iters * cfg.batch_size, cfg.seed)
    loader = DataLoader(_Augmented(source, cfg), batch_size=cfg.batch_size, sampler=keys, num_workers=num_workers,
                        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=False)

    model.to(device).train()
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    warmup = cfg.warmup
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: poly_lr_factor(step, cfg.iters, warmup, cfg.poly_power))
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    losses, lrs, pending = [], [], []
    running = None
    eval_sets = {name: _kept_in_memory(data) for name, data in (eval_sets or {}).items()}
    eval_every = eval_every or max(1, cfg.iters // 20)
    curves = {"step": [], **{f"{n}_{k}": [] for n in eval_sets for k in ("loss", "miou")}}
    eval_time = 0.0

    def record(step):
        nonlocal eval_time
        t0 = time.perf_counter()
        curves["step"].append(step)
        for name, data in eval_sets.items():
            for k, v in evaluate(model, data, device).items():
                curves[f"{name}_{k}"].append(v)
        eval_time += time.perf_counter() - t0

    if eval_sets:
        record(0)
    start = time.perf_counter()
    bar = tqdm(loader, total=cfg.iters, desc=f"train {cfg.model}", disable=not progress, dynamic_ncols=True)
    for step, (images, labels) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        lrs.append(optimizer.param_groups[0]["lr"])
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            logits = model(images)
        # Mean over the valid pixels, written so that an all-padding batch gives 0 (not NaN) without asking the
        # host whether it is one: every host read waits for the GPU to finish the step.
        n_valid = (labels != IGNORE_INDEX).sum().clamp_min(1)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum") / n_valid
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        pending.append(loss.detach())
        if len(pending) == _LOSS_READ_EVERY or step == cfg.iters - 1:
            # One host read per _LOSS_READ_EVERY steps: the losses, the divergence check and the progress bar.
            values = torch.stack(pending).tolist()
            pending.clear()
            first = step + 1 - len(values)
            for k, value in enumerate(values):
                if not math.isfinite(value):
                    raise FloatingPointError(f"training diverged at step {first + k} (loss={value}); lower cfg.lr")
                running = value if running is None else 0.95 * running + 0.05 * value
            losses.extend(values)
            bar.set_postfix(loss=f"{running:.3f}", lr=f"{lrs[-1]:.2e}", refresh=False)
        if eval_sets and ((step + 1) % eval_every == 0 or step == cfg.iters - 1):
            record(step + 1)
    bar.close()
    elapsed = time.perf_counter() - start - eval_time
    model.eval()
    tail = losses[-max(1, len(losses) // 20):]
    history = {"loss": losses, "lr": lrs, "iters": len(losses), "train_time_s": elapsed, "eval_time_s": eval_time,
               "steps_per_s": len(losses) / max(elapsed, 1e-9), "final_loss": sum(tail) / len(tail),
               "num_params": count_parameters(model)}
    if eval_sets:
        history["curves"] = curves
    return history


def train(cfg: TrainConfig, dataset: Dataset, *, device: torch.device | str | None = None, progress: bool = True,
          num_workers: int | None = None, cache_in_memory: bool | None = None,
          eval_sets: Mapping[str, Dataset] | None = None, eval_every: int | None = None) -> tuple[nn.Module, dict]:
    """Seed with ``cfg.seed``, create ``cfg.model`` and train it; return ``(model, history)``.

    The model is in eval mode on ``device``; ``history`` is as in :func:`train_model`, plus ``pretrained_loaded``.
    """
    _check_dataset(dataset, cfg)
    seed_everything(cfg.seed)
    model = create_model(cfg.model, cfg.num_classes, pretrained=cfg.pretrained)
    history = train_model(model, dataset, cfg, device=device, progress=progress, num_workers=num_workers,
                          cache_in_memory=cache_in_memory, eval_sets=eval_sets, eval_every=eval_every)
    history["pretrained_loaded"] = bool(model.pretrained_loaded)
    return model, history
