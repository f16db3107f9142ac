"""Every exercise of the bank: its check accepts its ``right`` answer and rejects its ``wrong`` one, with a reason;
statements say how to check; chapters 1-3 each have 3-5 exercises."""

import pytest

from segcal_lib.exercise_bank import CHAPTERS
from segcal_lib.exercises import Exercise

ALL = [(name, key, ex) for name, mod in CHAPTERS.items() for key, ex in mod.build(**mod.EXAMPLE).items()]


@pytest.mark.parametrize("name", sorted(CHAPTERS))
def test_each_chapter_has_three_to_five_exercises(name):
    exercises = CHAPTERS[name].build(**CHAPTERS[name].EXAMPLE)
    assert 3 <= len(exercises) <= 5
    assert all(isinstance(e, Exercise) for e in exercises.values())


@pytest.mark.parametrize(("name", "key", "ex"), ALL, ids=[f"{n}.{k}" for n, k, _ in ALL])
def test_check_accepts_right_and_rejects_wrong(name, key, ex, capsys):
    assert ex.checker(ex.right) is None
    reason = ex.checker(ex.wrong)
    assert isinstance(reason, str) and reason
    assert ex.check(ex.right) is True and ex.check(ex.wrong) is False
    out = capsys.readouterr().out
    assert "✓ Correct" in out and "✗ Not quite" in out
    assert f"ex['{key}'].check(" in ex.statement, "the statement must say how to check an answer"
    assert ex.solution and ex.hint_text


def test_numeric_exercises_follow_this_runs_numbers():
    from segcal_lib.exercise_bank import ch02, ch03

    a = ch02.build(**dict(ch02.EXAMPLE, train_miou=0.70))["train_test_gap"]
    assert a.checker(15.0) is None and a.checker(7.0) is not None
    b = ch03.build(**dict(ch03.EXAMPLE, bins50_standin_image_ece=0.01))["bins_bias"]
    assert b.checker("down") is None and b.checker("up") is not None
    c = ch02.build(**dict(ch02.EXAMPLE, confidence=0.95))["confidence_side"]
    assert c.checker("over") is None and c.checker("under") is not None
