"""The factor sweeps of chapters 4-7: capacity, crop size, multi-scale testing, prediction correctness.

Every sweep trains or loads its models through :func:`segcal_lib.pipeline.get_model` (so each model is trained once,
whichever chapter asks first), stores its logits once through :func:`segcal_lib.pipeline.get_logits`, and returns a
:class:`Sweep`: tidy DataFrames that a chapter plots with seaborn.

- ``metrics``: one row per model x seed x split x setting x metric, with the value and its 95% bootstrap interval over
  images (``ci_low``, ``ci_high``), see :func:`segcal_lib.analysis.image_sums.metric_rows`;
- ``models``: one row per trained model: parameters, steps, training time, final loss, plateau step, and the two
  convergence tests (:mod:`segcal_lib.analysis.convergence`);
- ``curves``: the training-loss curves.

The sizes live in :data:`FACTOR_SETTINGS`, one entry per profile, with step budgets per data set where the data need
them. The models of all four chapters are small and are trained on small images so that, in the ``fast`` profile, all
of them (and the half-length runs of chapters 4 and 5, :meth:`FactorSettings.scaled`) can be trained once in CI on two
CPU cores; the chapters then read them from the cache.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pandas as pd

from segcal_lib import pipeline
from segcal_lib.analysis import convergence
from segcal_lib.analysis.correctness import correctness_sums
from segcal_lib.analysis.image_sums import ImageSums, metric_rows, paired_stat
from segcal_lib.config import Profile, get_profile
from segcal_lib.models import config_key, get_model_config, load_metadata

__all__ = ["FACTOR_SETTINGS", "FactorSettings", "Sweep", "capacity_sweep", "correctness_analysis", "crop_sweep",
           "factor_profile", "factor_settings", "get_factor_model", "multiscale_settings", "multiscale_sweep",
           "training_sentence"]


@dataclass(frozen=True)
class FactorSettings:
    """Sizes of the factor chapters in one profile.

    Attributes
    ----------
    image_size : (height, width) of the images (training and test).
    batch_size, lr, scale_range : training settings shared by every model (AdamW, poly schedule, random rescaling).
    seeds : training seeds per point.
    capacity_crop : training crop of the capacity sweep, and of the base model of chapters 6 and 7.
    steps : ``((model, crop), iters)`` pairs: the training steps each model gets at each crop, sized by training it at
        growing lengths (the measurements are beside the tables); bigger models get more.
    dataset_steps : ``(dataset, steps)`` pairs: a data set that needs other budgets than ``steps`` (each table holds
        every point of both sweeps); a data set not named here uses ``steps``.
    capacity_models : the models of the capacity sweep, smallest first.
    base_model : the architecture of the crop sweep and of chapters 6 and 7.
    crop_sizes : training crops of the crop sweep.
    scales : test scales of multi-scale testing (with horizontal flips).
    boundary_radius : pixels within this distance of another label are boundary pixels.
    """

    image_size: tuple[int, int]
    batch_size: int
    lr: float
    scale_range: tuple[float, float]
    seeds: tuple[int, ...]
    capacity_crop: int
    steps: tuple[tuple[tuple[str, int], int], ...]
    capacity_models: tuple[str, ...]
    base_model: str
    crop_sizes: tuple[int, ...]
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    boundary_radius: int = 1
    dataset_steps: tuple[tuple[str, tuple[tuple[tuple[str, int], int], ...]], ...] = ()

    def __post_init__(self):
        for name in (*self.capacity_models, self.base_model):
            get_model_config(name)  # ValueError naming the known models
        for dataset in (None, *dict(self.dataset_steps)):
            for model in self.capacity_models:
                self.iters(model, self.capacity_crop, dataset)
            for crop in self.crop_sizes:
                self.iters(self.base_model, crop, dataset)
        if self.capacity_crop not in self.crop_sizes or self.base_model not in self.capacity_models:
            raise ValueError("the base model at the capacity crop must be one point of both sweeps (shared models)")

    def iters(self, model: str, crop: int, dataset: str | None = None) -> int:
        """Training steps of ``model`` at training crop ``crop`` on ``dataset`` (default: the ``steps`` table)."""
        table = dict(dict(self.dataset_steps).get(dataset, self.steps))
        if (model, crop) not in table:
            where = f" on {dataset!r}" if dataset in dict(self.dataset_steps) else ""
            raise ValueError(f"no step budget for model {model!r} at crop {crop}{where}; known: {sorted(table)}")
        return table[(model, crop)]

    def scaled(self, factor: float) -> FactorSettings:
        """The same settings with every step budget (of every data set) times ``factor``, rounded, at least 2.

        A model trained with the scaled budget is a run of its own (its learning-rate schedule ends at the new step
        count), not a checkpoint of the longer run; chapters 4 and 5 use ``scaled(0.5)`` to ask whether a sweep's
        verdict depends on how long its models were trained.
        """
        if not factor > 0:
            raise ValueError(f"factor must be a positive number, got {factor!r}")

        def scale(table):
            return tuple((point, max(2, round(iters * factor))) for point, iters in table)

        return replace(self, steps=scale(self.steps),
                       dataset_steps=tuple((name, scale(table)) for name, table in self.dataset_steps))


FACTOR_SETTINGS: dict[str, FactorSettings] = {
    "fast": FactorSettings(
        image_size=(72, 96), batch_size=16, lr=3e-3, scale_range=(0.75, 1.5), seeds=(0, 1), capacity_crop=48,
        capacity_models=("resnet10t_sixteenth_fpn", "resnet10t_eighth_fpn", "convnext_d8_fpn", "resnet10t_quarter_fpn",
                         "convnext_d16_fpn"),
        base_model="resnet10t_quarter_fpn", crop_sizes=(24, 30, 36, 48),
        # Steps per (model, crop), measured on the synthetic scenes (96 training scenes). Every crop of the crop sweep
        # gets the same 1500 steps, so that training length does not confound crop size (crop 48 is shared with the
        # capacity sweep). Per seed 0 / 1: CPU-seconds on one thread of the two-core machine (under load), and the
        # plateau step as a fraction of the run (at most 0.80 passes):
        #   resnet10t_sixteenth 48px  600 steps: 31 / 32 s, 0.76 / 0.72
        #   resnet10t_eighth    48px 1500 steps: 49 / 49 s, 0.73 / 0.72 (1000 steps: 0.72 / 0.89)
        #   convnext_d8         48px 2000 steps: 76 / 83 s, 0.74 / 0.78
        #   resnet10t_quarter   48px 1500 steps: 54 / 53 s, 0.78 / 0.74 (1000 steps: 0.76 / 0.90)
        #   convnext_d16        48px 1500 steps: 69 / 69 s, 0.81 / 0.76 (2000 steps: 0.80; 3000: 0.85, seed 0)
        #   resnet10t_quarter   24px 1000 steps: 37 / 37 s, 0.67 / 0.79
        #   resnet10t_quarter   30px 1000 steps: 36 / 35 s, 0.76 / 0.89 (1500 steps: 45 / 45 s, 0.89 / 0.72)
        #   resnet10t_quarter   36px 1000 steps: 43 / 41 s, 0.72 / 0.74
        # Left out: crop 16 (1500 steps: 0.81 / 0.88), crop 72 = the whole image height (1000 steps: 0.84, seed 0),
        # ConvNeXt-d24 (the ladder spans 27x in parameters without it). Seeds of one configuration end at the same
        # loss but can fall on either side of the 0.80 line: late in a poly schedule the smoothed loss still wanders
        # by about 3%. On 384 scenes instead of 96 runs plateaued later (ResNet-1/8: 0.80; crop 24: 0.96).
        steps=((("resnet10t_sixteenth_fpn", 48), 600), (("resnet10t_eighth_fpn", 48), 1500),
               (("convnext_d8_fpn", 48), 2000), (("resnet10t_quarter_fpn", 48), 1500), (("convnext_d16_fpn", 48), 1500),
               (("resnet10t_quarter_fpn", 24), 1500), (("resnet10t_quarter_fpn", 30), 1500),
               (("resnet10t_quarter_fpn", 36), 1500)),
        # CamVid (367 training frames at the same 72x96): the final training loss falls by 10-18% per doubling of the
        # steps (like a power of the step count), so the plateau test rarely passes at any length. Each budget below is
        # the shortest tried (1x, 2x, 4x the synthetic one) at which both seeds' best validation loss had stopped
        # improving (`stopped_improving`), with two constraints: a bigger model never gets fewer steps than a smaller
        # one, and every crop of the crop sweep gets the same steps (so ResNet-1/4 at 48px and ConvNeXt-d16 get more
        # than their 1500-step runs needed; ConvNeXt-d16's 3000-step seed 1 was still improving, which shows how noisy a
        # single validation verdict is).
        # Plateau at (fraction of the run) and late validation improvement, seed 0 / 1:
        #   resnet10t_sixteenth 48px  600 steps: 0.80 / 0.67, -3.2% / +1.5%
        #   resnet10t_eighth    48px 1500 steps: 0.75 / 0.80, -2.6% / -11.5%
        #   convnext_d8         48px 2000 steps: 0.82 / 0.84, -13.6% / -11.2% (4000: 0.84 / 0.81, -1.6% / -2.5%)
        #   resnet10t_quarter   48px 3000 steps: 0.79 / 0.79, -4.7% / -5.6% (1500: 0.77 / 0.83, -2.0% / -1.4%)
        #   convnext_d16        48px 6000 steps: 0.87 / 0.87, +1.2% / +0.4% (3000: 0.83 / 0.84, -0.2% / +8.0%)
        #   resnet10t_quarter   24px 3000 steps: 0.84 / 0.88, -9.6% / -7.6% (1500: 0.88 / 0.87, -0.3% / +1.8%)
        #   resnet10t_quarter   30px 3000 steps: 0.82 / 0.91, -1.6% / -9.3% (1500: 0.78 / 0.71, -8.3% / +12.5%)
        #   resnet10t_quarter   36px 3000 steps: 0.82 / 0.84, -8.8% / -1.0% (1500: 0.78 / 0.75, -3.2% / +2.7%)
        # The crop sweep trains every crop for the same 3000 steps (crop 48 is shared with the capacity sweep).
        dataset_steps=(("camvid", ((("resnet10t_sixteenth_fpn", 48), 600), (("resnet10t_eighth_fpn", 48), 1500),
                                   (("convnext_d8_fpn", 48), 2000), (("resnet10t_quarter_fpn", 48), 3000),
                                   (("convnext_d16_fpn", 48), 6000), (("resnet10t_quarter_fpn", 24), 3000),
                                   (("resnet10t_quarter_fpn", 30), 3000), (("resnet10t_quarter_fpn", 36), 3000))),)),
    # Sized for a GPU (not run here: see benchmarks/gpu_factors.sh).
    "full": FactorSettings(
        image_size=(360, 480), batch_size=8, lr=5e-4, scale_range=(0.5, 2.0), seeds=(0, 1, 2), capacity_crop=320,
        capacity_models=("resnet10t_quarter_fpn", "resnet10t_half_fpn", "convnext_atto_fpn", "resnet10t_fpn",
                         "convnext_pico_fpn", "resnet18_fpn", "resnet34_fpn"),
        base_model="resnet18_fpn", crop_sizes=(160, 224, 320, 360), boundary_radius=3,
        steps=((("resnet10t_quarter_fpn", 320), 4000), (("resnet10t_half_fpn", 320), 4000),
               (("convnext_atto_fpn", 320), 6000), (("resnet10t_fpn", 320), 6000), (("convnext_pico_fpn", 320), 8000),
               (("resnet18_fpn", 320), 8000), (("resnet34_fpn", 320), 10000), (("resnet18_fpn", 160), 8000),
               (("resnet18_fpn", 224), 8000), (("resnet18_fpn", 360), 8000))),
}


def factor_settings(profile: Profile | str | None = None, **overrides) -> FactorSettings:
    """The :class:`FactorSettings` of the active profile (or the one named), with optional field overrides.

    ``steps=`` replaces every step table, the data sets' own ones too, unless ``dataset_steps=`` is given as well.
    """
    name = profile.name if isinstance(profile, Profile) else get_profile(profile).name
    settings = FACTOR_SETTINGS[name]
    if "steps" in overrides:
        overrides.setdefault("dataset_steps", ())
    return replace(settings, **overrides) if overrides else settings


def factor_profile(profile: Profile | str | None = None, settings: FactorSettings | None = None) -> Profile:
    """The profile with the factor chapters' image size (it names the data of every cache entry they use)."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    settings = settings or factor_settings(p)
    return replace(p, image_size=tuple(settings.image_size))


