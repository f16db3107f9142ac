"""When has a training run converged? A plateau detector on the training-loss curve, the early-stopping test on a
validation curve, and curves as a tidy table.

The book trains its models as production models are trained: until the training loss stops falling. "Stops falling"
is defined here, in code, so that a chapter can show for every model whether it holds:

1. the per-step losses are smoothed by a trailing moving mean over ``window`` steps (default 10% of the run); the
   **final loss** is the mean of the last ``window`` steps;
2. the **plateau step** is the first step ``s`` from which the smoothed loss stays within ``rel_tol`` (relative) of the
   final loss: ``smooth[t] <= final / (1 - rel_tol)`` for every ``t >= s``;
3. a run has **plateaued** when that step lies at most at ``max_fraction`` of the run (default 0.8): during the last
   fifth of the steps or more the loss fell by less than ``rel_tol`` (default 5%).

The learning rate decays to zero at the end of every run (poly schedule), so a flat tail alone proves little; what the
criterion asks is that the loss was already within 5% of its final value *before* the last fifth, while the learning
rate was still a good part of its peak. Comparing with the mean of a whole window (rather than with the lowest point of
a noisy curve) keeps the verdict stable under the step-to-step noise of mini-batch losses.

A network that can memorise a finite training set never passes this test for good: its training loss keeps falling
like a power of the step count (about 20% per doubling for the book's main model on 96 scenes, measured for 1500, 3000
and 6000 steps), and a power law loses the same ~6% over the last fifth of any run. So a second test,
:func:`stopped_improving`, asks what early stopping asks of the validation loss: did the last fifth of the run still
find a lower validation loss (by more than ``VAL_TOL``, 2%)? Chapter 2 applies both to the main model and shows what
doubling its training changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["PLATEAU_FRACTION", "PLATEAU_TOL", "VAL_TOL", "curve_frame", "late_improvement", "plateau_step",
           "plateaued", "smooth", "stopped_improving"]

PLATEAU_TOL = 0.05
PLATEAU_FRACTION = 0.8
# The validation curve is measured on whole images without augmentation, so it is far less noisy than the per-step
# training loss and a tighter tolerance is meaningful.
VAL_TOL = 0.02


def _losses(losses) -> np.ndarray:
    x = np.asarray(losses, dtype=np.float64)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"losses must be a 1-D sequence of at least 2 per-step values, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("losses must be finite")
    return x


def _window(n: int, window: int | None) -> int:
    if window is None:
        return max(1, n // 10)
    if not isinstance(window, int) or not 1 <= window <= n:
        raise ValueError(f"window must be an int in [1, {n}] (number of steps), got {window!r}")
    return window


def smooth(losses: Sequence[float], window: int | None = None) -> np.ndarray:
    """Moving mean over ``window`` steps (default 10% of the run), aligned to the window's last step.

    Returns float64 (n,): the first ``window - 1`` values average the steps seen so far.
    """
    x = _losses(losses)
    w = _window(x.size, window)
    c = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(1, x.size + 1)
    lo = np.maximum(idx - w, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plateau_step(losses: Sequence[float], window: int | None = None, rel_tol: float = PLATEAU_TOL) -> int:
    """First step from which the smoothed loss stays within ``rel_tol`` of the final loss (see the module docstring).

    Parameters
    ----------
    losses : per-step training losses (n,).
    window : moving-mean window in steps (default ``n // 10``); the final loss is the mean of the last ``window``.
    rel_tol : relative distance to the final loss that still counts as flat (default 0.05).

    Returns
    -------
    int in [0, n - 1]; close to ``n - 1`` when the loss was still falling at the end.
    """
    if not 0 < rel_tol < 1:
        raise ValueError(f"rel_tol must lie in (0, 1), got {rel_tol!r}")
    s = smooth(losses, window)
    above = np.flatnonzero(s > s[-1] / (1.0 - rel_tol))
    return int(above[-1] + 1) if above.size else 0


def plateaued(losses: Sequence[float], window: int | None = None, rel_tol: float = PLATEAU_TOL,
              max_fraction: float = PLATEAU_FRACTION) -> bool:
    """Whether the run reached its plateau by ``max_fraction`` of its steps (see the module docstring)."""
    if not 0 < max_fraction <= 1:
        raise ValueError(f"max_fraction must lie in (0, 1], got {max_fraction!r}")
    x = _losses(losses)
    return plateau_step(x, window, rel_tol) <= max_fraction * (x.size - 1)


def late_improvement(steps: Sequence[float], values: Sequence[float], fraction: float = PLATEAU_FRACTION) -> float:
    """How much the best value of the last part of a run improved on the best value before it (relative).

    Parameters
    ----------
    steps : training steps at which ``values`` were measured (m,), increasing; the run ends at ``steps[-1]``.
    values : a loss to minimise measured at those steps (m,), e.g. the validation loss on whole images.
    fraction : where the last part starts, as a fraction of the run (default 0.8: the last fifth).

    Returns
    -------
    float: ``(best_before - best_after) / best_before``; positive when the last part still found a lower loss,
    zero or negative when it did not.
    """
    s, v = np.asarray(steps, dtype=np.float64), _losses(values)
    if s.shape != v.shape or np.any(np.diff(s) <= 0):
        raise ValueError(f"steps must be increasing and match values in shape, got {s.shape} and {v.shape}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction!r}")
    late = s > s[0] + fraction * (s[-1] - s[0])  # the first step is never late and the last always is
    before, after = v[~late].min(), v[late].min()
    return float((before - after) / before)


def stopped_improving(steps: Sequence[float], values: Sequence[float], rel_tol: float = VAL_TOL,
                      fraction: float = PLATEAU_FRACTION) -> bool:
    """Whether a validation loss had stopped improving: :func:`late_improvement` below ``rel_tol`` (default 2%).

    This is the test that early stopping applies. On a finite training set the *training* loss of a network that can
    memorise it keeps falling (see chapter 2); the validation loss says when it stops learning anything that carries
    over to new images.
    """
    if not 0 < rel_tol < 1:
        raise ValueError(f"rel_tol must lie in (0, 1), got {rel_tol!r}")
    return late_improvement(steps, values, fraction) < rel_tol


def curve_frame(histories: Mapping[tuple, Sequence[float]], names: Sequence[str], window: int | None = None,
                every: int = 1) -> pd.DataFrame:
    """Training curves as a tidy table: one row per run and kept step.

    Parameters
    ----------
    histories : {key tuple: per-step losses}; the tuple's items are named by ``names`` (e.g. ``("model", "seed")``).
    names : column names of the key items.
    window : smoothing window (default 10% of each run).
    every : keep every ``every``-th step (plots do not need all of them).

    Returns
    -------
    DataFrame with the key columns, ``step``, ``loss``, ``smoothed`` and ``fraction`` (step / last step).
    """
    frames = []
    for key, losses in histories.items():
        key = key if isinstance(key, tuple) else (key,)
        if len(key) != len(names):
            raise ValueError(f"every key must have {len(names)} items ({list(names)}), got {key!r}")
        x = _losses(losses)
        keep = np.arange(0, x.size, max(1, int(every)))
        frame = pd.DataFrame({"step": keep, "loss": x[keep], "smoothed": smooth(x, window)[keep],
                              "fraction": keep / (x.size - 1)})
        for i, (name, value) in enumerate(zip(names, key, strict=True)):
            frame.insert(i, name, value)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
