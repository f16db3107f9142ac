"""Exercises of chapter 6 (multi-scale testing). ``exercises(...)`` builds them from this run's numbers."""

from __future__ import annotations

import math

from segcal_lib.exercises import Exercise, choice, numeric

__all__ = ["exercises"]

_VIEWS = ((0.9, 0.1), (0.3, 0.7))  # two views' probabilities of two classes


def _softmax_average_confidence() -> float:
    avg = [sum(v[k] for v in _VIEWS) / len(_VIEWS) for k in range(2)]
    return max(avg)


def _logit_average_confidence() -> float:
    z = sum(math.log(v[0] / v[1]) for v in _VIEWS) / len(_VIEWS)  # logit of class 0 vs 1, averaged
    p0 = 1 / (1 + math.exp(-z))
    return max(p0, 1 - p0)


def exercises(confidence_change: float) -> list[Exercise]:
    """The chapter's exercises.

    Parameters
    ----------
    confidence_change : mean confidence with multi-scale softmax averaging minus single scale, mean over seeds, in
        this run.
    """
    soft, logit = _softmax_average_confidence(), _logit_average_confidence()
    return [
        Exercise(
            "ch06.softmax_average",
            f"Two test views give a pixel the probabilities {_VIEWS[0]} and {_VIEWS[1]} for two classes. What is the "
            "top-class confidence after averaging the *softmax* outputs?",
            numeric(soft, abs_tol=1e-3),
            "Average the two probability vectors, then take the largest entry.",
            f"The average is (0.6, 0.4): confidence {soft:.3f}, below both views' own confidences (0.9 and 0.7).",
            right=round(soft, 3), wrong=0.8),
        Exercise(
            "ch06.logit_average",
            "The same two views, but their *logits* are averaged and the softmax taken afterwards. What is the "
            "top-class confidence now? (Two classes: the logit difference is log(p0 / p1).)",
            numeric(logit, abs_tol=1e-3),
            "Average log(0.9/0.1) and log(0.3/0.7), then apply the sigmoid.",
            f"(2.197 - 0.847) / 2 = 0.675, sigmoid 0.675 = {logit:.3f}: higher than with softmax averaging "
            f"({soft:.3f}). Averaging logits is a normalised geometric mean of the probabilities, which is sharper.",
            right=round(logit, 3), wrong=round(soft, 3)),
        Exercise(
            "ch06.measured_change",
            "In this run, by how many percentage points did the mean confidence change when softmax outputs were "
            "averaged over scales and flips (multi-scale minus single scale, mean over seeds)?",
            numeric(confidence_change * 100, abs_tol=0.05),
            "The paired differences to single scale are in the sweep's `extras['paired']`, metric 'confidence'.",
            f"{confidence_change * 100:+.2f} points.",
            right=round(confidence_change * 100, 2), wrong=round(-confidence_change * 100 - 1.0, 2)),
        Exercise(
            "ch06.jensen",
            "Averaging softmax outputs over views: can the top-class confidence of the average exceed the mean of "
            "the views' own top-class confidences? Answer 'yes' or 'no'.",
            choice("no", ["yes", "no"], {"yes": "the max of an average is at most the average of the maxima."}),
            "Compare max_k of (1/V) sum_v p_vk with (1/V) sum_v max_k p_vk.",
            "No: for every class k, p_vk <= max_k p_vk, so the average of p_vk is at most the average of the maxima; "
            "equality needs every view to agree on the top class and its probability.",
            right="no", wrong="yes"),
    ]
