"""The main model trained for several lengths, side by side: what more training changes (chapter 2).

Each length is the profile's main model with ``iters`` scaled (everything else equal, same seed), trained or loaded
through the cache; chapter 9's "trained a quarter as long" model is the first of the default lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from segcal_lib import pipeline
from segcal_lib.analysis.convergence import (
    PLATEAU_FRACTION,
    late_improvement,
    plateaued,
    smooth,
    stopped_improving,
)
from segcal_lib.analysis.image_sums import ImageSums, metric_rows
from segcal_lib.config import Profile, get_profile
from segcal_lib.report import fmt_ci

__all__ = ["format_training_length", "training_length_table"]


def _tail_drop(losses: Sequence[float]) -> float:
    """Relative fall of the smoothed training loss over the last fifth of the run."""
    s = smooth(losses)
    at = s[int(PLATEAU_FRACTION * (s.size - 1))]
    return float((at - s[-1]) / s[-1])


def training_length_table(dataset: str = "synthetic", profile: Profile | str | None = None,
                          fractions: Sequence[float] = (0.25, 0.5, 1.0), progress: bool = True,
                          verbose: bool = False) -> pd.DataFrame:
    """Train (or load) the main model for ``fractions`` of the profile's steps and measure each on train and test.

    Parameters
    ----------
    dataset : data set name, as for :func:`segcal_lib.pipeline.get_model`.
    profile : profile or its name (default: the active one).
    fractions : fractions of ``profile.train_iters``, each giving one row (default a quarter, a half, all).
    progress : a progress bar while a length is trained (default True; loading from the cache shows none).
    verbose : print the training / caching messages (default False: a long table of them helps nobody).

    Returns
    -------
    DataFrame, one row per length, indexed by ``steps``, with float columns ``final_loss`` (smoothed training loss at
    the end), ``tail_drop`` (its relative fall over the last fifth), ``val_improvement`` (how much the last fifth
    improved the best validation loss, :func:`~segcal_lib.analysis.convergence.late_improvement`), ``train_miou``,
    ``test_miou``, ``test_ece`` with ``test_ece_low``/``test_ece_high`` (image-wise ECE and its 95% bootstrap interval
    over images), ``test_nll``, ``train_over_confidence`` and ``test_over_confidence`` (confidence − accuracy), and
    bool columns ``plateaued`` (training loss) and ``stopped_improving`` (validation loss).
    """
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must be a non-empty sequence of numbers in (0, 1], got {fractions!r}")
    rows = []
    for f in fractions:
        model, cfg = pipeline.get_model(dataset, p, progress=progress, verbose=verbose,
                                        iters=max(2, int(p.train_iters * f)))
        stores = {s: pipeline.get_logits(model, cfg, s, p, progress=False, verbose=verbose) for s in ("train", "test")}
        history = model.train_meta["history"]
        losses, curves = history["loss"], history.get("curves")
        row = {"steps": cfg.iters, "final_loss": float(smooth(losses)[-1]), "tail_drop": _tail_drop(losses),
               "plateaued": plateaued(losses)}
        if curves:
            row["val_improvement"] = late_improvement(curves["step"], curves["val_loss"])
            row["stopped_improving"] = stopped_improving(curves["step"], curves["val_loss"])
        else:
            row["val_improvement"], row["stopped_improving"] = np.nan, False
        for split, store in stores.items():
            sums = ImageSums.from_batches(store.iter_batches(16), store.num_classes)
            metrics = ["miou", "over_confidence"] + (["image_ece", "nll"] if split == "test" else [])
            for r in metric_rows(sums, {}, metrics):
                row[f"{split}_{r['metric'].replace('image_', '')}"] = r["value"]
                if r["metric"] == "image_ece":
                    row["test_ece_low"], row["test_ece_high"] = r["ci_low"], r["ci_high"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("steps")


def format_training_length(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`training_length_table` as a readable table: percentages, points, intervals, yes/no."""
    def yes(flag):
        return "yes" if flag else "no"

    return pd.DataFrame({
        "training loss (end)": table["final_loss"].round(3),
        "training loss fell in the last fifth (%)": (table["tail_drop"] * 100).round(1),
        "training loss plateaued": table["plateaued"].map(yes),
        "best val loss improved in the last fifth (%)": (table["val_improvement"] * 100).round(1),
        "val loss stopped improving": table["stopped_improving"].map(yes),
        "train mIoU (%)": (table["train_miou"] * 100).round(1),
        "test mIoU (%)": (table["test_miou"] * 100).round(1),
        "test image-wise ECE [95% CI]": [fmt_ci(v, lo, hi, 4) for v, lo, hi in
                                         table[["test_ece", "test_ece_low", "test_ece_high"]].to_numpy()],
        "test NLL": table["test_nll"].round(3),
        "train confidence − accuracy (points)": (table["train_over_confidence"] * 100).round(2),
        "test confidence − accuracy (points)": (table["test_over_confidence"] * 100).round(2),
    }, index=table.index.rename("steps")).T