@dataclass
class Sweep:
    """What a sweep returns.

    Attributes
    ----------
    metrics : tidy rows (see the module docstring).
    models : one row per trained model: ``model``, ``family``, ``params``, ``crop_size``, ``seed``, ``iters``,
        ``train_time_s`` (as recorded when it was trained), ``final_loss`` (mean loss of the last tenth of the run),
        ``plateau_step``, ``plateau_loss``, ``plateaued``, ``val_improvement`` and ``stopped_improving`` (the
        validation curve's test, :func:`~segcal_lib.analysis.convergence.stopped_improving`), ``trained_now``
        (trained by this call), ``cpu_time_s`` (CPU seconds of this call, training included) and the cache ``key``.
    curves : training-loss curves (``model``, ``crop_size``, ``seed``, ``step``, ``loss``, ``smoothed``, ...).
    extras : sweep-specific results, e.g. reliability-diagram data or the paired comparisons.
    """

    metrics: pd.DataFrame
    models: pd.DataFrame
    curves: pd.DataFrame
    extras: dict = field(default_factory=dict)


def _overrides(dataset: str, model: str, crop: int, seed: int, s: FactorSettings) -> dict:
    return dict(model=model, crop_size=crop, iters=s.iters(model, crop, dataset), seed=seed, batch_size=s.batch_size,
                lr=s.lr, scale_range=tuple(s.scale_range), pretrained=False)


