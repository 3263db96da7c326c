"""What a transaction rule knows of the statements before this one, kept up to date
statement by statement instead of being worked out again from the whole transaction.

Lint checks each statement with ``context.transaction``, the list of the statements of
the transaction so far, which the engine extends by one after each check (and replaces
with a new list when a transaction ends). A rule that read the whole list at every
statement would cost O(n) per statement, O(n²) per transaction: a 3,000-statement
migration linted in 58 s instead of a few. :class:`Memo` keeps one state per rule and
thread, for the list it was built from, and feeds it only the statements added since.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from safeddl.analysis import Statement
from safeddl.rules.base import Context

S = TypeVar("S")


class Memo(Generic[S]):
    """``state()`` for the statements of ``context.transaction``, built with ``fresh``
    and advanced with ``feed(state, statement, context)`` over the new ones."""

    def __init__(self, fresh: Callable[[], S],
                 feed: Callable[[S, Statement, Context], None]) -> None:
        self._fresh = fresh
        self._feed = feed
        self._local = threading.local()

    def state(self, context: Context) -> S:
        transaction = context.transaction
        memo: tuple[list[Statement], int, S] | None = getattr(self._local, "memo", None)
        if memo is None or memo[0] is not transaction or memo[1] > len(transaction):
            memo = (transaction, 0, self._fresh())
        _list, done, state = memo
        for statement in transaction[done:]:
            self._feed(state, statement, context)
        self._local.memo = (transaction, len(transaction), state)  # keeps the list alive
        return state


__all__ = ["Memo"]
