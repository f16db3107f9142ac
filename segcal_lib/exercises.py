"""Checked exercises: a statement, ``check(answer)`` that accepts a right answer and explains a wrong one, a hint
and a solution.

Modelled on Kaggle's learntools (``q1.check()``, ``q1.hint()``). An exercise carries one right and one wrong example
answer, so the test suite can show that every check accepts its solution and rejects a wrong answer. Checks that
depend on what a chapter measured are built by a factory that receives those numbers (see the chapter banks in
:mod:`segcal_lib.exercise_bank`).

In the book the solution is shown in a collapsed admonition (``:class: dropdown``) under the exercise.

>>> ex = Exercise("ece_zero", "ECE of a model that always predicts its accuracy?", numeric(0.0, abs_tol=1e-3),
...               hint_text="Look at one bin.", solution="0: every pixel sits in one bin whose gap is zero.",
...               right=0.0, wrong=0.5)
>>> ex.check(0.0)
✓ Correct (ece_zero).
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Exercise", "choice", "numeric", "predicate"]

# A checker returns None for a right answer, or a sentence explaining why the answer is wrong.
Checker = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Exercise:
    """One checked exercise.

    Parameters
    ----------
    key : short identifier, e.g. ``"ch01.constant_predictor"``.
    statement : the question, in Markdown.
    checker : callable ``answer -> None`` (right) or ``str`` (why it is wrong); see :func:`numeric`, :func:`choice`.
    hint_text : a nudge that does not give the answer away (printed by :meth:`hint`).
    solution : the worked answer, in Markdown.
    right, wrong : an accepted and a rejected example answer (used by the tests).
    """

    key: str
    statement: str
    checker: Checker
    hint_text: str
    solution: str
    right: Any
    wrong: Any

    def check(self, answer: Any) -> bool:
        """Print ✓ or the reason the answer is wrong; return whether it was right."""
        reason = self.checker(answer)
        if reason is None:
            print(f"✓ Correct ({self.key}).")
            return True
        print(f"✗ Not quite: {reason}\n  (Call .hint() for a nudge, or read the solution below the exercise.)")
        return False

    def hint(self) -> None:
        print(f"Hint: {self.hint_text}")

    def show(self, with_solution: bool = True) -> None:
        """Display the statement and, collapsed under it, the solution.

        In a notebook the output carries two forms: HTML with a ``<details>`` block (what Jupyter and Colab show)
        and MyST Markdown with a ``:::{admonition} Solution`` / ``:class: dropdown`` block (what the built book
        shows, ``nb_mime_priority_overrides`` in ``_config.yml``). Elsewhere the statement is printed.
        """
        statement = f"**Exercise ({self.key}).** {self.statement}"
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:  # plain Python
            get_ipython = None
        if get_ipython is None or get_ipython() is None:
            print(statement)
            return
        markdown, html = statement, _to_html(statement)
        if with_solution:
            markdown += f"\n\n:::{{admonition}} Solution\n:class: dropdown\n\n{self.solution}\n:::\n"
            html += f"<details><summary><b>Solution</b></summary>{_to_html(self.solution)}</details>"
        display({"text/markdown": markdown, "text/html": html}, raw=True)


def _to_html(markdown: str) -> str:
    """Markdown to HTML for Jupyter's view (markdown-it comes with the book extra; plain text otherwise)."""
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        import html

        return f"<p>{html.escape(markdown)}</p>"
    return MarkdownIt().render(markdown)


def numeric(expected: float, rel_tol: float = 0.0, abs_tol: float = 0.0, explain: str = "") -> Checker:
    """Accept a number within ``rel_tol`` (relative) or ``abs_tol`` (absolute) of ``expected``."""
    if not math.isfinite(expected):
        raise ValueError(f"expected must be finite, got {expected!r}")

    def check(answer):
        try:
            value = float(answer)
        except (TypeError, ValueError):
            return f"expected a number, got {answer!r}."
        if math.isclose(value, expected, rel_tol=rel_tol, abs_tol=abs_tol):
            return None
        direction = "too high" if value > expected else "too low"
        return f"{value:g} is {direction}. {explain}".strip()

    return check


def choice(correct: str, options: Sequence[str], explanations: dict[str, str] | None = None) -> Checker:
    """Accept one option out of ``options`` (case-insensitive); a wrong option gets its own explanation."""
    opts = [o.lower() for o in options]
    if correct.lower() not in opts:
        raise ValueError(f"correct must be one of options {list(options)}, got {correct!r}")
    expl = {k.lower(): v for k, v in (explanations or {}).items()}

    def check(answer):
        a = str(answer).strip().lower()
        if a not in opts:
            return f"answer with one of {list(options)}, got {answer!r}."
        if a == correct.lower():
            return None
        return expl.get(a, f"{answer!r} is not it.")

    return check


def predicate(fn: Callable[[Any], bool], explain: str) -> Checker:
    """Accept any answer for which ``fn(answer)`` is true (e.g. a function the reader wrote, run on a test case)."""

    def check(answer):
        try:
            ok = bool(fn(answer))
        except Exception as e:  # the reader's code failed: say how, rather than crash the notebook
            return f"calling it raised {type(e).__name__}: {e}"
        return None if ok else explain

    return check