def get_factor_model(dataset: str, model: str, crop: int, seed: int, profile: Profile | str | None = None,
                     settings: FactorSettings | None = None, progress: bool = False, verbose: bool = False):
    """Train or load ``model`` at training crop ``crop`` with ``seed``, as the factor sweeps do; return (model, cfg).

    ImageNet weights are not used (``pretrained=False``) so that every model of a sweep starts alike. The returned
    model carries ``trained_now`` (bool) and ``cpu_time_s`` (CPU seconds this call spent, training included).
    """
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    s = settings or factor_settings(p)
    fp = factor_profile(p, s)
    kw = _overrides(dataset, model, crop, seed, s)
    cached = load_metadata(config_key(pipeline.train_config(dataset, fp, **kw))) is not None
    start = time.process_time()
    net, cfg = pipeline.get_model(dataset, fp, progress=progress, verbose=verbose, **kw)
    net.trained_now = not cached
    net.cpu_time_s = time.process_time() - start
    return net, cfg


def _model_row(net, cfg) -> dict:
    meta = net.train_meta
    losses, curves = meta["history"]["loss"], meta["history"].get("curves")
    step, smoothed = convergence.plateau_step(losses), convergence.smooth(losses)
    val_gain = convergence.late_improvement(curves["step"], curves["val_loss"]) if curves else float("nan")
    val_done = bool(curves) and convergence.stopped_improving(curves["step"], curves["val_loss"])
    return {"model": cfg.model, "family": get_model_config(cfg.model).family, "params": meta["num_params"],
            "crop_size": cfg.crop_size, "seed": cfg.seed, "iters": meta["iters"], "train_time_s": meta["train_time_s"],
            "final_loss": float(smoothed[-1]), "plateau_step": step, "plateau_loss": float(smoothed[step]),
            "plateaued": convergence.plateaued(losses), "val_improvement": val_gain, "stopped_improving": val_done,
            "trained_now": net.trained_now, "cpu_time_s": net.cpu_time_s, "key": net.cache_key}


