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
from typing import TYPE_CHECKING

from safeddl.locks import CONFLICTS, LockMode
from safeddl.model import shorten
from safeddl.ordering import WRITE, HeldLock, RowLock, relation_key, remember_greatest
from safeddl.sql.names import fold, split_name

if TYPE_CHECKING:
    from safeddl.model import Statement

logger = logging.getLogger("safeddl")

STRONG = LockMode.SHARE  # locks that block writers: reported when held long

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


_SHAPES: dict[int, tuple[Statement, Shape]] = {}
_SHAPES_LIMIT = 4_096


def shape_of(statement: Statement) -> Shape:
    """The statement's :class:`Shape`, cached by identity: analysed statements are
    cached by text, so the hot path meets the same objects again and again."""
    entry = _SHAPES.get(id(statement))
    if entry is not None and entry[0] is statement:
        return entry[1]
    shape = Shape(
        takes=tuple((lock.relation, relation_key(lock.relation), lock.mode)
                    for lock in statement.locks if lock.mode > LockMode.ACCESS_SHARE),
        creates=tuple(relation_key(created) for created in statement.creates),
        keyed=any(step.key for step in statement.steps),
        is_ddl=statement.is_ddl)
    if len(_SHAPES) >= _SHAPES_LIMIT:
        _SHAPES.clear()
    _SHAPES[id(statement)] = (statement, shape)  # the entry keeps the statement alive
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


@dataclass
class _Savepoint:
    name: str
    locks: int
    greatest: dict[tuple[str, tuple[str, ...]], RowLock]
    statements: int
    new: frozenset[str]


@dataclass
class Ledger:
    """The locks of the open transaction of one connection, in the order taken."""

    locks: list[HeldLock] = field(default_factory=list)
    # the greatest row key locked so far per (relation key, key columns)
    greatest: dict[tuple[str, tuple[str, ...]], RowLock] = field(default_factory=dict)
    statements: list[Statement] = field(default_factory=list)
    new: set[str] = field(default_factory=set)  # relation keys created in the transaction
    long_lock_seconds: float = 0.0  # 0: no report (the policy's, set when recording)
    pid: int | None = None
    strongest: LockMode | None = None  # of all held locks
    mark: int = 0  # len(locks) before the statement being run (see not_granted)
    _savepoints: list[_Savepoint] = field(default_factory=list)
    # per relation key: the modes held, and everything they conflict with
    _modes: dict[str, set[LockMode]] = field(default_factory=dict)
    _conflicts: dict[str, set[LockMode]] = field(default_factory=dict)

    # -- reading -------------------------------------------------------------------
    def __bool__(self) -> bool:
        return bool(self.locks or self.greatest or self.statements or self._savepoints)

    def held_mode(self, key: str) -> LockMode | None:
        """The strongest mode held on this relation key, if any."""
        modes = [lock.mode for lock in self.locks if lock.key == key]
        return max(modes) if modes else None

    def holds(self, key: str, mode: LockMode) -> bool:
        """Would asking for ``mode`` on this relation never wait, given what the
        transaction holds already? (See :func:`already_holds`.)"""
        modes = self._modes.get(key)
        if modes is None:
            return False
        return mode in modes or CONFLICTS[mode] <= self._conflicts[key]

    def writes(self) -> Iterator[HeldLock]:
        """Held locks of ROW EXCLUSIVE or stronger, in the order taken."""
        return (lock for lock in self.locks if lock.mode >= WRITE)

    # -- recording -----------------------------------------------------------------
    def record(self, statement: Statement, now: float,
               rows: Sequence[RowLock] = ()) -> None:
        """The statement ran (is about to run): remember its new locks, and the
        statement itself when it may matter to work done under ACCESS EXCLUSIVE later
        (schema changes; everything once such a lock is held)."""
        shape = shape_of(statement)
        if shape.creates:
            self.new.update(shape.creates)
        for relation, key, mode in shape.takes:
            if key in self.new or self.holds(key, mode):
                continue
            self._take(HeldLock(relation, key, mode, statement.sql, now))
        if shape.is_ddl or self.strongest is LockMode.ACCESS_EXCLUSIVE:
            self.statements.append(statement)
        if rows:
            for row in rows:
                remember_greatest(self.greatest, row)

    def not_granted(self, since: int) -> None:
        """The statement that recorded ``locks[since:]`` failed waiting for a lock (lock
        timeout, deadlock): it never held them for long, so they are not reported."""
        if since >= len(self.locks):
            return
        kept = self.locks[:since]
        self.locks.clear()
        self._modes.clear()
        self._conflicts.clear()
        self.strongest = None
        for lock in kept:
            self._take(lock)

    def _take(self, lock: HeldLock) -> None:
        self.locks.append(lock)
        self._modes.setdefault(lock.key, set()).add(lock.mode)
        self._conflicts.setdefault(lock.key, set()).update(CONFLICTS[lock.mode])
        if self.strongest is None or lock.mode > self.strongest:
            self.strongest = lock.mode

    def clear(self) -> None:
        self._modes.clear()
        self._conflicts.clear()
        self.strongest = None
        self.locks.clear()
        self.greatest.clear()
        self.statements.clear()
        self.new.clear()
        self._savepoints.clear()
        self.mark = 0

    # -- transaction control -------------------------------------------------------------
    def savepoint(self, name: str) -> None:
        self._savepoints.append(_Savepoint(name, len(self.locks), dict(self.greatest),
                                           len(self.statements), frozenset(self.new)))

    def rollback_to(self, name: str) -> None:
        """Forget what was taken after the savepoint (PostgreSQL releases it); the
        savepoint itself stays."""
        index = self._find(name)
        if index is None:
            return
        point = self._savepoints[index]
        del self._savepoints[index + 1:]
        if len(self.locks) > point.locks:
            kept = self.locks[:point.locks]
            self.locks.clear()
            self._modes.clear()
            self._conflicts.clear()
            self.strongest = None
            for lock in kept:
                self._take(lock)
        self.greatest = dict(point.greatest)
        del self.statements[point.statements:]
        self.new = set(point.new)

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
        if threshold <= 0:
            return []
        out = []
        for lock in self.locks:
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
    "LongHeldListener",
    "LongHeldLock",
    "on_long_held_lock",
    "report_long_held",
]
