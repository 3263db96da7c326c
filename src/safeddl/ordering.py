"""Lock order as data: the canonical order of tables, and row locks by key.

:class:`LockOrder` ranks tables (the policy's ``lock_order`` first, then every other
table by its schema-qualified name); :class:`HeldLock` is a table lock a transaction
holds. Pure values, shared by the rules that check the order and the runtime ledger
that records it.

Most deadlocks in PostgreSQL are on rows, not tables: ``UPDATE``, ``DELETE`` and
``SELECT ... FOR UPDATE`` lock the rows they touch until the transaction ends, and
the table lock they take (ROW EXCLUSIVE, ROW SHARE) never conflicts with another
writer's. Two transactions that update the rows ``'hello'`` and ``'world'`` of one
table in opposite orders wait for each other. Locking rows in ascending key order
within each table (and tables in the canonical order) rules that out.

The analysis (:mod:`safeddl.sql.dml`) gives the key a statement picks its rows by
(``WHERE id = %s [AND ...]``: literals or bound parameters); :func:`row_locks` reads
the values from the parameters of one execution, :func:`first_out_of_order` finds the
greatest key the transaction locked in that table when it comes after a new one, and
:func:`lock_ordered` sorts a batch so that it cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from safeddl.locks import CONFLICTS, LockMode
from safeddl.model import Action, KeyTerm, Statement
from safeddl.sql.names import qualified_name

T = TypeVar("T")

ROW_LOCKING = (Action.UPDATE, Action.DELETE, Action.SELECT_FOR_UPDATE)  # lock rows by key
_ROW_LOCKING = ROW_LOCKING
_MISSING = object()


WRITE = LockMode.ROW_EXCLUSIVE  # the weakest lock the order check cares about


def relation_key(written: str) -> str:
    """The name a relation is compared by: ``Orders`` -> ``public.orders``."""
    try:
        return qualified_name(written)
    except ValueError:
        return written


class LockOrder:
    """The canonical order of tables: ``first`` (as the policy's ``lock_order`` lists
    them), then all the others by schema-qualified name."""

    __slots__ = ("_first", "first")

    def __init__(self, first: Iterable[str] = ()) -> None:
        self.first: tuple[str, ...] = tuple(first)
        self._first = {relation_key(name): i for i, name in enumerate(self.first)}

    def rank(self, key: str) -> tuple[int, str]:
        """Sort key of a relation key (see :func:`relation_key`)."""
        return (self._first.get(key, len(self._first)), key)

    def rank_of(self, written: str) -> tuple[int, str]:
        return self.rank(relation_key(written))

    def before(self, a: str, b: str) -> bool:
        """Does relation key ``a`` come before ``b``?"""
        return self.rank(a) < self.rank(b)

    def sorted(self, relations: Iterable[str]) -> list[str]:
        """Written names in canonical order."""
        return sorted(relations, key=self.rank_of)

    def describe(self) -> str:
        if not self.first:
            return "tables by schema-qualified name"
        return "the policy's lock_order (" + ", ".join(self.first) + "), then the other " \
            "tables by schema-qualified name"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LockOrder) and other.first == self.first

    def __hash__(self) -> int:
        return hash(self.first)

    def __repr__(self) -> str:
        return f"LockOrder({list(self.first)!r})"


DEFAULT_ORDER = LockOrder()


@dataclass(frozen=True)
class HeldLock:
    """A table lock the transaction took: on which relation, in which mode, by which
    statement, and when (``time.monotonic()``)."""

    relation: str  # as written
    key: str  # see relation_key()
    mode: LockMode
    statement: str
    taken_at: float = 0.0


def already_holds(locks: Iterable[HeldLock], key: str, mode: LockMode) -> bool:
    """Does holding these locks make asking for ``mode`` on relation ``key`` never
    wait? True when everything ``mode`` conflicts with, a held lock on it conflicts
    with too: no other session can hold such a lock now."""
    conflicting: set[LockMode] = set()
    for lock in locks:
        if lock.key == key:
            if lock.mode == mode:
                return True
            conflicting |= CONFLICTS[lock.mode]
    return bool(conflicting) and CONFLICTS[mode] <= conflicting



@dataclass(frozen=True)
class RowLock:
    """The rows of ``relation`` whose key ``columns`` equal ``values``, locked by
    ``statement``."""

    relation: str  # as written
    key: str  # relation key (see safeddl.ordering.relation_key)
    columns: tuple[str, ...]
    values: tuple[Any, ...]
    statement: str

    def describe(self) -> str:
        return " AND ".join(f"{column} = {value!r}"
                            for column, value in zip(self.columns, self.values))


def row_locks(statement: Statement, params: Any = None, *, many: bool = False,
              ) -> list[RowLock]:
    """The rows the statement locks by key, for one execution (``many``: one per
    parameter set of an executemany, in order). Statements that do not pick rows by
    ``key = value``, and parameters that are not there, give nothing."""
    steps = [step for step in statement.steps
             if step.key and step.table and step.action in _ROW_LOCKING]
    if not steps:
        return []
    if many:
        if not isinstance(params, Sequence) or isinstance(params, (str, bytes)):
            return []  # an iterator would be consumed: not inspected
        sets: Sequence[Any] = params
    else:
        sets = (params,)
    out = []
    for parameters in sets:
        for step in steps:
            assert step.table is not None
            values = key_values(step.key, parameters)
            if values is not None:
                out.append(RowLock(step.table, relation_key(step.table),
                                   tuple(term.column for term in step.key), values,
                                   statement.sql))
    return out


def key_values(terms: Sequence[KeyTerm], params: Any) -> tuple[Any, ...] | None:
    """The key's values for one execution; None when one is unknown or NULL."""
    values = []
    for term in terms:
        value: Any = term.literal
        if term.parameter is not None:
            value = _parameter(params, term.parameter)
        if value is None or value is _MISSING:
            return None
        values.append(value)
    return tuple(values)


