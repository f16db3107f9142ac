"""Exercises of chapter 10 (calibration under domain shift); those about this run's numbers are built from them.

>>> ex = write_corruption()
>>> ex.check(ex.right)
✓ Correct (ch10.write_corruption).
True
"""

from __future__ import annotations

import inspect
import math

import pandas as pd
import torch

from segcal_lib.exercises import Exercise, choice, numeric, predicate

__all__ = ["check_corruption", "ece_growth", "temperature_under_shift", "worst_shift", "write_corruption"]


def _uncal_ece(df: pd.DataFrame, test_set: str) -> float:
    sel = df[(df["test_set"] == test_set) & (df["calibrator"] == "identity") & (df["metric"] == "image_ece")]
    if sel.empty:
        raise ValueError(f"df has no uncalibrated image-wise ECE for test set {test_set!r}")
    return float(sel["value"].iloc[0])


def worst_shift(df: pd.DataFrame, severity: int) -> Exercise:
    """Which shift or corruption at ``severity`` raises the uncalibrated image-wise ECE most (from a sweep frame)?"""
    rows = df[(df["severity"] == severity) & (df["calibrator"] == "identity") & (df["metric"] == "image_ece")]
    if rows.empty:
        raise ValueError(f"df has no test set at severity {severity}")
    values = dict(zip(rows["shift"], rows["value"], strict=True))
    worst = max(values, key=values.get)
    best = min(values, key=values.get)
    return Exercise(
        "ch10.worst_shift",
        f"Among {', '.join(values)} at severity {severity}, which one leaves the uncalibrated model with the highest "
        f"image-wise ECE? Read it off the severity curves, then check it in `df`.",
        choice(worst, list(values), {k: f"{k} gives {v:.3f}; another one is higher." for k, v in values.items()}),
        "Filter `df` to `calibrator == 'identity'`, `metric == 'image_ece'` and the severity; take the largest value.",
        f"**{worst}** ({values[worst]:.3f}); the mildest is {best} ({values[best]:.3f}).",
        right=worst, wrong=best if best != worst else "none of them")


def ece_growth(df: pd.DataFrame, test_set: str) -> Exercise:
    """By how many points does the uncalibrated image-wise ECE grow from in-domain to ``test_set``?"""
    before, after = _uncal_ece(df, "in-domain"), _uncal_ece(df, test_set)
    growth = (after - before) * 100
    return Exercise(
        "ch10.ece_growth",
        f"By how many points (ECE × 100) does the uncalibrated image-wise ECE change from the in-domain test set to "
        f"**{test_set}**? (Positive: it grows.) One decimal is enough.",
        numeric(growth, abs_tol=0.1, explain="Subtract the in-domain value from the shifted one, times 100."),
        "Both numbers are in the `Uncal` column of the Table-2-style table.",
        f"{after:.4f} − {before:.4f} = {growth:+.1f} points.",
        right=round(growth, 1), wrong=round(growth + 1.0 + abs(growth), 1))


def temperature_under_shift(t_in_domain: float, t_oracle: float, test_set: str) -> Exercise:
    """Is the temperature that fits ``test_set`` (fitted on its own labels) larger or smaller than the in-domain one?"""
    if not (math.isfinite(t_in_domain) and math.isfinite(t_oracle)) or t_in_domain <= 0 or t_oracle <= 0:
        raise ValueError(f"temperatures must be positive and finite, got {t_in_domain!r}, {t_oracle!r}")
    right = "larger" if t_oracle > t_in_domain else "smaller"
    wrong = "smaller" if right == "larger" else "larger"
    return Exercise(
        "ch10.temperature_under_shift",
        f"Temperature scaling fitted in-domain uses T = {t_in_domain:.3f}. If we could fit T on **{test_set}** "
        f"itself (with its labels, which a deployed model never has), would it be larger or smaller?",
        choice(right, ["larger", "smaller"], {wrong: f"Fit `make_calibrator('ts')` on the {test_set} logits and "
                                                     f"compare its `temperature_` with {t_in_domain:.3f}."}),
        "A larger T softens the probabilities: it is what an over-confident model needs.",
        f"**{right}**: T = {t_oracle:.3f} on {test_set} against {t_in_domain:.3f} in-domain. A single temperature "
        f"fitted in one domain cannot follow the change of confidence the shift brings.",
        right=right, wrong=wrong)


def check_corruption(fn) -> bool:
    """True when ``fn(image, severity, seed)`` follows the book's corruption conventions on a test image: severity 0
    is the identity, shape, dtype and [0, 1] are kept, the same seed gives the same output, and the mean absolute
    change grows strictly with severity."""
    x = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    outs = [fn(x.clone(), s, 0) for s in range(6)]
    if not all(isinstance(o, torch.Tensor) and o.shape == x.shape and o.dtype == x.dtype for o in outs):
        return False
    if not torch.equal(outs[0], x) or any(o.min() < 0 or o.max() > 1 for o in outs):
        return False
    if not torch.equal(fn(x.clone(), 3, 0), outs[3]):
        return False
    change = [float((o - x).abs().mean()) for o in outs]
    return all(b > a for a, b in zip(change, change[1:], strict=False))


def _salt_and_pepper(image: torch.Tensor, severity: int, seed: int = 0) -> torch.Tensor:
    if severity == 0:
        return image.clone()
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(image.shape[-2:], generator=gen)
    p = (0.01, 0.02, 0.04, 0.07, 0.1)[severity - 1]
    out = image.clone()
    out[..., u < p / 2] = 0.0
    out[..., (u >= p / 2) & (u < p)] = 1.0
    return out


def _noisy_at_zero(image: torch.Tensor, severity: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (image + 0.05 * (severity + 1) * torch.randn(image.shape, generator=gen)).clamp(0, 1)


def write_corruption() -> Exercise:
    """Write a corruption that follows the conventions of :mod:`segcal_lib.data.corruptions`."""
    return Exercise(
        "ch10.write_corruption",
        "Write `salt_and_pepper(image, severity, seed=0)`: a share of pixels (all three channels) set to black or "
        "white, growing with severity 1..5. Follow the book's conventions: severity 0 returns an unchanged copy, "
        "shape, dtype and the range [0, 1] are kept, the same seed gives the same output, and the image changes "
        "more at every higher severity. Check it with `ex.check(salt_and_pepper)`.",
        predicate(check_corruption, "it breaks a convention: severity 0 must be an unchanged copy, the output must "
                                    "keep shape, dtype and [0, 1], repeat for the same seed, and change more at "
                                    "each higher severity."),
        "Draw one uniform number per pixel with a `torch.Generator` seeded by `seed`; compare it with the severity's "
        "share.",
        f"```python\n{inspect.getsource(_salt_and_pepper).replace('_salt_and_pepper', 'salt_and_pepper')}```\n"
        "To use it in the sweep, register it: `segcal_lib.data.shifts.register_shift(...)`.",
        right=_salt_and_pepper, wrong=_noisy_at_zero)