def _train_all(dataset, points, profile, settings, progress, verbose):
    """Train or load every (model, crop, seed) of ``points``; returns {point: (net, cfg)}, models and curves frames."""
    nets, rows, histories = {}, [], {}
    for model, crop, seed in points:
        net, cfg = get_factor_model(dataset, model, crop, seed, profile, settings, progress, verbose)
        nets[(model, crop, seed)] = (net, cfg)
        rows.append(_model_row(net, cfg))
        histories[(model, crop, seed)] = net.train_meta["history"]["loss"]
    curves = convergence.curve_frame(histories, ("model", "crop_size", "seed"), every=5)
    return nets, pd.DataFrame(rows), curves


def _store_sums(net, cfg, split, profile, settings, inference=None, verbose=False) -> ImageSums:
    store = pipeline.get_logits(net, cfg, split, factor_profile(profile, settings), inference=inference,
                                progress=False, verbose=verbose)
    return ImageSums.from_batches(store.iter_batches(16), store.num_classes, 10)


def _setup(dataset, profile, settings, seeds):
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    s = settings or factor_settings(p)
    if dataset not in pipeline.DATASET_NAMES:
        raise ValueError(f"dataset must be one of {pipeline.DATASET_NAMES}, got {dataset!r}")
    return p, s, tuple(seeds if seeds is not None else s.seeds)