_POSITIONAL = (tuple, list)  # what drivers are given almost always: checked before the ABCs


def _parameter(params: Any, reference: int | str) -> Any:
    if type(reference) is int:
        if type(params) in _POSITIONAL or (
                isinstance(params, Sequence) and not isinstance(params, (str, bytes))):
            return params[reference] if 0 <= reference < len(params) else _MISSING
        return _MISSING
    if type(params) is dict or isinstance(params, Mapping):
        return params.get(reference, _MISSING)
    return _MISSING


RowKeyIndex = dict[tuple[str, tuple[str, ...]], "RowLock"]
"""The greatest key locked so far per (relation key, key columns)."""


def remember_greatest(index: RowKeyIndex, row: RowLock) -> None:
    """Keep ``row`` in the index when its key is the greatest of its table so far."""
    slot = (row.key, row.columns)
    current = index.get(slot)
    if current is None or key_after(row.values, current.values):
        index[slot] = row


def greatest_keys(rows: Iterable[RowLock]) -> RowKeyIndex:
    index: RowKeyIndex = {}
    for row in rows:
        remember_greatest(index, row)
    return index


def first_out_of_order(greatest: Mapping[tuple[str, tuple[str, ...]], RowLock],
                       new: RowLock) -> RowLock | None:
    """The greatest row lock taken so far on the same table and key columns, when its
    key comes after the new one's: locking ``new`` now breaks ascending key order."""
    earlier = greatest.get((new.key, new.columns))
    if earlier is not None and key_after(earlier.values, new.values):
        return earlier
    return None


def key_after(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Does key ``a`` come after key ``b`` (False when they cannot be compared)?"""
    try:
        return bool(a > b)
    except TypeError:  # keys of different types: no order to keep
        return False


def lock_ordered(items: Iterable[T], key: Callable[[T], Any],
                 table: Callable[[T], str] | None = None,
                 order: LockOrder | Sequence[str] | None = None) -> list[T]:
    """The items sorted so that running one statement per item in this order locks
    tables in the canonical order (when ``table`` tells each item's table: the
    ``order`` given, else the default one by schema-qualified name) and rows by
    ascending ``key``, the order safeddl checks. Use it on a batch of keyed updates::

        for row in safeddl.lock_ordered(changes, key=lambda c: c["id"]):
            conn.execute(update_account, row)
    """
    ranking = order if isinstance(order, LockOrder) else (
        LockOrder(order) if order is not None else DEFAULT_ORDER)
    if table is None:
        return sorted(items, key=key)
    pick_table = table
    return sorted(items, key=lambda item: (ranking.rank_of(pick_table(item)), key(item)))


__all__ = ["DEFAULT_ORDER", "ROW_LOCKING", "WRITE", "HeldLock", "LockOrder", "RowKeyIndex", "RowLock",
           "already_holds", "first_out_of_order", "greatest_keys", "key_after", "key_values",
           "lock_ordered", "relation_key", "remember_greatest", "row_locks"]
