"""Bootstrap confidence intervals over images, the book's one way of putting error bars on a number.

Every ECE a chapter compares comes with an interval from :func:`bootstrap_ci` (resampling images with replacement,
percentile interval). Two methods evaluated on the same images are compared with :func:`paired_bootstrap_ci`, which
resamples the images once for both, so the interval is that of the *difference* (much tighter than two separate
intervals when the methods' per-image values move together).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_ci", "paired_bootstrap_ci"]

DEFAULT_N_BOOT = 2000
DEFAULT_LEVEL = 0.95


def _as_values(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per image), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must hold at least one value")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite; drop images without valid pixels first")
    return arr


def _check_level(level: float, n_boot: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")


def _percentiles(stats: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(values: Sequence[float] | np.ndarray, level: float = DEFAULT_LEVEL, n_boot: int = DEFAULT_N_BOOT,
                 seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-image values with a percentile bootstrap interval over images.

    Parameters
    ----------
    values : array-like (n_images,), float; e.g. ``CalibrationMeter.compute()["image_eces"]``.
    level : float, default 0.95; coverage of the interval.
    n_boot : int, default 2000; number of bootstrap resamples.
    seed : int, default 0; the same seed gives the same interval.

    Returns
    -------
    (mean, low, high) : three floats. With a single image the interval collapses to the value.

    Examples
    --------
    >>> bootstrap_ci([0.25, 0.25, 0.25])
    (0.25, 0.25, 0.25)
    """
    x = _as_values(values, "values")
    _check_level(level, n_boot)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    lo, hi = _percentiles(x[idx].mean(axis=1), level)
    return float(x.mean()), lo, hi


def paired_bootstrap_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                        level: float = DEFAULT_LEVEL, n_boot: int = DEFAULT_N_BOOT,
                        seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``b - a`` over the same images with a paired bootstrap interval.

    Parameters
    ----------
    a, b : array-like (n_images,); the same images in the same order (e.g. per-image ECE before and after a
        calibrator).
    level, n_boot, seed : as in :func:`bootstrap_ci`.

    Returns
    -------
    (mean difference, low, high). An interval that excludes 0 says the difference is larger than the spread over
    images at that level.
    """
    xa, xb = _as_values(a, "a"), _as_values(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"a and b must hold one value per image for the same images, got {xa.size} and {xb.size}")
    return bootstrap_ci(xb - xa, level=level, n_boot=n_boot, seed=seed)
