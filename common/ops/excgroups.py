"""Walking exception groups (trio nurseries raise them): the one copy of the walks.

* :func:`leaves` -- every non-group exception inside, depth first, in order.
* :func:`first_leaf` -- the first of those (the one a log line names).
* :func:`first_of` -- the first leaf of a given type, or ``None``.
* :func:`unwrap_single` -- peel groups that hold exactly one exception.

A plain exception is its own (only) leaf, so callers need not check first.
"""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


def leaves(e: BaseException) -> list[BaseException]:
    """Every non-group exception in ``e``, depth first, left to right."""
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in leaves(sub)]
    return [e]


def first_leaf(e: BaseException) -> BaseException:
    """The first non-group exception in ``e`` (``e`` itself when it is no group)."""
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


def first_of(e: BaseException, kind: type[E]) -> E | None:
    """The first leaf of ``e`` that is a ``kind``, or ``None``."""
    for leaf in leaves(e):
        if isinstance(leaf, kind):
            return leaf
    return None


def unwrap_single(e: BaseException) -> BaseException:
    """``e`` without the groups around it that hold only one exception."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e