def capacity_sweep(dataset: str = "synthetic", profile: Profile | str | None = None, *,
                   settings: FactorSettings | None = None, models: Sequence[str] | None = None,
                   seeds: Sequence[int] | None = None, split: str = "test", progress: bool = False,
                   verbose: bool = False) -> Sweep:
    """Chapter 4: models of growing capacity, trained alike (each for its own step budget), tested on whole images.

    Parameters
    ----------
    dataset : "synthetic" or "camvid".
    profile : the profile (default the active one); sizes come from :func:`factor_settings`.
    settings : override the profile's :class:`FactorSettings`.
    models, seeds : default the settings' ``capacity_models`` and ``seeds``.
    split : the evaluated split.
    progress : progress bars while training; verbose: print the cache's loaded/trained lines.

    Returns
    -------
    :class:`Sweep` whose ``metrics`` have columns ``dataset``, ``model``, ``family``, ``params``, ``seed``, ``split``,
    ``metric``, ``value``, ``ci_low``, ``ci_high``, ``n_images``.
    """
    p, s, seeds = _setup(dataset, profile, settings, seeds)
    models = tuple(models or s.capacity_models)
    nets, table, curves = _train_all(dataset, [(m, s.capacity_crop, k) for m in models for k in seeds], p, s,
                                     progress, verbose)
    rows = []
    for (model, _, seed), (net, cfg) in nets.items():
        sums = _store_sums(net, cfg, split, p, s, verbose=verbose)
        keys = {"dataset": dataset, "model": model, "family": get_model_config(model).family,
                "params": net.train_meta["num_params"], "seed": seed, "split": split}
        rows += metric_rows(sums, keys, seed=seed)
    return Sweep(pd.DataFrame(rows), table, curves)


