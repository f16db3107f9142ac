"""Exercises of chapter 3 (measuring the calibration of a trained segmentation model)."""

from __future__ import annotations

from segcal_lib.exercises import Exercise, choice, numeric

__all__ = ["EXAMPLE", "build"]

EXAMPLE = {"wrong_confidence": 0.61, "wrong_image_ece": 0.62, "standin_wrong_image_ece": 0.60,
           "bins50_standin_image_ece": 0.09, "bins10_standin_image_ece": 0.04}


def build(wrong_confidence: float, wrong_image_ece: float, standin_wrong_image_ece: float,
          bins10_standin_image_ece: float, bins50_standin_image_ece: float) -> dict[str, Exercise]:
    """Chapter 3's exercises, from this run's numbers: mean confidence on mispredicted pixels, image-wise ECE of the
    mispredicted pixels for the model and for its calibrated stand-in, and the stand-in's image-wise ECE at 10 and
    50 bins."""
    excess = wrong_image_ece - standin_wrong_image_ece
    rise = "up" if bins50_standin_image_ece > bins10_standin_image_ece else "down"
    return {ex.key.split(".")[1]: ex for ex in (
        Exercise(
            "ch03.wrong_pixels_ece",
            "Without running anything: what is the *pooled* ECE of the model on its mispredicted test pixels? "
            "Check with `ex['wrong_pixels_ece'].check(value)`.",
            numeric(wrong_confidence, abs_tol=0.005, explain="What is each bin's accuracy on wrong pixels?"),
            "On mispredicted pixels accuracy is 0 in every bin.",
            f"**{wrong_confidence:.3f}**, their mean confidence: with accuracy 0 in every bin, "
            "ECE = Σ_b (n_b/n)·conf_b = mean confidence.",
            right=round(wrong_confidence, 4), wrong=round(1 - wrong_confidence, 4)),
        Exercise(
            "ch03.excess_over_standin",
            "How much of the mispredicted pixels' image-wise ECE is miscalibration, i.e. above what the calibrated "
            "stand-in scores on *its* mispredicted pixels? Check with `ex['excess_over_standin'].check(value)`.",
            numeric(excess, abs_tol=0.003, explain="Subtract the stand-in's value from the model's."),
            "Both values are in the subset table, columns 'model' and 'calibrated stand-in'.",
            f"**{excess:+.3f}** ({wrong_image_ece:.3f} − {standin_wrong_image_ece:.3f}). The rest of the large "
            "number is what a perfectly calibrated model with these confidences would score too.",
            right=round(excess, 4), wrong=round(wrong_image_ece, 4)),
        Exercise(
            "ch03.proper_score",
            "Which of these is a *proper* score, minimised only by the true probabilities: `ECE`, `MCE` or `NLL`? "
            "Check with `ex['proper_score'].check(name)`.",
            choice("NLL", ["ECE", "MCE", "NLL"],
                   {"ECE": "A model that always predicts its accuracy scores ECE 0 (chapter 1).",
                    "MCE": "MCE is a worst bin of ECE's gaps; it shares ECE's blind spot."}),
            "Think of chapter 1's lazy model that predicts its accuracy everywhere.",
            "**NLL** (and the Brier score). ECE and MCE look only at gaps between binned averages, so a model "
            "that says its average accuracy everywhere scores 0; a proper score also rewards confidences that tell "
            "right pixels from wrong ones.",
            right="NLL", wrong="ECE"),
        Exercise(
            "ch03.bins_bias",
            "Compute the calibrated stand-in's image-wise ECE with 50 bins instead of 10 "
            "(`CalibrationMeter(C, n_bins=50)` on `standin` labels). Does it go `up` or `down`? "
            "Check with `ex['bins_bias'].check('up' or 'down')`.",
            choice(rise, ["up", "down"]),
            "The stand-in has no real miscalibration: only noise per bin is left.",
            f"**{rise}**: {bins10_standin_image_ece:.3f} at 10 bins, {bins50_standin_image_ece:.3f} at 50. "
            "Fewer pixels per bin, noisier accuracies, larger absolute gaps: the small-sample bias grows with the "
            "number of bins even for a perfectly calibrated model.",
            right=rise, wrong="down" if rise == "up" else "up"),
    )}
