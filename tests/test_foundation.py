"""The paper's numbers, bootstrap intervals, generated phrases and checked exercises."""

import math

import numpy as np
import pytest

from segcal_lib import paper, report
from segcal_lib.exercises import Exercise, choice, numeric, predicate
from segcal_lib.stats import bootstrap_ci, paired_bootstrap_ci


def test_paper_tables_transcribed_whole():
    assert len(paper.TABLE1) == 15 and len(paper.TABLE2) == 12
    for row in paper.TABLE1 + paper.TABLE2:
        # The paper: "Selective is best in every row of both tables" -- a transcription check.
        assert row["Selective"] == min(row[m] for m in paper.METHODS), row
    assert paper.table_rows(1, data="ADE20K", model="SegFormer-B5")[0]["Uncal"] == 0.111
    with pytest.raises(ValueError, match="table"):
        paper.table_rows(3)


def test_paper_relative_reduction_matches_rows():
    red = paper.relative_reduction(1)
    assert max(red) == pytest.approx(1 - 0.093 / 0.170)  # Knet-DeepLab on COCO
    assert len(red) == len(paper.TABLE1)


def test_bootstrap_ci_against_brute_force_resampling():
    x = np.random.default_rng(1).gamma(2.0, 0.05, size=40)
    mean, lo, hi = bootstrap_ci(x, n_boot=4000, seed=3)
    assert mean == pytest.approx(x.mean())
    # The same resampling written out by hand.
    idx = np.random.default_rng(3).integers(0, 40, size=(4000, 40))
    ref = np.quantile(x[idx].mean(1), [0.025, 0.975])
    assert (lo, hi) == pytest.approx(tuple(ref))
    assert lo < mean < hi


def test_bootstrap_ci_degenerate_and_errors():
    assert bootstrap_ci([0.5]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([0.1, math.nan])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([0.1, 0.2], level=1.5)


def test_paired_interval_is_tighter_than_separate_ones():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.05, 0.3, size=50)
    after = base * 0.8 + rng.normal(0, 0.002, size=50)
    d, lo, hi = paired_bootstrap_ci(base, after)
    assert d == pytest.approx((after - base).mean())
    assert hi < 0  # a consistent 20% drop is detected
    _, lo_b, hi_b = bootstrap_ci(base)
    assert (hi - lo) < (hi_b - lo_b) / 3
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap_ci([0.1, 0.2], [0.1])


@pytest.mark.parametrize("conf, acc, expected", [
    (0.913, 0.890, "over-confident by 2.30 points"),
    (0.906, 0.912, "under-confident by 0.60 points"),
])
def test_confidence_verdict_says_the_side_and_size(conf, acc, expected):
    assert report.confidence_verdict(conf, acc) == expected


def test_confidence_verdict_near_zero_and_nan():
    assert report.confidence_verdict(0.9, 0.9).startswith("neither")
    with pytest.raises(ValueError):
        report.confidence_verdict(math.nan, 0.5)


def test_ratio_and_compare_phrases():
    assert report.ratio_phrase(0.94, 0.01) == "94×"
    assert report.ratio_phrase(0.13, 0.1) == "1.3×"
    assert "close to" in report.compare_phrase(0.105, 0.111)
    assert report.compare_phrase(0.031, 0.111).startswith("ours (0.031) is 3.6× lower")
    assert "higher" in report.compare_phrase(0.3, 0.1)
    with pytest.raises(ValueError):
        report.ratio_phrase(1.0, 0.0)


def test_calibration_table_rows_and_intervals():
    res = {"ece": 0.05, "nll": 0.3, "brier": 0.1, "confidence": 0.9, "accuracy": 0.88,
           "image_eces": np.array([0.04, 0.06, 0.05])}
    table = report.calibration_table({"Uncal": res, "TempS": {**res, "ece": 0.02}}, miou={"Uncal": 0.5, "TempS": 0.5})
    assert list(table.index) == ["Uncal", "TempS"]
    assert table.loc["Uncal", "image-wise ECE"] == pytest.approx(0.05)
    assert table.loc["TempS", "pooled ECE"] == pytest.approx(0.02)
    assert table.loc["Uncal", "confidence − accuracy (points)"] == pytest.approx(2.0)
    assert table.loc["Uncal", "mIoU (%)"] == pytest.approx(50.0)
    with pytest.raises(ValueError):
        report.calibration_table({})


def test_paper_comparison_ratio_column():
    t = report.paper_comparison([{"quantity": "ECE", "ours": 0.05, "paper": 0.1, "source": "Table 1"},
                                 {"quantity": "note", "ours": "n/a", "paper": 0.1, "source": "x"}])
    assert t.loc["ECE", "ours / paper"] == pytest.approx(0.5)
    assert t.loc["note", "ours / paper"] is None or math.isnan(t.loc["note", "ours / paper"])
    with pytest.raises(ValueError, match="missing"):
        report.paper_comparison([{"quantity": "x"}])


def test_exercise_checks_accept_right_and_explain_wrong(capsys):
    ex = Exercise("k", "q?", numeric(0.25, abs_tol=0.01, explain="Count the pixels."), "h", "s", right=0.25,
                  wrong=0.5)
    assert ex.check(ex.right) is True
    assert ex.check(ex.wrong) is False
    out = capsys.readouterr().out
    assert "too high" in out and "Count the pixels." in out
    assert ex.check("abc") is False
    ex.hint()
    assert "Hint: h" in capsys.readouterr().out


def test_choice_and_predicate_checkers():
    c = choice("over", ["over", "under"], {"under": "mean confidence is above accuracy."})
    assert c("Over") is None
    assert c("under") == "mean confidence is above accuracy."
    assert "answer with one of" in c("sideways")
    with pytest.raises(ValueError):
        choice("x", ["a", "b"])
    p = predicate(lambda f: f(2) == 4, "square it")
    assert p(lambda x: x * x) is None
    assert p(lambda x: x + 1) == "square it"
    assert "ZeroDivisionError" in p(lambda x: 1 / 0)
