"""Chapter 9's exercises: every check accepts its right answer, rejects its wrong one, and follows the run's numbers."""

import pytest

from segcal_lib.calibrators.selective import apply_selective_scaling
from segcal_lib.exercise_bank import ch09

EXERCISES = ch09.build(**ch09.EXAMPLE)


def test_three_to_five_exercises():
    assert 3 <= len(EXERCISES) <= 5


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_check_accepts_right_and_rejects_wrong(key, capsys):
    ex = EXERCISES[key]
    assert ex.checker(ex.right) is None
    assert isinstance(ex.checker(ex.wrong), str)
    assert f"ex['{key}'].check(" in ex.statement and ex.solution and ex.hint_text
    assert ex.check(ex.right) and not ex.check(ex.wrong)
    capsys.readouterr()


def test_the_library_rule_passes_the_scaling_exercise():
    ex = EXERCISES["write_scaling"]
    assert ex.checker(lambda z, f, t: apply_selective_scaling(z, f, t_mis=t)) is None


def test_answers_follow_this_runs_numbers():
    helps = ch09.build(**dict(ch09.EXAMPLE, precision=0.9, flagged_confidence=0.8))["break_even"]
    assert helps.checker("yes") is None and helps.checker("no") is not None
    hurts = ch09.build(**dict(ch09.EXAMPLE, precision=0.3, flagged_confidence=0.5))["break_even"]
    assert hurts.checker("no") is None
    acc = ch09.build(**dict(ch09.EXAMPLE, precision=0.8))["flagged_accuracy"]
    assert acc.checker(0.2) is None and acc.checker(0.47) is not None
    best = ch09.build(**dict(ch09.EXAMPLE, best_variant="soft"))["best_variant"]
    assert best.checker("soft") is None and best.checker("fitted T") is not None
