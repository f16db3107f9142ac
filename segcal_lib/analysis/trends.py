"""Trend or noise? The book's rule for claiming that a metric changes along a factor, checked in code.

A sweep measures a metric at several settings ``x`` (parameter count, crop size), for several training seeds, each value
with a bootstrap interval over images. :func:`trend` fits, for every seed, the least-squares slope of the metric against
``log10(x)`` and claims a direction only when

1. every seed's slope has the same sign, and
2. the change the mean slope predicts across the sweep, ``|slope| * (log10 max x - log10 min x)``, is larger than the
   noise: the largest of (a) the spread over seeds at any one setting (max - min of the seeds' values) and (b) the
   widest half-width of a 95% bootstrap interval over images at any one point.

Otherwise the effect is reported as within noise. :func:`difference` does the same for two settings measured on the
same model and images (e.g. single- vs multi-scale testing): per seed a paired interval over images, and a claim only
when every seed's interval excludes zero on the same side and the mean difference exceeds the spread over seeds.
The sentences are generated from these checks (:attr:`Trend.sentence`, :attr:`Difference.sentence`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from segcal_lib.analysis.tables import LABELS

__all__ = ["Difference", "LengthComparison", "Trend", "compare_lengths", "difference", "length_sentence", "trend",
           "trend_table"]


def _capitalised(text: str) -> str:
    """Upper-case the first letter, unless the first word is mixed-case already (mIoU stays mIoU)."""
    return text if text[1:2].isupper() else text[:1].upper() + text[1:]


@dataclass(frozen=True)
class Trend:
    """The outcome of :func:`trend`.

    Attributes
    ----------
    direction : "increases", "decreases" or "within noise".
    effect : signed change across the sweep predicted by the mean slope.
    noise : the noise level the effect was compared with.
    seed_spread, ci_half_width : the two parts of ``noise``.
    slopes : per-seed slopes (metric per decade of ``x``).
    metric, x : names, for the sentence.
    """

    direction: str
    effect: float
    noise: float
    seed_spread: float
    ci_half_width: float
    slopes: tuple[float, ...]
    metric: str
    x: str

    @property
    def claimed(self) -> bool:
        return self.direction != "within noise"

    @property
    def sentence(self) -> str:
        """A sentence stating what was found, with the numbers that decided it."""
        what = (f"the fit predicts a change of {self.effect:+.4f} across the sweep, against a noise level of "
                f"{self.noise:.4f} (spread over seeds {self.seed_spread:.4f}, widest 95% half-interval over images "
                f"{self.ci_half_width:.4f})")
        signs = "all seeds agree on the sign" if len({np.sign(s) for s in self.slopes}) == 1 else \
            "the seeds disagree on the sign"
        if self.claimed:
            return f"{_capitalised(f'{self.metric} {self.direction} with {self.x}')}: {what}; {signs}."
        return f"The change of {self.metric} with {self.x} is within noise: {what}; {signs}."


def _metric_frame(df: pd.DataFrame, metric: str | None) -> pd.DataFrame:
    if metric is not None:
        if "metric" not in df.columns:
            raise ValueError("df must have a 'metric' column when metric is given")
        df = df[df["metric"] == metric]
    if df.empty:
        raise ValueError(f"no rows for metric {metric!r}")
    return df


def trend(df: pd.DataFrame, x: str, metric: str | None = None, seed: str = "seed", value: str = "value",
          low: str = "ci_low", high: str = "ci_high", x_label: str | None = None) -> Trend:
    """Whether ``value`` rises or falls with ``x`` by more than the noise (see the module docstring).

    Parameters
    ----------
    df : tidy rows with columns ``x``, ``seed``, ``value`` and the interval ``low``/``high`` (e.g. a sweep's
        ``metrics`` frame); ``metric`` selects the rows of one metric.
    x : column of the positive setting (parameters, crop size); it is taken in log10.
    x_label : how the sentence names ``x`` (default: the column name). The metric is named by its table title
        (:data:`segcal_lib.analysis.tables.LABELS`).

    Returns
    -------
    :class:`Trend`.
    """
    df = _metric_frame(df, metric)
    for col in (x, seed, value, low, high):
        if col not in df.columns:
            raise ValueError(f"df must have a column {col!r}, got {list(df.columns)}")
    if (df[x] <= 0).any():
        raise ValueError(f"{x} must be positive (it is taken in log10)")
    slopes = []
    for _, g in df.groupby(seed):
        g = g.groupby(x, as_index=False)[value].mean()
        if len(g) < 2:
            raise ValueError(f"every seed needs at least two settings of {x}")
        slopes.append(float(np.polyfit(np.log10(g[x].to_numpy(float)), g[value].to_numpy(float), 1)[0]))
    span = float(np.log10(df[x].max()) - np.log10(df[x].min()))
    effect = float(np.mean(slopes)) * span
    spread = float(df.groupby(x)[value].agg(lambda v: v.max() - v.min()).max())
    half = float(((df[high] - df[low]) / 2).max())
    noise = max(spread, half)
    same_sign = len({np.sign(s) for s in slopes}) == 1 and slopes[0] != 0
    direction = ("increases" if effect > 0 else "decreases") if same_sign and abs(effect) > noise else "within noise"
    name = LABELS.get(metric, metric) if metric else value
    return Trend(direction, effect, noise, spread, half, tuple(slopes), name, x_label or x)


def trend_table(trends: Mapping[Hashable, Trend], names: str | Sequence[str] = "setting") -> pd.DataFrame:
    """Several :class:`Trend` results side by side, one row each: ``direction``, ``effect``, ``noise``,
    ``seed_spread`` and ``ci_half_width``, indexed by the keys of ``trends`` (tuples give a MultiIndex named by
    ``names``, e.g. ``{("image-wise ECE", "half the steps"): Trend, ...}`` with ``["metric", "training length"]``)."""
    if not trends:
        raise ValueError("trends must hold at least one Trend")
    rows = [{"direction": t.direction, "effect": t.effect, "noise": t.noise, "seed_spread": t.seed_spread,
             "ci_half_width": t.ci_half_width} for t in trends.values()]
    keys = list(trends)
    index = (pd.MultiIndex.from_tuples(keys, names=list(names)) if isinstance(keys[0], tuple)
             else pd.Index(keys, name=names))
    return pd.DataFrame(rows, index=index)


def length_sentence(trends: Mapping[str, Trend]) -> str:
    """Whether one metric's verdict is the same at every training length: ``trends`` maps a length's description
    (e.g. "half the steps") to the :class:`Trend` of the same sweep trained that long."""
    if len(trends) < 2 or len({t.metric for t in trends.values()}) != 1:
        raise ValueError("trends must hold two or more Trend results of one metric")
    metric = next(iter(trends.values())).metric
    verdicts = "; ".join(f"{length}: {t.direction}, {t.effect:+.4f} against noise {t.noise:.4f}"
                         for length, t in trends.items())
    if len({t.direction for t in trends.values()}) == 1:
        return f"The verdict on {metric} is the same at every training length ({verdicts})."
    return f"The verdict on {metric} depends on how long the models were trained ({verdicts})."


@dataclass(frozen=True)
class LengthComparison:
    """The outcome of :func:`compare_lengths`: ``trends[metric][length]`` is a :class:`Trend`."""

    trends: dict[str, dict[str, Trend]]

    @property
    def table(self) -> pd.DataFrame:
        """Every trend, one row per (metric title, length): see :func:`trend_table`."""
        return trend_table({(t.metric, length): t for by_length in self.trends.values() for length, t in
                            by_length.items()}, ["metric", "training length"])

    def sentence(self, metric: str) -> str:
        """:func:`length_sentence` of ``metric`` (e.g. ``"image_ece"``)."""
        return length_sentence(self.trends[metric])

    def same(self, metric: str) -> bool:
        """Whether ``metric``'s verdict is the same at every length."""
        return len({t.direction for t in self.trends[metric].values()}) == 1