def crop_sweep(dataset: str = "synthetic", profile: Profile | str | None = None, *,
               settings: FactorSettings | None = None, crops: Sequence[int] | None = None,
               seeds: Sequence[int] | None = None, split: str = "test", tests: str = "all", progress: bool = False,
               verbose: bool = False) -> Sweep:
    """Chapter 5: one architecture trained at several crop sizes; each tested at every crop and on whole images.

    Every model is tested with sliding windows at each crop of the sweep (stride two thirds of the window) and on
    whole images. The paper's protocol is the diagonal (windows at the training crop); the rest separates the training
    crop from the test crop. ``tests="protocol"`` computes the diagonal only (one test per model instead of one per
    crop plus whole images).

    Returns
    -------
    :class:`Sweep` whose ``metrics`` have columns ``dataset``, ``model``, ``train_crop``, ``test`` ("sliding" or
    "whole"), ``test_crop`` (window size, or the image height for whole images), ``protocol`` (True on the paper's
    diagonal), ``seed``, ``split``, ``metric``, ``value``, ``ci_low``, ``ci_high``, ``n_images``.
    """
    p, s, seeds = _setup(dataset, profile, settings, seeds)
    if tests not in ("all", "protocol"):
        raise ValueError(f"tests must be 'all' or 'protocol', got {tests!r}")
    crops = tuple(crops or s.crop_sizes)
    nets, table, curves = _train_all(dataset, [(s.base_model, c, k) for c in crops for k in seeds], p, s,
                                     progress, verbose)
    rows = []
    for (model, crop, seed), (net, cfg) in nets.items():
        windows = crops if tests == "all" else (crop,)
        settings_tested = [("sliding", c, {"mode": "slide", "crop_size": c}) for c in windows]
        if tests == "all":
            settings_tested.append(("whole", s.image_size[0], None))
        for test, test_crop, inference in settings_tested:
            sums = _store_sums(net, cfg, split, p, s, inference, verbose)
            keys = {"dataset": dataset, "model": model, "train_crop": crop, "test": test, "test_crop": test_crop,
                    "protocol": test == "sliding" and test_crop == crop, "seed": seed, "split": split}
            rows += metric_rows(sums, keys, seed=seed)
    return Sweep(pd.DataFrame(rows), table, curves)


#: Test settings of the multi-scale chapter: name -> inference keyword arguments (None: whole image, one scale).
def multiscale_settings(settings: FactorSettings) -> dict[str, dict | None]:
    """The test settings chapter 6 compares: single scale, and multi-scale + flip with softmax or logit averaging."""
    scales = list(settings.scales)
    return {"single scale": None,
            "multi-scale + flip, softmax averaged": {"scales": scales, "flip": True, "average": "probs"},
            "multi-scale + flip, logits averaged": {"scales": scales, "flip": True, "average": "logits"}}


def multiscale_sweep(dataset: str = "synthetic", profile: Profile | str | None = None, *,
                     settings: FactorSettings | None = None, seeds: Sequence[int] | None = None,
                     split: str = "test", progress: bool = False, verbose: bool = False) -> Sweep:
    """Chapter 6: the base model tested at one scale and at several scales with flips (softmax or logit averaging).

    Returns
    -------
    :class:`Sweep` whose ``metrics`` have columns ``dataset``, ``model``, ``test``, ``seed``, ``split`` and the metric
    columns; ``extras["reliability"]`` maps (test, seed) to a reliability result (for :mod:`segcal_lib.plots`) and
    ``extras["paired"]`` holds, per (test, seed, metric), the paired difference to single scale as (value, low, high).
    """
    p, s, seeds = _setup(dataset, profile, settings, seeds)
    nets, table, curves = _train_all(dataset, [(s.base_model, s.capacity_crop, k) for k in seeds], p, s,
                                     progress, verbose)
    rows, reliability, paired = [], {}, {}
    tests = multiscale_settings(s)
    for (model, _, seed), (net, cfg) in nets.items():
        sums = {test: _store_sums(net, cfg, split, p, s, inference, verbose) for test, inference in tests.items()}
        base = sums["single scale"]
        for test, su in sums.items():
            rows += metric_rows(su, {"dataset": dataset, "model": model, "test": test, "seed": seed,
                                     "split": split}, seed=seed)
            reliability[(test, seed)] = su.reliability()
            for metric in ("image_ece", "pooled_ece", "miou", "confidence", "over_confidence", "nll"):
                paired[(test, seed, metric)] = paired_stat(base, su, metric, seed=seed)
    return Sweep(pd.DataFrame(rows), table, curves, {"reliability": reliability, "paired": paired})


