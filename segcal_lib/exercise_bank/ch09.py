"""Exercises of chapter 9 (selective scaling)."""

from __future__ import annotations

import torch

from segcal_lib.exercises import Exercise, choice, numeric, predicate

__all__ = ["EXAMPLE", "build"]

EXAMPLE = {"num_classes": 11, "precision": 0.47, "flagged_confidence": 0.55, "best_variant": "fitted T",
           "variants": ["paper (T_mis=1e10)", "T_mis=2", "fitted T", "soft"]}


def _reference(logits, flags, t_mis):
    return logits * torch.where(flags, 1.0 / t_mis, 1.0)[:, None]


def _scales_like_the_reference(fn) -> bool:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 5, 6, generator=g) * 3
    flags = torch.rand(2, 5, 6, generator=g) < 0.4
    out = fn(z, flags, 3.0)
    return isinstance(out, torch.Tensor) and out.shape == z.shape and torch.allclose(out, _reference(z, flags, 3.0),
                                                                                     atol=1e-5)


def build(num_classes: int, precision: float, flagged_confidence: float, best_variant: str,
          variants: list[str]) -> dict[str, Exercise]:
    """Chapter 9's exercises, from this run's numbers: the class count, the learned selector's precision for
    mispredicted pixels and the base's mean confidence on the pixels it flags (test split), and the selective
    variant with the lowest image-wise ECE in the chapter's table (among ``variants``)."""
    uniform = 1 / num_classes
    flagged_acc = 1 - precision
    break_even = 1 - (flagged_confidence + uniform) / 2
    helps = "yes" if precision > break_even else "no"
    others = [v for v in variants if v != best_variant]
    return {ex.key.split(".")[1]: ex for ex in (
        Exercise(
            "ch09.uniform_confidence",
            f"With `T_mis` → ∞, what confidence does a flagged pixel get in this chapter's data set "
            f"({num_classes} classes)? Check with `ex['uniform_confidence'].check(value)`.",
            numeric(uniform, abs_tol=1e-3, explain="Divide every logit by infinity: what distribution is left?"),
            "All logits become 0.",
            f"**1/C = {uniform:.4f}**: the logits all become 0 and the softmax is uniform over the "
            f"{num_classes} classes.",
            right=round(uniform, 5), wrong=0.0),
        Exercise(
            "ch09.flagged_accuracy",
            f"The selector's precision for mispredicted test pixels was {precision:.3f}. What is the accuracy of "
            "the segmentation model on the pixels the selector flags? "
            "Check with `ex['flagged_accuracy'].check(value)`.",
            numeric(flagged_acc, abs_tol=2e-3, explain="Precision is the share of flagged pixels that are wrong."),
            "Flagged pixels are either mispredicted or correct.",
            f"**{flagged_acc:.3f}** = 1 − precision. After flattening they claim confidence 1/C = {uniform:.3f}, "
            f"so they are under-confident by {flagged_acc - uniform:.3f}.",
            right=round(flagged_acc, 4), wrong=round(precision, 4)),
        Exercise(
            "ch09.break_even",
            f"Flagged pixels had mean confidence {flagged_confidence:.3f} before scaling and accuracy "
            f"{flagged_acc:.3f}. By the chapter's rule of thumb (flattening helps when it moves their confidence "
            "closer to their accuracy), does `T_mis` → ∞ help here? Answer `yes` or `no`; "
            "check with `ex['break_even'].check(answer)`.",
            choice(helps, ["yes", "no"]),
            "Compare |confidence before − accuracy| with |1/C − accuracy|.",
            f"**{helps}**: |{flagged_confidence:.3f} − {flagged_acc:.3f}| = {abs(flagged_confidence - flagged_acc):.3f}"
            f" before, |{uniform:.3f} − {flagged_acc:.3f}| = {abs(uniform - flagged_acc):.3f} after; the break-even "
            f"precision is 1 − (conf + 1/C)/2 = {break_even:.3f}.",
            right=helps, wrong="no" if helps == "yes" else "yes"),
        Exercise(
            "ch09.write_scaling",
            "Write `scale(logits, flags, t_mis)` that divides the logits (N, C, H, W) of flagged pixels (bool "
            "(N, H, W)) by `t_mis` and leaves the others alone. Check with `ex['write_scaling'].check(scale)`.",
            predicate(_scales_like_the_reference, "the output differs from logits / where(flags, t_mis, 1)."),
            "Build a per-pixel inverse temperature with `torch.where` and broadcast it over the class dimension.",
            "```python\ndef scale(logits, flags, t_mis):\n    beta = torch.where(flags, 1 / t_mis, 1.0)\n"
            "    return logits * beta[:, None]\n```",
            right=_reference, wrong=lambda z, f, t: z / t),
        Exercise(
            "ch09.best_variant",
            f"Which selective variant had the lowest image-wise ECE on the test split in this run: "
            f"{', '.join(f'`{v}`' for v in variants)}? Check with `ex['best_variant'].check(name)`.",
            choice(best_variant, variants),
            "Read the main comparison table.",
            f"**{best_variant}** (in this run; see the table and the paired intervals beside it).",
            right=best_variant, wrong=others[0] if others else "none"),
    )}
