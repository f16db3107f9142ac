"""Checked exercises of the book, one module per chapter (``ch01``, ``ch02``, ...).

Each module has ``build(**numbers) -> dict[str, Exercise]``: the chapter passes the numbers this run measured, so a
check compares the reader's answer with *this* run's value, never with a hard-coded one. ``EXAMPLE`` holds numbers of
the right kind for the tests (every check must accept its ``right`` answer and reject its ``wrong`` one).

>>> from segcal_lib.exercise_bank import ch01
>>> ex = ch01.build(**ch01.EXAMPLE)
>>> ex["constant_predictor"].checker(0.0) is None
True
"""

from segcal_lib.exercise_bank import ch01, ch02, ch03

CHAPTERS = {"ch01": ch01, "ch02": ch02, "ch03": ch03}

__all__ = ["CHAPTERS", "ch01", "ch02", "ch03"]
