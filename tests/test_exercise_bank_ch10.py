"""Chapter 10's exercises: every check accepts its solution and rejects a wrong answer; answers come from the data."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from segcal_lib.data import apply_shift, list_shifts
from segcal_lib.exercise_bank import ch10


def _frame() -> pd.DataFrame:
    rows = [("in-domain", "none", 0, 0.050), ("fog 5", "fog", 5, 0.120), ("blur 5", "blur", 5, 0.090),
            ("fog 1", "fog", 1, 0.300)]
    out = []
    for test_set, shift, sev, ece in rows:
        out.append(dict(test_set=test_set, shift=shift, severity=sev, calibrator="identity", method="Uncal",
                        metric="image_ece", value=ece))
        out.append(dict(test_set=test_set, shift=shift, severity=sev, calibrator="ts", method="TempS",
                        metric="image_ece", value=ece / 2))
    return pd.DataFrame(out)


def _all_exercises():
    df = _frame()
    return [ch10.worst_shift(df, 5), ch10.ece_growth(df, "fog 5"), ch10.temperature_under_shift(1.2, 1.7, "fog 5"),
            ch10.write_corruption()]


@pytest.mark.parametrize("ex", _all_exercises(), ids=lambda e: e.key)
def test_each_check_accepts_its_solution_and_rejects_a_wrong_answer(ex, capsys):
    assert ex.check(ex.right) is True
    assert ex.check(ex.wrong) is False
    assert "Not quite" in capsys.readouterr().out
    ex.hint()
    assert capsys.readouterr().out.startswith("Hint:")


def test_answers_follow_the_numbers():
    df = _frame()
    assert ch10.worst_shift(df, 5).right == "fog"          # 0.120 > 0.090; fog 1 (0.300) is another severity
    assert ch10.worst_shift(df, 1).right == "fog"
    assert ch10.ece_growth(df, "blur 5").right == pytest.approx(4.0)
    assert ch10.temperature_under_shift(1.7, 1.2, "x").right == "smaller"
    with pytest.raises(ValueError, match="severity"):
        ch10.worst_shift(df, 3)
    with pytest.raises(ValueError, match="test set"):
        ch10.ece_growth(df, "snow 5")
    with pytest.raises(ValueError, match="temperatures"):
        ch10.temperature_under_shift(0.0, 1.0, "x")


@pytest.mark.parametrize("name", list_shifts())
def test_the_librarys_own_transforms_pass_the_exercises_convention_check(name):
    assert ch10.check_corruption(lambda x, s, seed: apply_shift(x, name, s, seed=seed))


def _darken(x, s, seed):
    return x * (1 - 0.1 * s)


@pytest.mark.parametrize("fn", [
    lambda x, s, seed: (_darken(x, s, seed) + 0.01).clamp(0, 1),                # severity 0 is not the identity
    lambda x, s, seed: _darken(x, s, seed).double(),                            # dtype changed
    lambda x, s, seed: x * (1 + 0.5 * s),                                       # leaves [0, 1]
    lambda x, s, seed: (x + 0.01 * s * torch.randn(x.shape)).clamp(0, 1),       # not repeatable for a seed
    lambda x, s, seed: x * 0.5 if s else x,                                     # not monotone past severity 1
    lambda x, s, seed: _darken(x, s, seed)[..., :-1],                           # shape changed
])
def test_convention_check_rejects_each_broken_rule(fn):
    assert ch10.check_corruption(_darken) is True
    assert ch10.check_corruption(fn) is False
