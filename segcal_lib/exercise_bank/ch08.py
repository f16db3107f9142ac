"""Exercises of chapter 8 (existing calibrators). Those that quote this run's numbers are built from them.

>>> bank = exercises(table, temperature=ts.temperature_)     # doctest: +SKIP
>>> bank["ch08.best_method"].show(); bank["ch08.best_method"].check("TempS")   # doctest: +SKIP
"""

from __future__ import annotations

import pandas as pd
import torch

from segcal_lib.exercises import Exercise, choice, numeric, predicate

__all__ = ["exercises"]

_LOGITS = torch.tensor([2.0, 0.5, -1.0])


def _vector_scaling_is_right(fn) -> bool:
    g = torch.Generator().manual_seed(0)
    z, a, b = torch.randn(2, 3, 4, 5, generator=g), torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g)
    out = fn(z, a, b)
    return isinstance(out, torch.Tensor) and out.shape == z.shape and torch.allclose(
        out, z * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1), atol=1e-6)


def exercises(table: pd.DataFrame, temperature: float) -> dict[str, Exercise]:
    """The chapter's exercises, keyed by name.

    Parameters
    ----------
    table : the chapter's comparison table (``compare_calibrators``), indexed by method, with ``image-wise ECE``
        and ``mIoU (%)`` columns and rows ``Uncal`` and ``TempS``.
    temperature : the temperature fitted on the calibration split.
    """
    for col in ("image-wise ECE", "mIoU (%)"):
        if col not in table.columns:
            raise ValueError(f"table must have a column {col!r}, got {list(table.columns)}")
    if not {"Uncal", "TempS"} <= set(table.index):
        raise ValueError(f"table must have rows 'Uncal' and 'TempS', got {list(table.index)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    ece = table["image-wise ECE"].astype(float)
    best = str(ece.idxmin())
    other = next(m for m in table.index if m != best)
    conf = float((_LOGITS / temperature).softmax(0).max())
    wrong_conf = float(_LOGITS.softmax(0).max())
    change = (ece["TempS"] / ece["Uncal"] - 1) * 100
    bank = [
        Exercise("ch08.ts_miou", "Temperature scaling divides every logit of a pixel by the same T > 0. Can it change "
                 "the mIoU? Answer `yes` or `no`.",
                 choice("no", ["yes", "no"], {"yes": "dividing all logits of a pixel by one positive number keeps "
                                                     "their order, so the arg-max (the prediction) stays."}),
                 "What does the arg-max of z / T depend on?",
                 "No: z / T has the same arg-max as z for any T > 0, so every prediction and the mIoU are unchanged.",
                 right="no", wrong="yes"),
        Exercise("ch08.confidence_at_t", f"A pixel has logits {_LOGITS.tolist()}. What is its confidence (top-class "
                 f"probability) after the temperature fitted in this chapter, T = {temperature:.3f}?",
                 numeric(conf, abs_tol=1e-3, explain="Divide the logits by T, then take the largest softmax value."),
                 "softmax(z / T).max()",
                 f"`(torch.tensor({_LOGITS.tolist()}) / {temperature:.3f}).softmax(0).max()` = {conf:.4f}.",
                 right=round(conf, 4), wrong=round(wrong_conf, 4) if abs(wrong_conf - conf) > 1e-3 else conf + 0.1),
        Exercise("ch08.vector_scaling", "Write `vector_scale(logits, a, b)` for logits (N, C, H, W) and per-class "
                 "scales `a` (C,) and biases `b` (C,): the map of vector scaling.",
                 predicate(_vector_scaling_is_right, "on random inputs it does not return a_k z_k + b_k per class "
                           "(check the broadcasting: a and b must act along dim 1)."),
                 "Reshape a and b to (1, C, 1, 1).",
                 "`def vector_scale(z, a, b): return z * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)`",
                 right=lambda z, a, b: z * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1),
                 wrong=lambda z, a, b: z * a.view(-1, 1, 1, 1)[:1] + b.sum()),
        Exercise("ch08.best_method", "Which method had the lowest image-wise ECE on this run's test split? Answer "
                 "with its row name in the table.",
                 choice(best, [str(m) for m in table.index]), "Sort the table by its `image-wise ECE` column.",
                 f"{best} ({ece[best]:.4f}); mind the bootstrap intervals before calling it better than the rest.",
                 right=best, wrong=other),
        Exercise("ch08.ts_change", "By how many percent did temperature scaling change the image-wise ECE relative to "
                 "the uncalibrated model in this run (negative = lower)? Use the table's rounded values.",
                 numeric(change, abs_tol=0.5, explain="(ECE of TempS / ECE of Uncal - 1) x 100."),
                 "Two numbers of the table's `image-wise ECE` column.",
                 f"({ece['TempS']:.3f} / {ece['Uncal']:.3f} - 1) x 100 = {change:+.1f}%.",
                 right=round(change, 1), wrong=round(change, 1) + 5.0),
    ]
    return {ex.key: ex for ex in bank}
