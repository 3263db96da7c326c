"""The lock ledger: which table and row locks the open transaction of one connection
has taken, in order, by which statement and since when.

Pure values and bookkeeping, no I/O. The runtime guard keeps one :class:`Ledger` per
driver connection (:class:`safeddl.runtime.session.ConnectionState`), records every statement
that takes more than ACCESS SHARE, and asks it before each statement whether the
statement would break the transaction's lock order (:mod:`safeddl.rules.lock_order`,
:mod:`safeddl.rules.row_lock_order`).

What PostgreSQL does, checked against the server (``tests/integration/test_lock_order.py``):

- table and row locks are held until the transaction ends (COMMIT or ROLLBACK), also
  after the statement that took them ended; ``RELEASE SAVEPOINT`` keeps them;
- ``ROLLBACK TO SAVEPOINT s`` releases the table and row locks taken after ``s`` (a lock
  already held before ``s`` stays), so the ledger forgets what was recorded after it.

Canonical order (:class:`LockOrder`): the tables a policy lists first (``lock_order``),
in that order, then every other table by its schema-qualified name. A transaction
whose write-or-stronger locks (ROW EXCLUSIVE and up) follow that order, and whose row
locks within a table follow key order, cannot deadlock with another one that does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from safeddl.caches import MiB, TextCache
from safeddl.locks import CONFLICTS, LockMode
from safeddl.model import shorten
from safeddl.ordering import WRITE, HeldLock, LockOrder, RowLock, key_after, relation_key
from safeddl.sql.names import fold, split_name

if TYPE_CHECKING:
    from safeddl.model import Statement

logger = logging.getLogger("safeddl")

STRONG = LockMode.SHARE  # locks that block writers: reported when held long
_ONE = {mode: frozenset((mode,)) for mode in LockMode}

_COMMAND = re.compile(
    r"(?is)^\s*(BEGIN|START|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE|PREPARE)\b\s*(.*?)\s*;?\s*$")
_ROLLBACK_TO = re.compile(r"(?is)^(?:WORK\s+|TRANSACTION\s+)?TO\s+(?:SAVEPOINT\s+)?(.+)$")
_RELEASE = re.compile(r"(?is)^(?:SAVEPOINT\s+)?(.+)$")


@dataclass(frozen=True)
class Shape:
    """What the ledger needs of a statement, worked out once per analysed statement."""

    takes: tuple[tuple[str, str, LockMode], ...]  # (as written, relation key, mode) above ACCESS SHARE
    creates: tuple[str, ...]  # relation keys
    keyed: bool  # picks rows by key (see safeddl.ordering)
    is_ddl: bool
    exclusive: bool = False  # takes ACCESS EXCLUSIVE

    @property
    def remembered(self) -> bool:
        """Is the statement itself kept for later checks (what work done under ACCESS
        EXCLUSIVE needs to know): schema changes and the statements that take it."""
        return self.is_ddl or self.exclusive


# by the statement's text (the entry keeps the statement alive: bounded by its size too)
SHAPES: TextCache[str, tuple[Statement, Shape]] = TextCache(
    "what the ledger needs of a statement", entries=4_096, max_bytes=8 * MiB,
    per_char=2.0, overhead=600)


def shape_of(statement: Statement) -> Shape:
    """The statement's :class:`Shape`, cached: analysed statements are cached by text,
    so the hot path meets the same objects again and again."""
    entry = SHAPES.get(statement.sql)
    if entry is not None and entry[0] is statement:
        return entry[1]
    shape = Shape(
        takes=tuple((lock.relation, relation_key(lock.relation), lock.mode)
                    for lock in statement.locks if lock.mode > LockMode.ACCESS_SHARE),
        creates=tuple(relation_key(created) for created in statement.creates),
        keyed=any(step.key for step in statement.steps),
        is_ddl=statement.is_ddl,
        exclusive=any(lock.mode is LockMode.ACCESS_EXCLUSIVE for lock in statement.locks))
    SHAPES.put(statement.sql, (statement, shape), statement.sql)
    return shape


@dataclass(frozen=True)
class LongHeldLock:
    """A lock that blocks writers (SHARE or stronger) held longer than the policy's
    ``long_lock_threshold``: reported when the transaction ends."""

    relation: str
    mode: LockMode
    statement: str  # the statement that took it
    held_seconds: float
    threshold_seconds: float
    outcome: str  # "commit" or "rollback"
    pid: int | None = None

    def describe(self) -> str:
        return (f"long-held-lock: the transaction held {self.mode.sql_name} on "
                f"{self.relation} for {self.held_seconds:.3f} s (more than "
                f"{self.threshold_seconds:g} s) until {self.outcome.upper()}; it blocked "
                f"{self.mode.blocks.describe()} all that time. Taken by "
                f"`{shorten(self.statement, 120)}`. Take strong locks as late as possible "
                "and commit right after the statement that needs them; do the other work "
                "(loads, backfills, scans) in other transactions. Raise or switch off the "
                "report with the policy's long_lock_threshold.")


RowSlot = tuple[str, tuple[str, ...]]  # (relation key, key columns)
# the greatest key values locked so far in a slot, and the row lock (values left out)
# that locked them: a RowLock is made only when a finding needs one
RowEntry = tuple[tuple[Any, ...], RowLock]


class Tables:
    """The table locks a transaction holds, in the order taken: the part of the ledger
    that depends only on which statements ran, not on their parameters.

    Either the ledger's own (``shared`` False: changed in place), or shared: one value,
    never changed, for every transaction that ran the same statements of the fast path
    in the same order. Shared values are the nodes of a trie the
    :class:`~safeddl.runtime.tracking.LockTracker` keeps (``after``: the next node per
    statement, and per its lock order), so that a transaction of a shape the
    application ran before moves from node to node with one lookup a statement. A
    ledger copies a shared value before it changes it."""

    __slots__ = ("after", "conflicts", "locks", "modes", "order", "shared", "strongest", "top",
                 "writes")

    def __init__(self, order: LockOrder | None = None) -> None:
        self.locks: list[HeldLock] | tuple[HeldLock, ...] = []
        # per relation key: the modes held, and everything they conflict with
        self.modes: dict[str, frozenset[LockMode]] = {}
        self.conflicts: dict[str, frozenset[LockMode]] = {}
        self.strongest: LockMode | None = None  # of all held locks
        # relation keys held in ROW EXCLUSIVE or stronger, and the greatest of their
        # ranks in ``order`` (the order the last check used)
        self.writes: set[str] | frozenset[str] = set()
        self.order = order
        self.top: tuple[int, str] | None = None
        self.shared = False
        self.after: dict[object, Tables | None] = {}  # of a shared one: see LockTracker

    def copy(self) -> Tables:
        """A private copy (of the same order)."""
        other = Tables(self.order)
        other.locks = list(self.locks)
        other.modes = dict(self.modes)
        other.conflicts = dict(self.conflicts)
        other.strongest = self.strongest
        other.writes = set(self.writes)
        other.top = self.top
        return other

    def share(self) -> Tables:
        """This value, made shared (it must not change from now on)."""
        self.locks = tuple(self.locks)
        self.writes = frozenset(self.writes)
        self.shared = True
        return self

    def holds(self, key: str, mode: LockMode) -> bool:
        """Would asking for ``mode`` on this relation key never wait, given these locks?
        (See :func:`safeddl.ordering.already_holds`.)"""
        modes = self.modes.get(key)
        if modes is None:
            return False
        return mode in modes or CONFLICTS[mode] <= self.conflicts[key]

    def top_rank(self, order: LockOrder) -> tuple[int, str] | None:
        """The greatest rank in ``order`` of the relations written."""
        if self.order is order:
            return self.top
        top = max((order.rank(key) for key in self.writes), default=None)
        if not self.shared:
            self.order, self.top = order, top
        return top

    def take(self, lock: HeldLock, rank: tuple[int, str] | None = None) -> None:
        """Add a lock (a private value only); ``rank``: its rank in ``order``, when known."""
        assert not self.shared, "a shared Tables never changes"
        self.locks.append(lock)  # type: ignore[union-attr]
        key, mode = lock.key, lock.mode
        modes = self.modes.get(key)
        if modes is None:  # shared frozen sets, nothing allocated: the usual case
            self.modes[key] = _ONE[mode]
            self.conflicts[key] = CONFLICTS[mode]
        elif mode not in modes:
            self.modes[key] = modes | _ONE[mode]
            self.conflicts[key] = self.conflicts[key] | CONFLICTS[mode]
        if self.strongest is None or mode > self.strongest:
            self.strongest = mode
        if mode >= WRITE and key not in self.writes:
            self.writes.add(key)  # type: ignore[union-attr]
            if self.order is not None:
                if rank is None:
                    rank = self.order.rank(key)
                if self.top is None or rank > self.top:
                    self.top = rank


EMPTY = Tables().share()  # what a ledger holds when its transaction holds no table lock


@dataclass
class _Savepoint:
    name: str
    locks: int
    rows: dict[RowSlot, RowEntry]
    statements: int
    new: frozenset[str]
    exclusive_reported: bool


@dataclass
class Ledger:
    """The locks of the open transaction of one connection, in the order taken.

    Kept for the hot path: recording a statement whose locks the transaction holds
    already costs a dictionary lookup, a new row key a tuple; statements themselves are
    kept only when they change the schema or take ACCESS EXCLUSIVE (what later checks
    need), so a transaction of any length costs O(1) per statement."""

    statements: list[Statement] = field(default_factory=list)
    new: set[str] = field(default_factory=set)  # relation keys created in the transaction
    long_lock_seconds: float = 0.0  # 0: no report (the policy's, set when recording)
    pid: int | None = None
    used: bool = False  # anything recorded since the transaction began
    # statements-after-access-exclusive was reported in this transaction (once is enough)
    exclusive_reported: bool = False
    _savepoints: list[_Savepoint] = field(default_factory=list)
    # the table locks (see Tables: shared between transactions of the same shape)
    tables: Tables = EMPTY
    # the greatest row key per slot (see RowEntry)
    rows: dict[RowSlot, RowEntry] = field(default_factory=dict)

    # -- reading -------------------------------------------------------------------
    def __bool__(self) -> bool:
        return bool(self.tables.locks or self.rows or self.statements or self._savepoints)

    @property
    def locks(self) -> Sequence[HeldLock]:
        """The table locks held, in the order taken."""
        return self.tables.locks

    @property
    def strongest(self) -> LockMode | None:
        """The strongest mode of all held locks."""
        return self.tables.strongest

    @property
    def greatest(self) -> dict[RowSlot, RowLock]:
        """The greatest row key locked so far per (relation key, key columns), as row
        locks (made on demand: the hot path keeps the values only)."""
        return {slot: RowLock(lock.relation, lock.key, lock.columns, values, lock.statement)
                for slot, (values, lock) in self.rows.items()}

    def writes_key(self, key: str) -> bool:
        """Does the transaction hold ROW EXCLUSIVE or stronger on this relation key?"""
        return key in self.tables.writes

    def top_rank(self, order: LockOrder) -> tuple[int, str] | None:
        """The greatest rank in ``order`` of the relations the transaction writes."""
        return self.tables.top_rank(order)

    def held_mode(self, key: str) -> LockMode | None:
        """The strongest mode held on this relation key, if any."""
        modes = [lock.mode for lock in self.tables.locks if lock.key == key]
        return max(modes) if modes else None

    def holds(self, key: str, mode: LockMode) -> bool:
        """Would asking for ``mode`` on this relation never wait, given what the
        transaction holds already? (See :func:`already_holds`.)"""
        return self.tables.holds(key, mode)

    def writes(self) -> Iterator[HeldLock]:
        """Held locks of ROW EXCLUSIVE or stronger, in the order taken."""
        return (lock for lock in self.tables.locks if lock.mode >= WRITE)

    # -- recording -----------------------------------------------------------------
    def record(self, statement: Statement, now: float,
               rows: Sequence[RowLock] = ()) -> None:
        """The statement ran (is about to run): remember its new locks, and the
        statement itself when it may matter to work done under ACCESS EXCLUSIVE later
        (schema changes; everything once such a lock is held)."""
        shape = shape_of(statement)
        self.used = True
        if shape.creates:
            self.new.update(shape.creates)
        for relation, key, mode in shape.takes:
            if key in self.new or self.tables.holds(key, mode):
                continue
            self.take(HeldLock(relation, key, mode, statement.sql, now))
        if shape.remembered:
            self.statements.append(statement)
        for row in rows:
            self.remember_row(row)

    def remember_row(self, row: RowLock) -> None:
        """Keep the row's key when it is the greatest of its table so far."""
        slot = (row.key, row.columns)
        current = self.rows.get(slot)
        if current is None or key_after(row.values, current[0]):
            self.rows[slot] = (row.values, row)
            self.used = True

    def take(self, lock: HeldLock, rank: tuple[int, str] | None = None) -> None:
        """Record a table lock the transaction now holds (not checked: see record);
        ``rank``: its rank in the order of the last :meth:`top_rank`, when known."""
        self.used = True
        tables = self.tables
        if tables.shared:
            tables = self.tables = tables.copy()
        tables.take(lock, rank)

    def clear(self) -> None:
        if not self.used and not self._savepoints:
            return  # nothing to forget: the common case at COMMIT of a read-only unit
        self.tables = EMPTY
        if self.rows:
            self.rows.clear()
        if self.statements:
            self.statements.clear()
        if self.new:
            self.new.clear()
        if self._savepoints:
            self._savepoints.clear()
        self.exclusive_reported = False
        self.used = False

    # -- transaction control -------------------------------------------------------------
    def savepoint(self, name: str) -> None:
        self._savepoints.append(_Savepoint(name, len(self.tables.locks), dict(self.rows),
                                           len(self.statements), frozenset(self.new),
                                           self.exclusive_reported))

    def rollback_to(self, name: str) -> None:
        """Forget what was taken after the savepoint (PostgreSQL releases it); the
        savepoint itself stays."""
        index = self._find(name)
        if index is None:
            return
        point = self._savepoints[index]
        del self._savepoints[index + 1:]
        if len(self.tables.locks) > point.locks:
            kept = self.tables.locks[:point.locks]
            self.tables = Tables()
            for lock in kept:
                self.tables.take(lock)
        self.rows = dict(point.rows)
        del self.statements[point.statements:]
        self.new = set(point.new)
        self.exclusive_reported = point.exclusive_reported

    def release(self, name: str) -> None:
        """The savepoint (and those after it) go; the locks stay with the transaction."""
        index = self._find(name)
        if index is not None:
            del self._savepoints[index:]

    def end(self, now: float, outcome: str) -> list[LongHeldLock]:
        """The transaction ends: the strong locks held longer than the threshold, then
        a fresh ledger."""
        reports = self.long_held(now, outcome)
        self.clear()
        return reports

    def long_held(self, now: float, outcome: str = "commit") -> list[LongHeldLock]:
        threshold = self.long_lock_seconds
        strongest = self.tables.strongest
        if threshold <= 0 or strongest is None or strongest < STRONG:
            return []
        out = []
        for lock in self.tables.locks:
            held = now - lock.taken_at
            if lock.mode >= STRONG and held > threshold:
                out.append(LongHeldLock(lock.relation, lock.mode, lock.statement, held,
                                        threshold, outcome, self.pid))
        return out

    def command(self, text: str, now: float) -> list[LongHeldLock]:
        """Follow a transaction-control statement (COMMIT, ROLLBACK [TO SAVEPOINT],
        SAVEPOINT, RELEASE, BEGIN); returns the long-held locks when it ends the
        transaction."""
        match = _COMMAND.match(text)
        if match is None:
            return []
        word, rest = match.group(1).upper(), match.group(2)
        if word in ("COMMIT", "END"):
            if rest.upper().startswith("PREPARED"):
                return []  # COMMIT PREPARED: another transaction's business
            return self.end(now, "commit")
        if word in ("ROLLBACK", "ABORT"):
            to = _ROLLBACK_TO.match(rest)
            if to is not None:
                self.rollback_to(_savepoint_name(to.group(1)))
                return []
            if rest.upper().startswith("PREPARED"):
                return []
            return self.end(now, "rollback")
        if word == "SAVEPOINT" and rest:
            self.savepoint(_savepoint_name(rest))
        elif word == "RELEASE":
            released = _RELEASE.match(rest)
            if released is not None:
                self.release(_savepoint_name(released.group(1)))
        elif word == "PREPARE" and rest.upper().startswith("TRANSACTION"):
            return self.end(now, "prepare")
        elif word in ("BEGIN", "START"):
            self.clear()  # a new transaction: whatever is left is stale
        return []

    def _find(self, name: str) -> int | None:
        for index in range(len(self._savepoints) - 1, -1, -1):
            if self._savepoints[index].name == name:
                return index
        return None


