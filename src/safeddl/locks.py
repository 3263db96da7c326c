"""PostgreSQL table-level lock modes, their conflicts, and what each one blocks.

The eight modes are ordered from weakest to strongest; the conflict matrix is
the one in the PostgreSQL documentation ("Explicit Locking", table 13.2).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class LockMode(enum.IntEnum):
    """A table-level lock mode, ordered from weakest to strongest."""

    ACCESS_SHARE = 1
    ROW_SHARE = 2
    ROW_EXCLUSIVE = 3
    SHARE_UPDATE_EXCLUSIVE = 4
    SHARE = 5
    SHARE_ROW_EXCLUSIVE = 6
    EXCLUSIVE = 7
    ACCESS_EXCLUSIVE = 8

    @property
    def pg_name(self) -> str:
        """The name `pg_locks.mode` uses, e.g. ``AccessExclusiveLock``."""
        return _PG_NAMES[self]

    @property
    def sql_name(self) -> str:
        """The name `LOCK TABLE ... IN <name> MODE` uses, e.g. ``ACCESS EXCLUSIVE``."""
        return self.name.replace("_", " ")

    @classmethod
    def from_pg_name(cls, name: str) -> LockMode:
        return _BY_PG_NAME[name]

    @classmethod
    def from_sql_name(cls, name: str) -> LockMode:
        """``"share row exclusive"`` (any case, any spacing) -> SHARE_ROW_EXCLUSIVE."""
        key = "_".join(name.upper().split())
        try:
            return cls[key]
        except KeyError:
            raise ValueError(f"unknown lock mode {name!r}") from None

    def conflicts_with(self, other: LockMode) -> bool:
        return other in CONFLICTS[self]

    @property
    def blocks(self) -> Blocks:
        """What this lock, while held, keeps other sessions from doing."""
        return Blocks(
            reads=self.conflicts_with(LockMode.ACCESS_SHARE),
            writes=self.conflicts_with(LockMode.ROW_EXCLUSIVE),
            ddl=self.conflicts_with(LockMode.SHARE_UPDATE_EXCLUSIVE),
        )

    def __str__(self) -> str:
        return self.sql_name


_PG_NAMES = {
    LockMode.ACCESS_SHARE: "AccessShareLock",
    LockMode.ROW_SHARE: "RowShareLock",
    LockMode.ROW_EXCLUSIVE: "RowExclusiveLock",
    LockMode.SHARE_UPDATE_EXCLUSIVE: "ShareUpdateExclusiveLock",
    LockMode.SHARE: "ShareLock",
    LockMode.SHARE_ROW_EXCLUSIVE: "ShareRowExclusiveLock",
    LockMode.EXCLUSIVE: "ExclusiveLock",
    LockMode.ACCESS_EXCLUSIVE: "AccessExclusiveLock",
}
_BY_PG_NAME = {name: mode for mode, name in _PG_NAMES.items()}

_M = LockMode
CONFLICTS: dict[LockMode, frozenset[LockMode]] = {
    _M.ACCESS_SHARE: frozenset({_M.ACCESS_EXCLUSIVE}),
    _M.ROW_SHARE: frozenset({_M.EXCLUSIVE, _M.ACCESS_EXCLUSIVE}),
    _M.ROW_EXCLUSIVE: frozenset(
        {_M.SHARE, _M.SHARE_ROW_EXCLUSIVE, _M.EXCLUSIVE, _M.ACCESS_EXCLUSIVE}
    ),
    _M.SHARE_UPDATE_EXCLUSIVE: frozenset(
        {
            _M.SHARE_UPDATE_EXCLUSIVE,
            _M.SHARE,
            _M.SHARE_ROW_EXCLUSIVE,
            _M.EXCLUSIVE,
            _M.ACCESS_EXCLUSIVE,
        }
    ),
    _M.SHARE: frozenset(
        {
            _M.ROW_EXCLUSIVE,
            _M.SHARE_UPDATE_EXCLUSIVE,
            _M.SHARE_ROW_EXCLUSIVE,
            _M.EXCLUSIVE,
            _M.ACCESS_EXCLUSIVE,
        }
    ),
    _M.SHARE_ROW_EXCLUSIVE: frozenset(
        {
            _M.ROW_EXCLUSIVE,
            _M.SHARE_UPDATE_EXCLUSIVE,
            _M.SHARE,
            _M.SHARE_ROW_EXCLUSIVE,
            _M.EXCLUSIVE,
            _M.ACCESS_EXCLUSIVE,
        }
    ),
    _M.EXCLUSIVE: frozenset(
        {
            _M.ROW_SHARE,
            _M.ROW_EXCLUSIVE,
            _M.SHARE_UPDATE_EXCLUSIVE,
            _M.SHARE,
            _M.SHARE_ROW_EXCLUSIVE,
            _M.EXCLUSIVE,
            _M.ACCESS_EXCLUSIVE,
        }
    ),
    _M.ACCESS_EXCLUSIVE: frozenset(LockMode),
}


@dataclass(frozen=True)
class Blocks:
    """What a held lock keeps other sessions from doing."""

    reads: bool  # plain SELECT (ACCESS SHARE)
    writes: bool  # INSERT / UPDATE / DELETE (ROW EXCLUSIVE)
    ddl: bool  # VACUUM, ANALYZE, CREATE INDEX CONCURRENTLY and all DDL

    def describe(self) -> str:
        """``"reads and writes"``, ``"writes"``, ``"schema changes and VACUUM"``..."""
        if self.reads:
            return "all reads and writes"
        if self.writes:
            return "writes (INSERT, UPDATE, DELETE)"
        if self.ddl:
            return "schema changes, VACUUM and other maintenance"
        return "nothing ordinary (only the strongest locks)"


class Holds(str, enum.Enum):
    """How long a statement keeps its strongest lock busy."""

    BRIEF = "brief"  # catalog change only
    SCAN = "scan"  # reads the whole table or builds an index under the lock
    REWRITE = "rewrite"  # writes a new copy of the table under the lock

    def describe(self) -> str:
        return {
            Holds.BRIEF: "the statement itself only changes the catalog",
            Holds.SCAN: "the statement scans the whole table under it (longer as the table grows)",
            Holds.REWRITE: "the statement rewrites the whole table and its indexes under it",
        }[self]
