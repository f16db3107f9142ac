"""Sweeps over the factors that drive miscalibration, returning tidy tables with bootstrap intervals over images.

- :mod:`~segcal_lib.analysis.factors`: the sweeps of chapters 4-7 (capacity, crop size, multi-scale testing,
  prediction correctness) and their sizes per profile;
- :mod:`~segcal_lib.analysis.image_sums`: per-image sums, the metrics computed from them, bootstrap intervals;
- :mod:`~segcal_lib.analysis.convergence`: the plateau detector on training-loss curves, the early-stopping test;
- :mod:`~segcal_lib.analysis.training_length`: the main model trained for several lengths, side by side;
- :mod:`~segcal_lib.analysis.trends`: the rule for claiming a trend against the spread over seeds and images;
- :mod:`~segcal_lib.analysis.correctness`: the calibrated stand-in, the oracle, subset sums.

This is the top floor of the library: it imports the pipeline, nothing imports it.
"""

from segcal_lib.analysis.convergence import (
    curve_frame,
    late_improvement,
    plateau_step,
    plateaued,
    smooth,
    stopped_improving,
)
from segcal_lib.analysis.correctness import ORACLE_TEMPERATURE, correctness_sums, oracle_logits
from segcal_lib.analysis.factors import (
    FACTOR_SETTINGS,
    FactorSettings,
    Sweep,
    capacity_sweep,
    correctness_analysis,
    crop_sweep,
    factor_profile,
    factor_settings,
    get_factor_model,
    multiscale_settings,
    multiscale_sweep,
    training_sentence,
)
from segcal_lib.analysis.image_sums import (
    METRICS,
    ImageSums,
    SumsCollector,
    bootstrap_weights,
    metric_rows,
    paired_stat,
)
from segcal_lib.analysis.tables import LABELS, ci_table, seed_means
from segcal_lib.analysis.training_length import format_training_length, training_length_table
from segcal_lib.analysis.trends import (
    Difference,
    LengthComparison,
    Trend,
    compare_lengths,
    difference,
    length_sentence,
    trend,
    trend_table,
)

__all__ = [
    "LABELS",
    "ci_table",
    "seed_means",
    "FACTOR_SETTINGS",
    "METRICS",
    "ORACLE_TEMPERATURE",
    "Difference",
    "FactorSettings",
    "ImageSums",
    "SumsCollector",
    "Sweep",
    "Trend",
    "bootstrap_weights",
    "capacity_sweep",
    "correctness_analysis",
    "correctness_sums",
    "crop_sweep",
    "curve_frame",
    "format_training_length",
    "training_length_table",
    "late_improvement",
    "stopped_improving",
    "difference",
    "factor_profile",
    "factor_settings",
    "get_factor_model",
    "metric_rows",
    "multiscale_settings",
    "multiscale_sweep",
    "oracle_logits",
    "paired_stat",
    "plateau_step",
    "plateaued",
    "smooth",
    "training_sentence",
    "trend",
    "trend_table",
    "length_sentence",
    "LengthComparison",
    "compare_lengths",
]