def compare_lengths(frames: Mapping[str, pd.DataFrame], x: str, metrics: Sequence[str],
                    x_label: str | None = None) -> LengthComparison:
    """The same sweep trained for different numbers of steps: :func:`trend` of each metric in each sweep.

    Parameters
    ----------
    frames : {length description (e.g. "half the steps"): the sweep's tidy ``metrics`` frame}, in display order.
    x, x_label : the setting column and how sentences name it, as in :func:`trend`.
    metrics : metric names (``"image_ece"``, ...).
    """
    if len(frames) < 2:
        raise ValueError("frames must hold the sweep at two or more training lengths")
    return LengthComparison({m: {length: trend(df, x, m, x_label=x_label) for length, df in frames.items()}
                             for m in metrics})


@dataclass(frozen=True)
class Difference:
    """The outcome of :func:`difference`: ``b - a`` per seed with paired intervals over images."""

    direction: str  # "higher", "lower" or "within noise" (b relative to a)
    mean: float
    per_seed: tuple[tuple[float, float, float], ...]  # (difference, low, high) per seed
    seed_spread: float
    metric: str
    a: str
    b: str

    @property
    def claimed(self) -> bool:
        return self.direction != "within noise"

    @property
    def sentence(self) -> str:
        seeds = "; ".join(f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" for d, lo, hi in self.per_seed)
        head = (f"{self.metric} is {self.direction} with {self.b} than with {self.a}" if self.claimed
                else f"The difference in {self.metric} between {self.b} and {self.a} is within noise")
        head = _capitalised(head)
        return (f"{head}: mean difference {self.mean:+.4f}, spread over seeds {self.seed_spread:.4f}; per seed, "
                f"difference with its 95% paired interval over images: {seeds}.")


def difference(per_seed: list[tuple[float, float, float]], metric: str, a: str, b: str) -> Difference:
    """Judge a difference ``b - a`` measured once per seed as ``(difference, low, high)`` (paired over images).

    A direction is claimed when every seed's interval excludes zero on the same side and the mean difference exceeds
    the spread of the differences over seeds.
    """
    if not per_seed:
        raise ValueError("per_seed must hold at least one (difference, low, high) triple")
    d = np.array([p[0] for p in per_seed], dtype=float)
    lows, highs = np.array([p[1] for p in per_seed]), np.array([p[2] for p in per_seed])
    spread = float(d.max() - d.min())
    mean = float(d.mean())
    if (lows > 0).all() and abs(mean) > spread:
        direction = "higher"
    elif (highs < 0).all() and abs(mean) > spread:
        direction = "lower"
    else:
        direction = "within noise"
    return Difference(direction, mean, tuple(tuple(map(float, p)) for p in per_seed), spread, metric, a, b)
