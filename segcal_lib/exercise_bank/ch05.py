"""Exercises of chapter 5 (crop size). ``exercises(...)`` builds them from this run's numbers."""

from __future__ import annotations

import math
from collections.abc import Mapping

from segcal_lib.exercises import Exercise, choice, predicate
from segcal_lib.inference import window_starts

__all__ = ["exercises"]


def _count_windows_ok(fn) -> bool:
    cases = [(72, 24, 16), (96, 36, 24), (72, 72, 48), (100, 30, 7), (50, 50, 1)]
    return all(int(fn(n, c, s)) == len(window_starts(n, c, s)) for n, c, s in cases)


def exercises(protocol_ece: Mapping[int, float]) -> list[Exercise]:
    """The chapter's exercises.

    Parameters
    ----------
    protocol_ece : {training crop: image-wise ECE under the paper's protocol (sliding windows at the training crop),
        mean over seeds} measured in this run.
    """
    if len(protocol_ece) < 2:
        raise ValueError("protocol_ece must hold at least two crops")
    crops = sorted(protocol_ece)
    best = min(crops, key=protocol_ece.get)
    worst = max(crops, key=protocol_ece.get)
    return [
        Exercise(
            "ch05.windows",
            "Write `count_windows(length, crop, stride)`: how many sliding-window positions cover a side of "
            "`length` pixels with windows of `crop` stepping by `stride`, the last window aligned to the border "
            "(as `segcal_lib.inference` does; `length >= crop`).",
            predicate(_count_windows_ok, "it disagrees with segcal_lib.inference.window_starts on a test case."),
            "Count the full steps that fit, ceil((length - crop) / stride), then add the first window.",
            "`lambda n, c, s: math.ceil((n - c) / s) + 1`: the last start is clipped to `n - c`, which never adds a "
            "window of its own.",
            right=lambda n, c, s: math.ceil((n - c) / s) + 1, wrong=lambda n, c, s: n // s),
        Exercise(
            "ch05.best_crop",
            f"Under the paper's protocol, which training crop gave the lowest image-wise ECE in this run? One of "
            f"{crops}.",
            choice(str(best), [str(c) for c in crops]),
            "Read the diagonal of the train-crop x test-crop table (or the protocol curve).",
            f"Crop {best} ({protocol_ece[best]:.4f}).",
            right=str(best), wrong=str(worst if worst != best else crops[0] if crops[0] != best else crops[-1])),
        Exercise(
            "ch05.confound",
            "Under the paper's protocol a model trained at a larger crop is also *tested* with larger windows. "
            "Which measurement isolates the effect of the training crop? Options: 'same test windows', "
            "'more seeds', 'more bins'.",
            choice("same test windows", ["same test windows", "more seeds", "more bins"],
                   {"more seeds": "seeds shrink the noise, not the confound.",
                    "more bins": "binning changes every model's ECE alike."}),
            "Hold one of the two crops fixed and vary the other.",
            "Test every model the same way (e.g. whole images, or one window size): then only the training crop "
            "differs. Holding the model fixed and varying the window isolates the test crop.",
            right="same test windows", wrong="more seeds"),
    ]
