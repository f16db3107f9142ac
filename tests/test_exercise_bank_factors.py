"""Every exercise of chapters 4-7 accepts its solution and rejects a wrong answer (built from sample numbers)."""

import pytest

from segcal_lib.exercise_bank import ch04, ch05, ch06, ch07

BANKS = [
    ch04.exercises({"a": 0.05, "b": 0.06, "c": 0.04}, {"a": 20_000, "b": 300_000, "c": 1_300_000}),
    ch04.exercises({"a": 0.05, "b": 0.05}, {"a": 1, "b": 30}),  # no change: the wrong answer must still differ
    ch05.exercises({24: 0.08, 36: 0.07, 48: 0.065, 72: 0.07}),
    ch06.exercises(-0.021),
    ch07.exercises(0.612, 0.43),
]


@pytest.mark.parametrize("ex", [ex for bank in BANKS for ex in bank], ids=lambda ex: ex.key)
def test_check_accepts_right_and_rejects_wrong(ex, capsys):
    assert ex.check(ex.right) is True
    assert ex.check(ex.wrong) is False
    assert "Not quite" in capsys.readouterr().out


def test_banks_have_three_to_five_exercises_and_validate_input():
    for bank in BANKS:
        assert 3 <= len(bank) <= 5
    with pytest.raises(ValueError):
        ch04.exercises({"a": 0.1}, {"a": 1})
    with pytest.raises(ValueError):
        ch05.exercises({24: 0.1})
