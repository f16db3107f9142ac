"""Exercises of chapter 2 (data and models)."""

from __future__ import annotations

from segcal_lib.exercises import Exercise, choice, numeric, predicate

__all__ = ["EXAMPLE", "build"]

EXAMPLE = {"train_miou": 0.62, "test_miou": 0.55, "confidence": 0.83, "accuracy": 0.85,
           "boundary_error": 0.40, "interior_error": 0.08}

# Two curves the reader's plateau test must tell apart: one still falling, one flat at the end.
_FALLING = [2.0 - 0.01 * i for i in range(150)]
_FLAT = [2.0 - 0.01 * min(i, 100) for i in range(150)]


def _is_plateau(loss) -> bool:
    """The exercise's own test (the solution's), written differently: windows by slicing a running sum."""
    k = max(1, len(loss) // 10)
    run = [0.0]
    for x in loss:
        run.append(run[-1] + x)
    last, before = run[-1] - run[-1 - k], run[-1 - k] - run[-1 - 2 * k]
    return (before - last) / before < 0.01


def build(train_miou: float, test_miou: float, confidence: float, accuracy: float, boundary_error: float,
          interior_error: float) -> dict[str, Exercise]:
    """Chapter 2's exercises, from this run's train/test mIoU (fractions), test mean confidence and accuracy, and
    the test error rates at boundary and interior pixels (fractions)."""
    gap = (train_miou - test_miou) * 100
    side = "over" if confidence > accuracy else "under"
    other = "under" if side == "over" else "over"
    ratio = boundary_error / interior_error
    return {ex.key.split(".")[1]: ex for ex in (
        Exercise(
            "ch02.train_test_gap",
            "By how many mIoU points (percentage points) is the model better on its training images than on the "
            "test images? Check with `ex['train_test_gap'].check(points)`.",
            numeric(gap, abs_tol=0.15, explain="Subtract the test mIoU from the train mIoU, in percent."),
            "Read the two mIoU values printed under 'How good is it?'.",
            f"**{gap:+.1f} points** ({train_miou:.1%} on train, {test_miou:.1%} on test).",
            right=round(gap, 2), wrong=round(gap + 5, 2)),
        Exercise(
            "ch02.confidence_side",
            "On the test split, is the model `over`- or `under`-confident on average? "
            "Check with `ex['confidence_side'].check('over' or 'under')`.",
            choice(side, ["over", "under"], {other: "Compare the mean confidence with the accuracy: which is "
                                                    "larger?"}),
            "Over-confident means mean confidence above accuracy.",
            f"**{side}-confident**: mean confidence {confidence:.3f} against accuracy {accuracy:.3f}.",
            right=side, wrong=other),
        Exercise(
            "ch02.plateau_test",
            "Write `is_plateau(loss)` that returns True when a per-step loss curve (a list) has stopped falling: "
            "the mean of its last 10% of steps is less than 1% below the mean of the 10% before them. "
            "Check with `ex['plateau_test'].check(is_plateau)`.",
            predicate(lambda f: f(_FLAT) and not f(_FALLING),
                      "it must say True for a curve that is flat at the end and False for one still falling."),
            "Compare `sum(loss[-k:]) / k` with `sum(loss[-2*k:-k]) / k` for `k = len(loss) // 10`.",
            "```python\ndef is_plateau(loss):\n    k = max(1, len(loss) // 10)\n    last = sum(loss[-k:]) / k\n"
            "    before = sum(loss[-2 * k:-k]) / k\n    return (before - last) / before < 0.01\n```\n"
            "The book's own criterion (`segcal_lib.analysis.plateaued`) asks more: that the moving-average loss was "
            "already within 5% of its final value before the last fifth of the run.",
            right=_is_plateau,
            wrong=lambda loss: True),
        Exercise(
            "ch02.boundary_ratio",
            "How many times higher is the error rate at boundary pixels than at interior pixels? "
            "Check with `ex['boundary_ratio'].check(ratio)`.",
            numeric(ratio, rel_tol=0.03, explain="Divide the boundary error rate by the interior one."),
            "Both error rates are printed under 'Where it fails'.",
            f"**{ratio:.1f}×** ({boundary_error:.1%} against {interior_error:.1%}).",
            right=round(ratio, 3), wrong=round(ratio / 2, 3)),
    )}