def correctness_analysis(dataset: str = "synthetic", profile: Profile | str | None = None, *,
                         settings: FactorSettings | None = None, seeds: Sequence[int] | None = None,
                         split: str = "test", progress: bool = False, verbose: bool = False) -> Sweep:
    """Chapter 7: ECE of correct / mispredicted / boundary / interior pixels beside the calibrated stand-in; the oracle.

    Returns
    -------
    :class:`Sweep` whose ``metrics`` have columns ``dataset``, ``model``, ``labels`` ("model", "stand-in",
    "oracle"), ``subset``, ``seed``, ``split``, ``pixels`` and the metric columns. ``extras["reliability"]`` maps
    (labels, subset, seed) to a reliability result; ``extras["removed"]`` maps (oracle subset, seed, metric) to the
    share of that ECE the oracle removes, ``1 - ECE_oracle / ECE``, as (value, low, high) with a paired interval over
    images; ``extras["sums"]`` keeps every :class:`ImageSums`.
    """
    p, s, seeds = _setup(dataset, profile, settings, seeds)
    nets, table, curves = _train_all(dataset, [(s.base_model, s.capacity_crop, k) for k in seeds], p, s,
                                     progress, verbose)
    rows, reliability, removed, all_sums = [], {}, {}, {}
    for (model, _, seed), (net, cfg) in nets.items():
        store = pipeline.get_logits(net, cfg, split, factor_profile(p, s), progress=False, verbose=verbose)
        sums = correctness_sums(store.iter_batches(16), store.num_classes, 10, s.boundary_radius, seed=seed)
        for (labels, subset), su in sums.items():
            keys = {"dataset": dataset, "model": model, "labels": labels, "subset": subset, "seed": seed,
                    "split": split, "pixels": float(su.pixels().sum())}
            rows += metric_rows(su, keys, seed=seed)
            reliability[(labels, subset, seed)] = su.reliability()
            all_sums[(labels, subset, seed)] = su
        for subset in ("all", "boundary", "interior"):
            for metric in ("image_ece", "pooled_ece"):
                removed[(subset, seed, metric)] = paired_stat(sums[("model", "all")], sums[("oracle", subset)], metric,
                                                              fn=lambda a, b: 1 - b / a, seed=seed)
    return Sweep(pd.DataFrame(rows), table, curves,
                 {"reliability": reliability, "removed": removed, "sums": all_sums})


def _runs(frame: pd.DataFrame) -> str:
    return ", ".join(f"{r.model} at crop {r.crop_size} (seed {r.seed})" for r in frame.itertuples())


def training_sentence(models: pd.DataFrame) -> str:
    """A few sentences about a sweep's ``models`` frame: how many runs passed each convergence test, what the runs that
    missed the training-loss plateau did on validation images, and what this run trained."""
    n_ok, n = int(models["plateaued"].sum()), len(models)
    n_val = int(models["stopped_improving"].sum())
    text = (f"{n_ok} of {n} training runs plateaued (`analysis.plateaued`), and in {n_val} of {n} the validation "
            f"loss had stopped improving (`analysis.stopped_improving`: the last fifth of the run lowered its best "
            f"value by less than {convergence.VAL_TOL:.0%}).")
    late = models[~models["plateaued"]]
    fitting, learning = late[late["stopped_improving"]], late[~late["stopped_improving"]]
    if len(fitting):
        text += (f" Training loss still falling at 80% of the run while the validation loss had stopped improving: "
                 f"{_runs(fitting)}; these runs go on fitting their training images, and by the validation test "
                 f"more steps would not have improved their predictions on new ones.")
    if len(learning):
        text += f" Still improving by both tests when the run ended: {_runs(learning)}."
    trained = models[models["trained_now"]]
    if len(trained) == 0:
        return text + f" All {n} came from the cache."
    return (text + f" This run trained {len(trained)} of them in {trained['train_time_s'].sum():.0f} s and loaded "
            f"{n - len(trained)} from the cache.")
