"""Exercises of chapter 1 (calibration basics, in a world where the truth is known)."""

from __future__ import annotations

from segcal_lib.exercises import Exercise, choice, numeric

__all__ = ["EXAMPLE", "build"]

# Numbers of the kind chapter 1 measures, for the tests.
EXAMPLE = {"sharpen": 2.5, "accuracy": 0.62, "standin_wrong_conf": 0.41}


def build(sharpen: float, accuracy: float, standin_wrong_conf: float) -> dict[str, Exercise]:
    """Chapter 1's exercises.

    Parameters
    ----------
    sharpen : the factor the over-confident model multiplies the true logits by.
    accuracy : pixel accuracy of the models on the test split (all share the same predictions).
    standin_wrong_conf : mean confidence of the calibrated model on the pixels it gets wrong.
    """
    return {ex.key.split(".")[1]: ex for ex in (
        Exercise(
            "ch01.constant_predictor",
            f"A lazy model predicts the same classes as ours (pixel accuracy {accuracy:.3f}) but gives *every* pixel "
            f"the confidence {accuracy:.3f}. What is its pooled ECE (10 bins)? "
            "Check with `ex['constant_predictor'].check(value)`.",
            numeric(0.0, abs_tol=1e-3, explain="All its pixels fall in one bin; compare that bin's confidence "
                                               "with its accuracy."),
            "How many bins hold pixels, and what are their confidence and accuracy?",
            f"**0.** Every pixel falls in the one bin holding {accuracy:.3f}, whose accuracy is also {accuracy:.3f}: "
            "the gap is zero. The model knows nothing about *which* pixels are hard, yet scores a perfect ECE. "
            "ECE is not a proper score: it can be minimised without being right or informative. NLL and the Brier "
            "score are proper: they reward confidences that separate right from wrong pixels.",
            right=0.0, wrong=round(1 - accuracy, 3)),
        Exercise(
            "ch01.undo_sharpening",
            "The over-confident model's logits are the true logits times `SHARPEN`. Which temperature $T$ makes "
            "it exactly calibrated again? Check with `ex['undo_sharpening'].check(value)`.",
            numeric(sharpen, rel_tol=0.02, explain="Dividing by T must cancel the factor the logits were multiplied "
                                                   "by."),
            "softmax(SHARPEN * t / T) equals softmax(t) for which T?",
            f"**T = {sharpen:g}**: $(\\text{{SHARPEN}}\\cdot t)/T = t$. Temperature scaling fitted by NLL finds "
            "it up to sampling noise, because here the miscalibration *is* one global factor.",
            right=sharpen, wrong=1 / sharpen),
        Exercise(
            "ch01.under_confident",
            "Set `SHARPEN = 0.5` (an *under*-confident model). Will the fitted temperature be `above` or `below` 1? "
            "Check with `ex['under_confident'].check('above' or 'below')`.",
            choice("below", ["above", "below"],
                   {"above": "T > 1 flattens the softmax further; an under-confident model needs sharpening."}),
            "Dividing logits by T < 1 makes them larger.",
            "**Below 1** ($T \\approx 0.5$, the value of `SHARPEN`): the logits must be made larger, i.e. divided "
            "by a number below one, to restore the true confidences.",
            right="below", wrong="above"),
        Exercise(
            "ch01.standin_mispredicted",
            "The calibrated model is perfectly calibrated by construction. Restrict its meter to the pixels it gets "
            "*wrong* (`wrong = correctness_masks(calibrated, test_labels)[1]`, then "
            "`measure(calibrated, test_labels, wrong)`). What is their pooled ECE? "
            "Check with `ex['standin_mispredicted'].check(value)`.",
            numeric(standin_wrong_conf, abs_tol=0.005,
                    explain="On mispredicted pixels the accuracy of every bin is zero."),
            "What is the accuracy of every bin when every pixel in it is wrong?",
            f"**{standin_wrong_conf:.3f}**, the mean confidence on those pixels: every bin's accuracy is 0, so the "
            "ECE is the mean confidence. A perfectly calibrated model scores a large ECE on its mispredicted "
            "pixels by the definition of the subset; only the excess over this value is miscalibration.",
            right=round(standin_wrong_conf, 4), wrong=0.0),
        Exercise(
            "ch01.more_bins",
            "Rerun the calibrated model's meter with `n_bins=50`. Does its image-wise ECE go `up` or `down`? "
            "Check with `ex['more_bins'].check('up' or 'down')`.",
            choice("up", ["up", "down"], {"down": "Fewer pixels per bin make each bin's accuracy noisier, not "
                                                  "less noisy."}),
            "The calibrated model has no real gap; what is left is noise, and how does it scale with pixels per bin?",
            "**Up.** The calibrated model's ECE is pure sampling noise: with 5× more bins each holds about 5× fewer "
            "pixels, the noise of each bin's accuracy grows, and ECE adds up its absolute value. This is the "
            "small-sample bias of ECE; image-wise ECE, with few pixels per image, feels it most.",
            right="up", wrong="down"),
    )}
