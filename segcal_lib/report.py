"""Tables and sentences built from measured numbers, so that a chapter's prose always says what was measured.

A chapter never writes "over-confident" or "an order of magnitude" by hand: it calls :func:`confidence_verdict`,
:func:`ratio_phrase` or :func:`compare_phrase` on the numbers it printed, and shows tables built by
:func:`calibration_table` and :func:`paper_comparison`. :func:`say` renders a computed Markdown sentence in the
notebook and the built book; :func:`glue` stores a value for inline use in Markdown cells (myst-nb).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from segcal_lib.stats import bootstrap_ci

__all__ = ["bin_table", "calibration_table", "compare_phrase", "confidence_verdict", "fmt_ci", "glue",
           "join_words", "paper_comparison", "ratio_phrase", "say", "subset_table"]

CI_LEVEL = 0.95


def fmt_ci(mean: float, low: float, high: float, digits: int = 3) -> str:
    """``"0.031 [0.027, 0.036]"``: a value with its interval, in one string for a table cell."""
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def confidence_verdict(confidence: float, accuracy: float, tolerance: float = 0.0005) -> str:
    """Say whether mean confidence is above or below accuracy, and by how many percentage points.

    Parameters
    ----------
    confidence, accuracy : floats in [0, 1] (``CalibrationMeter.compute()["confidence"]``, ``["accuracy"]``).
    tolerance : a gap below this (default 0.05 points) is reported as matching.

    Returns
    -------
    str, e.g. ``"over-confident by 2.30 points"`` or ``"under-confident by 0.60 points"``.
    """
    gap = confidence - accuracy
    if not math.isfinite(gap):
        raise ValueError(f"confidence and accuracy must be finite, got {confidence!r} and {accuracy!r}")
    if abs(gap) < tolerance:
        return f"neither over- nor under-confident on average (gap {gap * 100:+.2f} points)"
    side = "over-confident" if gap > 0 else "under-confident"
    return f"{side} by {abs(gap) * 100:.2f} points"


def join_words(items: Sequence) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``: items as they are written in a sentence (``"none"`` when empty).

    >>> join_words([1500, 3000, 6000])
    '1500, 3000 and 6000'
    """
    words = [str(i) for i in items]
    if not words:
        return "none"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def ratio_phrase(larger: float, smaller: float) -> str:
    """``"94×"`` (or ``"1.3×"``): how many times ``larger`` is ``smaller``, with sensible digits."""
    if smaller <= 0 or not math.isfinite(larger / smaller):
        raise ValueError(f"smaller must be positive and the ratio finite, got {larger!r} / {smaller!r}")
    r = larger / smaller
    return f"{r:.1f}×" if r < 10 else f"{r:,.0f}×"


def compare_phrase(ours: float, theirs: float, what: str = "ours", other: str = "the paper's",
                   rel_tol: float = 0.1, digits: int = 3) -> str:
    """Compare two numbers in words: close (within ``rel_tol`` relative), higher or lower, and by what factor.

    Returns
    -------
    str, e.g. ``"ours (0.031) is 3.6× lower than the paper's (0.111)"`` or ``"ours (0.105) is close to ..."``.
    """
    a, b = f"{ours:.{digits}f}", f"{theirs:.{digits}f}"
    if math.isclose(ours, theirs, rel_tol=rel_tol):
        return f"{what} ({a}) is close to {other} ({b}, within {rel_tol:.0%})"
    if ours > theirs:
        return f"{what} ({a}) is {ratio_phrase(ours, theirs)} higher than {other} ({b})"
    return f"{what} ({a}) is {ratio_phrase(theirs, ours)} lower than {other} ({b})"


def calibration_table(results: Mapping[str, Mapping], miou: Mapping[str, float] | None = None,
                      seed: int = 0, digits: int = 3) -> pd.DataFrame:
    """One row per method: image-wise ECE with its bootstrap interval over images, pooled ECE, NLL, Brier, mIoU.

    Parameters
    ----------
    results : {name: ``CalibrationMeter.compute()`` dict}; the row order is kept.
    miou : optional {name: mIoU as a fraction}; shown in percent.
    seed : seed of the bootstrap (the same seed for every row).
    digits : decimals of the ECE columns.

    Returns
    -------
    DataFrame indexed by method, with columns ``image-wise ECE``, ``95% CI`` (string), ``pooled ECE``, ``NLL``,
    ``Brier``, ``confidence − accuracy (points)`` and, when given, ``mIoU (%)``. ECE uses the meters' equal-width bins.
    """
    if not results:
        raise ValueError("results must hold at least one method")
    rows = {}
    for name, res in results.items():
        mean, lo, hi = bootstrap_ci(res["image_eces"], level=CI_LEVEL, seed=seed)
        row = {"image-wise ECE": round(mean, digits), f"{CI_LEVEL:.0%} CI": f"[{lo:.{digits}f}, {hi:.{digits}f}]",
               "pooled ECE": round(res["ece"], digits), "NLL": round(res["nll"], 4), "Brier": round(res["brier"], 4),
               "confidence − accuracy (points)": round((res["confidence"] - res["accuracy"]) * 100, 2)}
        if miou is not None:
            row["mIoU (%)"] = round(miou[name] * 100, 1)
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table


