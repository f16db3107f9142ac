"""Wide tables for the chapters, built from a sweep's tidy ``metrics`` frame."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from segcal_lib.report import fmt_ci

__all__ = ["LABELS", "ci_table", "seed_means"]

#: Column titles of the metrics, as tables print them.
LABELS = {"image_ece": "image-wise ECE", "pooled_ece": "pooled ECE", "nll": "NLL", "miou": "mIoU",
          "accuracy": "accuracy", "confidence": "mean confidence", "over_confidence": "confidence − accuracy"}


def ci_table(metrics: pd.DataFrame, index: Sequence[str], columns: Sequence[str] = ("image_ece", "pooled_ece", "miou",
             "over_confidence"), digits: int = 3) -> pd.DataFrame:
    """One row per ``index`` combination, one column per metric: ``"value [low, high]"`` (95% interval over images).

    Parameters
    ----------
    metrics : a sweep's tidy frame (columns ``metric``, ``value``, ``ci_low``, ``ci_high`` and the ``index`` ones).
    index : the columns that name a row (e.g. ``("model", "seed")``); every combination must be unique per metric.
    columns : metrics to show, in order.
    """
    index = list(index)
    df = metrics[metrics["metric"].isin(columns)]
    if df.duplicated(index + ["metric"]).any():
        raise ValueError(f"index {index} does not identify one row per metric; add a column (e.g. 'seed')")
    cells = df.assign(cell=[fmt_ci(v, lo, hi, digits) for v, lo, hi in zip(df["value"], df["ci_low"],
                                                                              df["ci_high"], strict=True)])
    table = cells.pivot(index=index, columns="metric", values="cell")[list(columns)]
    order = cells[index].drop_duplicates()  # rows in the sweep's order, not sorted
    table = table.loc[pd.MultiIndex.from_frame(order) if len(index) > 1 else order[index[0]].tolist()]
    table.columns = [LABELS[c] for c in columns]
    return table


def seed_means(metrics: pd.DataFrame, by: Sequence[str], metric: str) -> pd.DataFrame:
    """Mean, min and max over seeds of ``metric`` per ``by`` group, with the widest interval half-width."""
    df = metrics[metrics["metric"] == metric]
    if df.empty:
        raise ValueError(f"no rows for metric {metric!r}")
    g = df.assign(half=(df["ci_high"] - df["ci_low"]) / 2).groupby(list(by), sort=False)
    out = g.agg(mean=("value", "mean"), seed_min=("value", "min"), seed_max=("value", "max"),
                seeds=("value", "size"), widest_half_ci=("half", "max"))
    return out
