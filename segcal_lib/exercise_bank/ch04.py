"""Exercises of chapter 4 (model capacity). ``exercises(...)`` builds them from this run's numbers."""

from __future__ import annotations

from collections.abc import Mapping

from segcal_lib.exercises import Exercise, choice, numeric

__all__ = ["exercises"]


def exercises(image_ece: Mapping[str, float], params: Mapping[str, int]) -> list[Exercise]:
    """The chapter's exercises.

    Parameters
    ----------
    image_ece : {model: image-wise ECE, mean over seeds} measured in this run.
    params : {model: parameter count}.
    """
    if set(image_ece) != set(params) or len(params) < 2:
        raise ValueError("image_ece and params must name the same models (at least two)")
    models = list(params)
    worst = max(models, key=image_ece.get)
    best = min(models, key=image_ece.get)
    small, large = min(models, key=params.get), max(models, key=params.get)
    ratio = params[large] / params[small]
    change = image_ece[large] - image_ece[small]
    return [
        Exercise(
            "ch04.worst_model",
            f"Which model of this run has the highest image-wise ECE (mean over seeds)? Answer with its name, one of "
            f"{models}.",
            choice(worst, models, {best: "that one has the lowest, not the highest."}),
            "Look at the table of metrics, the `image_ece` rows, averaged over seeds.",
            f"`{worst}` ({image_ece[worst]:.4f}).",
            right=worst, wrong=next(m for m in [best, *models] if m != worst)),
        Exercise(
            "ch04.span",
            "How many times more parameters does the largest model have than the smallest? (one decimal is enough)",
            numeric(ratio, rel_tol=0.05),
            "Divide the largest `params` by the smallest.",
            f"{params[large]:,} / {params[small]:,} = {ratio:.1f}.",
            right=round(ratio, 1), wrong=round(ratio * 2, 1)),
        Exercise(
            "ch04.change",
            "By how much does image-wise ECE change from the smallest to the largest model (largest minus smallest, "
            "means over seeds)? Give a signed number.",
            numeric(change, abs_tol=5e-4, explain="Mind the sign: positive means the larger model is worse."),
            "Subtract the two means; a negative number means the larger model is better calibrated.",
            f"{image_ece[large]:.4f} - {image_ece[small]:.4f} = {change:+.4f}.",
            right=round(change, 4), wrong=round(-change + (0.01 if abs(change) < 5e-4 else 0.0), 4)),
        Exercise(
            "ch04.converged",
            "A model four times larger than another is trained for the same number of steps and comes out worse "
            "calibrated. Before concluding that capacity hurts calibration, what should be checked first? "
            "Options: 'loss plateau', 'learning rate', 'ece bins'.",
            choice("loss plateau", ["loss plateau", "learning rate", "ece bins"],
                   {"learning rate": "it matters, but first ask whether the bigger model finished training at all.",
                    "ece bins": "both models are binned the same way; binning cannot create the difference."}),
            "A model stopped before its training loss plateaus is a different model from a converged one.",
            "Whether each model's training loss has plateaued: an under-trained large model is under-fit, and its "
            "calibration says more about the training budget than about its capacity.",
            right="loss plateau", wrong="ece bins"),
    ]
