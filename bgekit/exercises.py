"""Exercise checks for the course notebooks.

A learner's notebook shows each exercise as a task, a hint, a cell to fill in (which raises
``NotImplementedError`` until it is filled) and a check cell. The check runs inside :func:`check`, so a
learner who has not tried yet sees a friendly note instead of a traceback, and the notebook still runs top to
bottom; a wrong answer fails with the check's own message. The solutions live apart (``notebooks/solutions/``),
and CI runs those, so every check is proved to pass with a correct answer.

>>> with check("two plus two"):
...     assert 2 + 2 == 4
exercise 'two plus two': correct
>>> def my_answer():
...     raise NotImplementedError("write your answer here")
>>> with check("not tried yet"):
...     assert my_answer() == 4
exercise 'not tried yet': not attempted yet (fill in the cell above, then run this check again)
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["check", "todo"]


def todo(what: str = "your answer") -> None:
    """Raise ``NotImplementedError``: the placeholder a learner replaces with an answer.

    Raises:
        NotImplementedError: always, naming ``what``.
    """
    raise NotImplementedError(f"write {what} here")


@contextmanager
def check(name: str) -> Iterator[None]:
    """Run an exercise's check: print ``correct``, or ``not attempted yet`` when the answer is still a placeholder.

    Args:
        name: the exercise's short name, printed with the verdict.

    Raises:
        AssertionError: the answer is wrong (the check's own message is kept).
    """
    try:
        yield
    except NotImplementedError:
        print(f"exercise {name!r}: not attempted yet (fill in the cell above, then run this check again)")
        return
    print(f"exercise {name!r}: correct")