def _savepoint_name(text: str) -> str:
    parts = split_name(text.strip().rstrip(";").strip())
    if not parts:
        return text.strip()
    part, quoted = parts[0]
    return fold(part, quoted)


# --------------------------------------------------------------------------- reports

LongHeldListener = Callable[[LongHeldLock], None]
_LISTENERS: list[LongHeldListener] = []


def on_long_held_lock(listener: LongHeldListener) -> Callable[[], None]:
    """Call ``listener`` with every :class:`LongHeldLock` reported from now on (in the
    thread that ends the transaction); returns the function that stops it."""
    _LISTENERS.append(listener)

    def stop() -> None:
        if listener in _LISTENERS:
            _LISTENERS.remove(listener)

    return stop


def report_long_held(reports: Sequence[LongHeldLock]) -> None:
    """Log each report as a warning on the ``safeddl`` logger (the record carries it as
    ``safeddl_long_held_lock``) and pass it to the listeners."""
    for report in reports:
        logger.warning("safeddl: %s", report.describe(),
                       extra={"safeddl_long_held_lock": report})
        for listener in _LISTENERS:
            try:
                listener(report)
            except Exception:
                logger.exception("safeddl: a long-held-lock listener failed")


__all__ = [
    "STRONG",
    "Ledger",
    "RowEntry",
    "RowSlot",
    "LongHeldListener",
    "LongHeldLock",
    "Tables",
    "on_long_held_lock",
    "report_long_held",
]