def bin_table(result: Mapping) -> pd.DataFrame:
    """One row per non-empty bin of ``CalibrationMeter.compute()``: its share of pixels, mean confidence, accuracy,
    gap and its share of the pooled ECE (the shares of ECE add up to 1)."""
    rel = result["reliability"]
    count = np.asarray(rel["count"], dtype=float)
    conf, acc, edges = np.asarray(rel["confidence"]), np.asarray(rel["accuracy"]), np.asarray(rel["bin_edges"])
    keep = count > 0
    share = count / count.sum()
    contrib = share * np.abs(acc - conf)
    table = pd.DataFrame({
        "bin": [f"[{lo:.1f}, {hi:.1f})" for lo, hi in zip(edges[:-1], edges[1:], strict=True)],
        "share of pixels": share.round(4), "confidence": conf.round(4), "accuracy": acc.round(4),
        "accuracy − confidence": (acc - conf).round(4),
        "share of pooled ECE": (contrib / np.nansum(contrib)).round(3) if np.nansum(contrib) > 0 else 0.0,
    })[keep]
    return table.set_index("bin")


def _difference_ci(a, b, seed: int) -> tuple[float, float, float]:
    """Mean of ``a`` minus mean of ``b`` with a bootstrap interval resampling each set of images independently."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    diffs = (a[rng.integers(0, a.size, (2000, a.size))].mean(1) - b[rng.integers(0, b.size, (2000, b.size))].mean(1))
    lo, hi = np.quantile(diffs, [(1 - CI_LEVEL) / 2, (1 + CI_LEVEL) / 2])
    return float(a.mean() - b.mean()), float(lo), float(hi)


def subset_table(model: Mapping[str, Mapping], standin: Mapping[str, Mapping], seed: int = 0,
                 digits: int = 3) -> pd.DataFrame:
    """Image-wise ECE of pixel subsets for a model and for its calibrated stand-in, and the excess of the model.

    Parameters
    ----------
    model, standin : {subset name: ``CalibrationMeter.compute()``} for the model (real labels) and for the stand-in
        (labels drawn from the model's own probabilities, :func:`segcal_lib.standin.sample_calibrated_labels`); the
        stand-in's subsets are defined with its own labels (e.g. *its* mispredicted pixels).
    seed : bootstrap seed.

    Returns
    -------
    DataFrame indexed by subset: the model's number of pixels in the subset and their accuracy, its image-wise
    ECE with a 95% bootstrap interval over images, the stand-in's, and ``excess`` (model − stand-in) with an
    interval from resampling both sets of images. The excess, not the model's value, is the miscalibration.
    """
    if set(model) != set(standin):
        raise ValueError(f"model and standin must name the same subsets, got {sorted(model)} and {sorted(standin)}")
    rows = {}
    for name, res in model.items():
        m, s = bootstrap_ci(res["image_eces"], seed=seed), bootstrap_ci(standin[name]["image_eces"], seed=seed)
        d = _difference_ci(res["image_eces"], standin[name]["image_eces"], seed)
        rows[name] = {"pixels": res["n_pixels"], "accuracy": round(res["accuracy"], 3),
                      "model image-wise ECE": fmt_ci(*m, digits=digits),
                      "stand-in image-wise ECE": fmt_ci(*s, digits=digits),
                      "excess (model − stand-in)": fmt_ci(*d, digits=digits)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "subset"
    return table


def paper_comparison(rows: Sequence[Mapping]) -> pd.DataFrame:
    """A "we vs the paper" table from rows ``{"quantity", "ours", "paper", "source"}`` (+ optional ``"note"``).

    A column ``ours / paper`` is added where both are numbers, so the reader sees agreement at a glance.
    """
    table = pd.DataFrame(list(rows))
    missing = {"quantity", "ours", "paper", "source"} - set(table.columns)
    if missing:
        raise ValueError(f"rows must have keys quantity, ours, paper, source; missing {sorted(missing)}")

    def ratio(r):
        try:
            return round(float(r["ours"]) / float(r["paper"]), 2)
        except (TypeError, ValueError, ZeroDivisionError):
            return None

    table["ours / paper"] = table.apply(ratio, axis=1)
    return table.set_index("quantity")


def say(text: str) -> None:
    """Render a computed Markdown sentence (in a notebook and in the built book); print it elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # plain Python: no rich display
        print(text)
        return
    if get_ipython() is None:
        print(text)
    else:
        display(Markdown(text))


def glue(name: str, value, display: bool = False) -> None:
    """Store ``value`` for ``{glue:text}`name``` in Markdown cells (myst-nb); a no-op where myst-nb is missing."""
    try:
        from myst_nb import glue as _glue
    except ImportError:  # e.g. a Colab runtime without the book extra: the value is still printed by the chapter
        return
    _glue(name, value, display=display)
