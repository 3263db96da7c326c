"""Observe which table-level locks a statement really takes, on a live server.

This is the ground truth the analysis is checked against:

- :func:`observe_in_transaction` runs one statement inside a transaction that is
  always rolled back, reads the own backend's rows of ``pg_locks`` and compares
  ``pg_class.relfilenode`` before and after (a new file with data = a rewrite).
- :func:`observe_outside_transaction` is for statements the server refuses in a
  transaction block (``CREATE INDEX CONCURRENTLY``, ``VACUUM``, ``DETACH
  PARTITION ... CONCURRENTLY``...). Those commit, and may run several internal
  transactions that each take locks; they are watched from other sessions
  ("guards") that hold a conflicting lock on every relation of interest, so each
  lock request has to wait and shows up in ``pg_locks``. Run them in a
  disposable database (see :func:`disposable_database`): their effects stay.
- :func:`lock_snapshot` reads the table-level locks a session holds right now
  (:func:`transaction_lock_snapshot`: with the transaction holding them).
- :class:`ScriptTransaction` runs a script statement by statement in one
  transaction that is rolled back, reporting what each statement took.

Everything is bounded in time (``statement_timeout``, ``lock_timeout`` and a
deadline on every wait). Only psycopg 3 is used; the module never prints.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql as pgsql
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow, tuple_row

from safeddl.locks import LockMode

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "TABLE_RELKINDS",
    "Observation",
    "ObservedLock",
    "ScriptTransaction",
    "StepObservation",
    "disposable_database",
    "drop_database",
    "lock_snapshot",
    "observe_in_transaction",
    "observe_outside_transaction",
    "refused_in_transaction_block",
    "transaction_lock_snapshot",
]

log = logging.getLogger("safeddl")

#: relkinds that count as "tables" for :attr:`Observation.locks`: ordinary and
#: partitioned tables, views, materialized views, foreign tables.
TABLE_RELKINDS = frozenset({"r", "p", "v", "m", "f"})
#: relkinds that have a heap of their own whose relfilenode can change.
_STORAGE_RELKINDS = frozenset({"r", "m"})
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
_ACTIVE_SQL_TRANSACTION = "25001"
_INVALID_TRANSACTION_TERMINATION = "2D000"


@dataclass(frozen=True)
class ObservedLock:
    """The strongest lock a session took on one relation."""

    relation: str  # "schema.name", always qualified, identifiers unquoted
    mode: LockMode
    relkind: str  # pg_class.relkind: r, p, v, m, f, i, I, S, ...


@dataclass(frozen=True)
class Observation:
    """What the server did for one statement.

    ``transactional`` is False when the server refused the statement inside a
    transaction block. That is SQLSTATE 25001 for any statement, and, for ``CALL``
    and ``DO`` only, SQLSTATE 2D000 ("invalid transaction termination"): the procedure
    or the block reached a ``COMMIT`` or ``ROLLBACK``, which PostgreSQL runs only when
    the ``CALL`` / ``DO`` is not inside a transaction block. A 2D000 that would be
    raised outside a transaction block too (``COMMIT`` inside a plpgsql block with an
    ``EXCEPTION`` clause) is counted the same way in a transaction; running the
    statement outside one then reports the error.
    """

    sql: str
    # strongest mode per pre-existing table / view / matview / foreign / partitioned
    # table (relkind r, p, v, m, f), keyed "schema.name"
    locks: dict[str, LockMode]
    # tables (and matviews) whose relfilenode changed and whose new file has data;
    # a partitioned table when one of its partitions was rewritten
    rewritten: frozenset[str]
    # False when the server refused it inside a transaction block: SQLSTATE 25001
    # ("cannot run inside a transaction block"), or 2D000 ("invalid transaction
    # termination") raised by a CALL or a DO block, whose procedure or body reached a
    # COMMIT or ROLLBACK it may not run there (see :func:`refused_in_transaction_block`)
    transactional: bool
    error: str | None = None
    # every pre-existing user relation locked, indexes and sequences included
    all_locks: tuple[ObservedLock, ...] = field(default=(), compare=False)
    sqlstate: str | None = field(default=None, compare=False)

    def as_json(self) -> dict[str, object]:
        """Plain JSON value: modes as the names ``pg_locks`` uses."""
        return {
            "sql": self.sql,
            "locks": {rel: mode.pg_name for rel, mode in sorted(self.locks.items())},
            "rewritten": sorted(self.rewritten),
            "transactional": self.transactional,
            "error": self.error,
        }


@dataclass(frozen=True)
class _Rel:
    oid: int
    name: str  # "schema.name"
    relkind: str
    relfilenode: int


_RELATIONS_SQL = """
SELECT c.oid::int8, n.nspname, c.relname, c.relkind::text, c.relfilenode::int8
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname <> ALL (%s)
  AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
  AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'
"""

_LOCKS_OF_PID_SQL = """
SELECT l.relation::int8, l.mode, l.granted
FROM pg_catalog.pg_locks l
WHERE l.pid = %s
  AND l.locktype = 'relation'
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
"""

_SNAPSHOT_SQL = """
SELECT n.nspname, c.relname, l.mode
FROM pg_catalog.pg_locks l
JOIN pg_catalog.pg_class c ON c.oid = l.relation
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE l.pid = pg_catalog.pg_backend_pid()
  AND l.locktype = 'relation'
  AND l.granted
  AND c.relkind::text = ANY (%s)
  AND n.nspname <> ALL (%s)
"""


def _relations(cur: psycopg.Cursor[TupleRow]) -> dict[int, _Rel]:
    cur.execute(_RELATIONS_SQL, (list(_SYSTEM_SCHEMAS),))
    out: dict[int, _Rel] = {}
    for oid, nsp, name, relkind, filenode in cur.fetchall():
        assert isinstance(oid, int) and isinstance(filenode, int)
        out[oid] = _Rel(oid, f"{nsp}.{name}", str(relkind), filenode)
    return out


_PARTITIONED_ANCESTORS_SQL = """
WITH RECURSIVE up(relid) AS (
    SELECT i.inhparent FROM pg_catalog.pg_inherits i WHERE i.inhrelid = ANY (%s)
    UNION
    SELECT i.inhparent FROM pg_catalog.pg_inherits i JOIN up ON i.inhrelid = up.relid
)
SELECT up.relid::int8 FROM up
JOIN pg_catalog.pg_class c ON c.oid = up.relid
WHERE c.relkind = 'p'
"""


def _rewritten(cur: psycopg.Cursor[TupleRow], before: dict[int, _Rel]) -> frozenset[str]:
    """Relations of ``before`` rewritten by the statement.

    A table or materialized view is rewritten when its relfilenode changed and the
    new file has data (TRUNCATE gives an empty new file: not a rewrite). A
    partitioned table has no storage of its own; it counts as rewritten when one
    of its partitions (at any depth) was.
    """
    oids = [r.oid for r in before.values() if r.relkind in _STORAGE_RELKINDS]
    if not oids:
        return frozenset()
    cur.execute(
        "SELECT oid::int8, relfilenode::int8 FROM pg_catalog.pg_class WHERE oid = ANY (%s)",
        (oids,),
    )
    changed = [oid for oid, filenode in cur.fetchall() if filenode != before[oid].relfilenode]
    if not changed:
        return frozenset()
    cur.execute(
        "SELECT oid::int8 FROM pg_catalog.pg_class"
        " WHERE oid = ANY (%s) AND pg_catalog.pg_relation_size(oid) > 0",
        (changed,),
    )
    rewritten = {oid for (oid,) in cur.fetchall()}
    if rewritten:
        cur.execute(_PARTITIONED_ANCESTORS_SQL, (sorted(rewritten),))
        rewritten.update(oid for (oid,) in cur.fetchall() if oid in before)
    return frozenset(before[oid].name for oid in rewritten)


def _empty(cur: psycopg.Cursor[TupleRow], relations: dict[int, _Rel]) -> frozenset[int]:
    """The tables and materialized views among ``relations`` whose file is empty."""
    oids = [r.oid for r in relations.values() if r.relkind in _STORAGE_RELKINDS]
    if not oids:
        return frozenset()
    cur.execute("SELECT oid::int8 FROM pg_catalog.pg_class"
                " WHERE oid = ANY (%s) AND pg_catalog.pg_relation_size(oid) = 0", (oids,))
    return frozenset(oid for (oid,) in cur.fetchall())


def _renewed_empty(cur: psycopg.Cursor[TupleRow], before: dict[int, _Rel],
                   empty_before: frozenset[int]) -> frozenset[str]:
    """Relations empty before that got a new, still empty file: a rewrite or a TRUNCATE,
    which cannot be told apart."""
    if not empty_before:
        return frozenset()
    cur.execute("SELECT oid::int8, relfilenode::int8 FROM pg_catalog.pg_class"
                " WHERE oid = ANY (%s) AND pg_catalog.pg_relation_size(oid) = 0",
                (sorted(empty_before),))
    return frozenset(before[oid].name for oid, filenode in cur.fetchall()
                     if filenode != before[oid].relfilenode)


def _strongest(
    rows: Iterable[tuple[int, str]], known: dict[int, _Rel]
) -> tuple[dict[str, LockMode], tuple[ObservedLock, ...]]:
    best: dict[int, LockMode] = {}
    for oid, mode_name in rows:
        if oid not in known:
            continue  # catalogs, and relations the statement created
        mode = LockMode.from_pg_name(mode_name)
        if oid not in best or mode > best[oid]:
            best[oid] = mode
    all_locks = tuple(
        sorted(
            (ObservedLock(known[oid].name, mode, known[oid].relkind) for oid, mode in best.items()),
            key=lambda lock: lock.relation,
        )
    )
    tables = {lock.relation: lock.mode for lock in all_locks if lock.relkind in TABLE_RELKINDS}
    return tables, all_locks


_COMMENT_RE = re.compile(r"\s+|--[^\n]*(?:\n|$)|/\*.*?\*/", re.DOTALL)


def _first_word(sql: str) -> str:
    """The statement's first keyword, upper case, after comments and blanks."""
    pos = 0
    while True:
        m = _COMMENT_RE.match(sql, pos)
        if not m or m.end() == pos:
            break
        pos = m.end()
    word = re.match(r"[A-Za-z_]+", sql[pos:])
    return word.group(0).upper() if word else ""


def _is_copy(sql: str) -> bool:
    return _first_word(sql) == "COPY" and bool(re.search(r"\b(stdin|stdout)\b", sql, re.IGNORECASE))


def refused_in_transaction_block(sql: str, sqlstate: str | None) -> bool:
    """Whether the error ``sqlstate`` of ``sql``, run inside a transaction block, says the
    statement cannot run there.

    SQLSTATE 25001 (``VACUUM``, ``CREATE INDEX CONCURRENTLY``, ``DROP SUBSCRIPTION`` of
    a subscription with a replication slot...) for any statement. SQLSTATE 2D000
    ("invalid transaction termination") only for ``CALL`` and ``DO``: their transaction
    control (a ``COMMIT`` or ``ROLLBACK`` of the procedure or the block) is refused
    inside a transaction block, and runs outside one. Nothing else counts: 2D000 of any
    other statement, or any other error, is a failure of the statement.
    """
    if sqlstate == _ACTIVE_SQL_TRANSACTION:
        return True
    return sqlstate == _INVALID_TRANSACTION_TERMINATION and _first_word(sql) in ("CALL", "DO")


def _run(cur: psycopg.Cursor[TupleRow], sql: str, copy_data: bytes | None) -> None:
    """Run one statement; COPY ... FROM STDIN / TO STDOUT through the copy API."""
    if _is_copy(sql):
        with cur.copy(sql) as copy:
            if re.search(r"\bstdin\b", sql, re.IGNORECASE):
                if copy_data:
                    copy.write(copy_data)
            else:
                for _ in copy:
                    pass
    else:
        cur.execute(sql)


def _status(conn: psycopg.Connection[Any]) -> TransactionStatus:
    return conn.info.transaction_status


def _ms(seconds: float) -> str:
    return f"{max(1, int(seconds * 1000))}ms"


def observe_in_transaction(
    conn: psycopg.Connection[Any],
    sql: str,
    *,
    copy_data: bytes | None = None,
    timeout: float = 30.0,
) -> Observation:
    """Run ``sql`` in a transaction that is rolled back and report its locks.

    ``conn`` must be idle (no transaction open); its autocommit setting is
    restored afterwards. ``COPY ... FROM STDIN`` gets ``copy_data``.

    Locks are read before the rollback, so the statement's effects never stay;
    deferred constraint triggers (which would run at COMMIT) are fired first with
    ``SET CONSTRAINTS ALL IMMEDIATE``, so their locks count too.
    A statement that fails gives ``locks == {}`` and ``error`` set (the aborted
    transaction can no longer be inspected); when the failure says the statement
    cannot run inside a transaction block (SQLSTATE 25001, or 2D000 of a ``CALL`` or
    ``DO`` whose ``COMMIT`` / ``ROLLBACK`` was refused: see
    :func:`refused_in_transaction_block`) ``transactional`` is False.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("observe_in_transaction needs a connection with no open transaction")
    previous = conn.autocommit
    conn.autocommit = True
    try:
        cur = conn.cursor(row_factory=tuple_row)
        with cur:
            cur.execute("BEGIN")
            try:
                cur.execute(pgsql.SQL("SET LOCAL statement_timeout = {}").format(_ms(timeout)))
                cur.execute(pgsql.SQL("SET LOCAL lock_timeout = {}").format(_ms(timeout)))
                before = _relations(cur)
                try:
                    _run(cur, sql, copy_data)
                    if _status(conn) == TransactionStatus.INTRANS:
                        # deferred constraint triggers would run at COMMIT: run them now
                        cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
                except psycopg.Error as exc:
                    state = exc.sqlstate
                    log.debug("observed statement failed (%s): %s", state, exc)
                    return Observation(
                        sql=sql,
                        locks={},
                        rewritten=frozenset(),
                        transactional=not refused_in_transaction_block(sql, state),
                        error=str(exc).strip(),
                        sqlstate=state,
                    )
                if _status(conn) != TransactionStatus.INTRANS:
                    # the statement ended the transaction (COMMIT, ROLLBACK...)
                    return Observation(
                        sql, {}, frozenset(), True, "statement ended the transaction"
                    )
                cur.execute("SELECT pg_catalog.pg_backend_pid()")
                row = cur.fetchone()
                assert row is not None
                cur.execute(_LOCKS_OF_PID_SQL, (row[0],))
                rows = [(int(str(oid)), str(mode)) for oid, mode, _granted in cur.fetchall()]
                tables, all_locks = _strongest(rows, before)
                rewritten = _rewritten(cur, before)
                return Observation(sql, tables, rewritten, True, None, all_locks)
            finally:
                if _status(conn) != TransactionStatus.IDLE:
                    cur.execute("ROLLBACK")
    finally:
        if _status(conn) == TransactionStatus.IDLE:
            conn.autocommit = previous


_TRANSACTION_SNAPSHOT_SQL = (
    "SELECT (SELECT v.virtualtransaction FROM pg_catalog.pg_locks v"
    " WHERE v.pid = pg_catalog.pg_backend_pid() AND v.locktype = 'virtualxid' LIMIT 1),"
    " s.nspname, s.relname, s.mode FROM (SELECT 1) AS one"
    " LEFT JOIN (" + _SNAPSHOT_SQL + ") AS s ON true"
)


def lock_snapshot(
    conn: psycopg.Connection[Any],
) -> dict[str, LockMode]:
    """The strongest granted table-level lock the session of ``conn`` holds per relation.

    Keys are ``"schema.name"``; only tables, partitioned tables, views,
    materialized views and foreign tables outside the system schemas count.
    Reading ``pg_locks`` takes no lock on user tables.
    """
    return transaction_lock_snapshot(conn)[1]


def transaction_lock_snapshot(
    conn: psycopg.Connection[Any],
) -> tuple[str, dict[str, LockMode]]:
    """:func:`lock_snapshot` and the transaction it was read in.

    The transaction is its virtual transaction id (``pg_locks.virtualtransaction`` of
    every lock it holds or waits for, e.g. ``"3/1207"``): it tells one session's
    transactions apart. Outside a transaction block the snapshot runs in a
    transaction of its own (and sees no locks).
    """
    # a plain cursor, whatever cursor_factory the connection has (guarded, traced...)
    with psycopg.Cursor(conn, row_factory=tuple_row) as cur:
        cur.execute(_TRANSACTION_SNAPSHOT_SQL, (sorted(TABLE_RELKINDS), list(_SYSTEM_SCHEMAS)))
        rows = cur.fetchall()
    transaction = str(rows[0][0])
    out: dict[str, LockMode] = {}
    for _now, nsp, name, mode_name in rows:
        if mode_name is None:
            continue
        key = f"{nsp}.{name}"
        mode = LockMode.from_pg_name(str(mode_name))
        if key not in out or mode > out[key]:
            out[key] = mode
    return transaction, out


# --- a script, statement by statement, in one transaction ---------------------------------


@dataclass(frozen=True)
class StepObservation:
    """What one statement of a script did inside the script's (rolled back) transaction.

    Locks are per relation, keyed ``"schema.name"``, on relations that existed before
    the statement (those it creates are left out). A lock the transaction already held
    before the statement does not show up again in ``taken``: PostgreSQL lists each
    mode once per session, so ``held`` is there to tell "not taken" from "already held".
    """

    sql: str
    # strongest mode per relation among the modes this statement newly acquired
    taken: dict[str, LockMode]
    # every granted mode the transaction holds per relation after the statement
    held: dict[str, frozenset[LockMode]]
    # pg_class.relkind of every relation named in ``taken`` / ``held``
    relkinds: dict[str, str]
    rewritten: frozenset[str]
    error: str | None = None
    sqlstate: str | None = None
    # empty before and after, with a new relfilenode: rewritten or truncated, which an
    # empty table cannot tell apart (a replay on a scratch database meets many of them)
    renewed_empty: frozenset[str] = frozenset()

    @property
    def ran(self) -> bool:
        return self.error is None


_HELD_LOCKS_SQL = """
SELECT l.relation::int8, l.mode
FROM pg_catalog.pg_locks l
WHERE l.pid = pg_catalog.pg_backend_pid()
  AND l.locktype = 'relation'
  AND l.granted
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
"""

_RESOLVE_SQL = """
SELECT n.nspname, c.relname, c.relkind::text, tn.nspname, t.relname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid
LEFT JOIN pg_catalog.pg_class t ON t.oid = i.indrelid
LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
WHERE c.oid = pg_catalog.to_regclass(%s)
"""


class ScriptTransaction:
    """Run statements one after another in ONE transaction that is rolled back at the end,
    observing each (:class:`StepObservation`).

    Later statements see what earlier ones did (a table created by statement 1 can be
    altered by statement 2). Each statement runs under a savepoint, so one that fails
    is reported and the rest go on. Nothing is committed: the caller must not run
    transaction control (``COMMIT``, ``ROLLBACK``, ...) through :meth:`run`, and
    statements refused inside a transaction block fail with SQLSTATE 25001 (a ``CALL``
    or ``DO`` that reaches a ``COMMIT`` or ``ROLLBACK``: 2D000). Deferred
    constraint triggers, which would run at COMMIT, do not run. Every lock taken is
    held until the end of the block.

    ``conn`` must be idle; its autocommit setting is restored afterwards.
    """

    def __init__(
        self, conn: psycopg.Connection[Any], *, timeout: float = 60.0, lock_timeout: float = 5.0
    ) -> None:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            raise ValueError("ScriptTransaction needs a connection with no open transaction")
        self.conn = conn
        self.timeout = timeout
        self.lock_timeout = lock_timeout
        self._previous_autocommit = conn.autocommit
        self._cur: psycopg.Cursor[TupleRow] | None = None
        self._steps = 0

    def __enter__(self) -> Self:
        self.conn.autocommit = True
        cur = psycopg.Cursor(self.conn, row_factory=tuple_row)
        self._cur = cur
        cur.execute("BEGIN")
        cur.execute(pgsql.SQL("SET LOCAL statement_timeout = {}").format(_ms(self.timeout)))
        cur.execute(pgsql.SQL("SET LOCAL lock_timeout = {}").format(_ms(self.lock_timeout)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._cur is not None:
                if _status(self.conn) != TransactionStatus.IDLE:
                    self._cur.execute("ROLLBACK")
                self._cur.close()
        finally:
            if _status(self.conn) == TransactionStatus.IDLE:
                self.conn.autocommit = self._previous_autocommit

    def resolve(self, written: str) -> tuple[str, str, str | None] | None:
        """The relation ``written`` names at this point of the script, read by the server
        (search_path, quoting): ``("schema.name", relkind, table)`` where ``table`` is
        the index's table for an index, else None; None when there is no such relation."""
        cur = self._cur
        if cur is None:
            raise RuntimeError("use ScriptTransaction as a context manager")
        cur.execute("SAVEPOINT safeddl_resolve")
        try:
            cur.execute(_RESOLVE_SQL, (written,))
            row = cur.fetchone()
        except psycopg.Error:
            cur.execute("ROLLBACK TO SAVEPOINT safeddl_resolve")
            row = None
        cur.execute("RELEASE SAVEPOINT safeddl_resolve")
        if row is None:
            return None
        nsp, name, relkind, table_nsp, table_name = row
        table = f"{table_nsp}.{table_name}" if table_name is not None else None
        return f"{nsp}.{name}", str(relkind), table

    def _held(self, cur: psycopg.Cursor[TupleRow]) -> set[tuple[int, LockMode]]:
        cur.execute(_HELD_LOCKS_SQL)
        return {(int(oid), LockMode.from_pg_name(str(mode))) for oid, mode in cur.fetchall()}

    def run(self, sql: str, *, copy_data: bytes | None = None) -> StepObservation:
        """Run one statement and report what it took; keeps its effects for the next."""
        cur = self._cur
        if cur is None:
            raise RuntimeError("use ScriptTransaction as a context manager")
        if _status(self.conn) != TransactionStatus.INTRANS:
            raise RuntimeError("the script's transaction has ended: nothing more can run")
        self._steps += 1
        savepoint = pgsql.Identifier(f"safeddl_step_{self._steps}")
        before = _relations(cur)
        held_before = self._held(cur)
        empty_before = _empty(cur, before)
        cur.execute(pgsql.SQL("SAVEPOINT {}").format(savepoint))
        try:
            _run(cur, sql, copy_data)
        except psycopg.Error as exc:
            if _status(self.conn) == TransactionStatus.INERROR:
                cur.execute(pgsql.SQL("ROLLBACK TO SAVEPOINT {}").format(savepoint))
            return StepObservation(sql, {}, {}, {}, frozenset(), str(exc).strip(),
                                   exc.sqlstate)
        if _status(self.conn) != TransactionStatus.INTRANS:
            raise RuntimeError(f"the statement ended the script's transaction: {sql[:200]}")
        cur.execute(pgsql.SQL("RELEASE SAVEPOINT {}").format(savepoint))
        held_after = self._held(cur)
        taken: dict[str, LockMode] = {}
        held: dict[str, set[LockMode]] = {}
        for oid, mode in held_after:
            rel = before.get(oid)
            if rel is None:
                continue  # created by this statement (or a system relation)
            held.setdefault(rel.name, set()).add(mode)
            if (oid, mode) not in held_before and (rel.name not in taken or mode > taken[rel.name]):
                taken[rel.name] = mode
        relkinds = {rel.name: rel.relkind for rel in before.values() if rel.name in held}
        return StepObservation(
            sql=sql,
            taken=taken,
            held={name: frozenset(modes) for name, modes in held.items()},
            relkinds=relkinds,
            rewritten=_rewritten(cur, before),
            renewed_empty=_renewed_empty(cur, before, empty_before),
        )


# --- statements that cannot run in a transaction block ------------------------------------

#: The lock a guard re-takes on a relation once the watched session holds ``mode`` on
#: it: the weakest mode that does not conflict with ``mode`` but conflicts with every
#: stronger one, so a later, stronger request (e.g. the second transaction of DETACH
#: PARTITION CONCURRENTLY) has to wait and becomes visible.
_NEXT_GUARD: dict[LockMode, LockMode] = {
    LockMode.ACCESS_SHARE: LockMode.EXCLUSIVE,
    LockMode.ROW_SHARE: LockMode.SHARE_ROW_EXCLUSIVE,
    LockMode.ROW_EXCLUSIVE: LockMode.SHARE_UPDATE_EXCLUSIVE,
    LockMode.SHARE_UPDATE_EXCLUSIVE: LockMode.ROW_EXCLUSIVE,
    LockMode.SHARE: LockMode.SHARE,
    LockMode.SHARE_ROW_EXCLUSIVE: LockMode.ROW_SHARE,
    LockMode.EXCLUSIVE: LockMode.ACCESS_SHARE,
}
_MAX_HANDOVERS = 6


class _Guard:
    """Sessions taking turns holding one lock on one relation in an open transaction.

    The lock is handed over from one session to the next without a gap: the next
    session queues its (weaker) request while the current one still holds its
    lock, so when the current one lets go the watched statement and the next
    guard are granted at the same moment, and no later request of the statement
    can slip through unseen.
    """

    def __init__(self, dsn: str, rel: _Rel, *, timeout: float) -> None:
        self.dsn = dsn
        self.rel = rel
        self.timeout = timeout
        self.mode: LockMode | None = None
        self.handovers = 0
        self._conns: list[psycopg.Connection[TupleRow]] = []
        self._pids: list[int] = []
        self._active = 0
        self._connect()

    def _connect(self) -> None:
        conn = psycopg.Connection.connect(self.dsn, autocommit=True, row_factory=tuple_row)
        # if this process dies, the server ends the guard's transaction by itself
        conn.execute(
            pgsql.SQL("SET idle_in_transaction_session_timeout = {}").format(
                _ms(max(10.0, 4 * self.timeout))
            )
        )
        conn.execute(pgsql.SQL("SET statement_timeout = {}").format(_ms(self.timeout)))
        row = conn.execute("SELECT pg_catalog.pg_backend_pid()").fetchone()
        assert row is not None
        self._conns.append(conn)
        self._pids.append(int(row[0]))

    @property
    def pid(self) -> int:
        """The session holding the lock now."""
        return self._pids[self._active]

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(self._pids)

    def _lock_sql(self, mode: LockMode) -> pgsql.Composed | None:
        schema, _, name = self.rel.name.partition(".")
        target = pgsql.Identifier(schema, name)
        if self.rel.relkind in ("r", "p"):
            return pgsql.SQL("LOCK TABLE ONLY {} IN {} MODE").format(
                target, pgsql.SQL(mode.sql_name)
            )
        if mode == LockMode.ACCESS_EXCLUSIVE:
            # LOCK refuses materialized views (and recurses into a view's tables);
            # a no-op OWNER TO takes ACCESS EXCLUSIVE on the relation alone.
            kind = {"m": "MATERIALIZED VIEW", "v": "VIEW", "f": "FOREIGN TABLE"}[self.rel.relkind]
            return pgsql.SQL("ALTER {} {} OWNER TO CURRENT_USER").format(pgsql.SQL(kind), target)
        return None

    def _acquire(self, index: int, mode: LockMode, wait: float) -> bool:
        statement = self._lock_sql(mode)
        if statement is None:
            return False
        conn = self._conns[index]
        try:
            conn.execute("BEGIN")
            conn.execute(pgsql.SQL("SET LOCAL lock_timeout = {}").format(_ms(wait)))
            conn.execute(statement)
        except psycopg.Error as exc:
            log.debug("guard on %s in %s: %s", self.rel.name, mode.pg_name, exc)
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
            return False
        return True

    def take(self, mode: LockMode, *, wait: float) -> bool:
        """The first lock, taken before the statement starts."""
        ok = self._acquire(self._active, mode, wait)
        self.mode = mode if ok else None
        return ok

    def hand_over(self, mode: LockMode | None, ctl: psycopg.Connection[TupleRow]) -> None:
        """Let go of the current lock; a fresh session holds ``mode`` from the same moment."""
        if self.mode is None:
            return
        if mode is None or self._lock_sql(mode) is None:
            self._release(self._active)
            return
        spare = 1 - self._active
        if len(self._conns) < 2:
            self._connect()
        outcome: list[bool] = []
        thread = threading.Thread(
            target=lambda: outcome.append(self._acquire(spare, mode, 1.0)),
            name="safeddl-guard",
            daemon=True,
        )
        thread.start()
        # the spare's request must be queued before the current lock goes
        deadline = time.monotonic() + 1.0
        while thread.is_alive() and time.monotonic() < deadline:
            row = ctl.execute(
                "SELECT count(*) FROM pg_catalog.pg_locks WHERE pid = %s AND locktype = 'relation'"
                " AND relation = %s::oid",
                (self._pids[spare], self.rel.oid),
            ).fetchone()
            if row and row[0]:
                break
            time.sleep(0.0005)
        self._release(self._active)
        thread.join(0.2)
        if thread.is_alive():
            # it conflicts with what the statement holds now: give up guarding
            ctl.execute("SELECT pg_catalog.pg_cancel_backend(%s)", (self._pids[spare],))
            thread.join(self.timeout)
        self.handovers += 1
        if outcome and outcome[0]:
            self._active = spare
            self.mode = mode
        else:
            self.mode = None

    def _release(self, index: int) -> None:
        self._conns[index].execute("ROLLBACK")
        self.mode = None

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(psycopg.Error):
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
            conn.close()


def _resolve(names: Iterable[str], relations: dict[int, _Rel]) -> list[_Rel]:
    by_name = {r.name: r for r in relations.values()}
    out: list[_Rel] = []
    for name in names:
        key = name if "." in name else f"public.{name}"
        if key not in by_name:
            raise ValueError(f"relation {name!r} not found (use 'schema.name', unquoted)")
        out.append(by_name[key])
    return out


def observe_outside_transaction(
    dsn: str,
    sql: str,
    relation_hint: Sequence[str] | None = None,
    *,
    timeout: float = 10.0,
    poll_interval: float = 0.002,
) -> Observation:
    """Observe a statement that must run outside a transaction block. It commits.

    Every relation in ``relation_hint`` (``"schema.name"``, unquoted; ``None``
    means every table, partitioned table, materialized view and view in the
    database) is held in ACCESS EXCLUSIVE by a guard session of its own. The
    statement runs in autocommit from another session, so each of its lock
    requests on a guarded relation has to wait and shows up in ``pg_locks``:
    the poller records it, then hands the guard over to a fresh session that
    holds the weakest mode still conflicting with anything stronger than what
    the statement asked for so far (queued before the old guard lets go, so
    there is no gap). Later and stronger requests, e.g. from the second internal
    transaction of ``DETACH PARTITION ... CONCURRENTLY``, are seen as well.
    Waits for a guard's transaction (``CREATE INDEX CONCURRENTLY`` waiting for
    older transactions) hand over too, a bounded number of times. Locks on
    relations that are not guarded are seen only if held while polling.

    The statement's effects stay: run it in a disposable database (see
    :func:`disposable_database`). Everything is bounded by ``timeout`` seconds;
    a statement still running then is cancelled and reported with ``error``.
    """
    deadline = time.monotonic() + timeout
    with psycopg.Connection.connect(dsn, autocommit=True, row_factory=tuple_row) as ctl:
        with ctl.cursor() as cur:
            cur.execute(pgsql.SQL("SET statement_timeout = {}").format(_ms(timeout)))
            before = _relations(cur)
        if relation_hint is None:
            targets = [r for r in before.values() if r.relkind in ("r", "p", "m", "v")]
        else:
            targets = _resolve(relation_hint, before)
        targets.sort(key=lambda r: r.name)

        guard_list: list[_Guard] = []
        stmt_conn: psycopg.Connection[TupleRow] | None = None
        thread: threading.Thread | None = None
        result: dict[str, psycopg.Error | BaseException] = {}
        seen: dict[int, LockMode] = {}
        try:
            for rel in targets:
                guard = _Guard(dsn, rel, timeout=timeout)
                guard_list.append(guard)
                if not guard.take(LockMode.ACCESS_EXCLUSIVE, wait=min(2.0, timeout)):
                    log.warning("could not guard %s; its locks may go unseen", rel.name)

            stmt_conn = psycopg.Connection.connect(dsn, autocommit=True, row_factory=tuple_row)
            stmt_conn.execute(pgsql.SQL("SET statement_timeout = {}").format(_ms(timeout)))
            stmt_conn.execute(pgsql.SQL("SET lock_timeout = {}").format(_ms(timeout)))
            row = stmt_conn.execute("SELECT pg_catalog.pg_backend_pid()").fetchone()
            assert row is not None
            stmt_pid = int(str(row[0]))
            conn_for_thread = stmt_conn

            def run() -> None:
                try:
                    cur = conn_for_thread.cursor()
                    with cur:
                        _run(cur, sql, None)
                except BaseException as exc:  # noqa: BLE001 - reported to the caller
                    result["error"] = exc

            thread = threading.Thread(target=run, name="safeddl-observe", daemon=True)
            thread.start()
            cancelled = False
            while thread.is_alive():
                _poll(ctl, stmt_pid, seen, guard_list)
                if time.monotonic() > deadline and not cancelled:
                    log.warning("statement still running after %.1fs, cancelling: %s", timeout, sql)
                    ctl.execute("SELECT pg_catalog.pg_cancel_backend(%s)", (stmt_pid,))
                    cancelled = True
                    for guard in guard_list:
                        guard.hand_over(None, ctl)
                thread.join(poll_interval)
            thread.join(timeout)
        finally:
            for guard in guard_list:
                with contextlib.suppress(psycopg.Error):
                    guard.close()
            if thread is not None and thread.is_alive() and stmt_conn is not None:
                with contextlib.suppress(psycopg.Error):
                    ctl.execute(
                        "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
                        " WHERE pid = %s",
                        (stmt_conn.info.backend_pid,),
                    )
                thread.join(2.0)
            if stmt_conn is not None:
                stmt_conn.close()

        with ctl.cursor() as cur:
            rewritten = _rewritten(cur, before)
    error = result.get("error")
    tables, all_locks = _strongest(((oid, mode.pg_name) for oid, mode in seen.items()), before)
    return Observation(
        sql=sql,
        locks=tables,
        rewritten=rewritten,
        transactional=False,
        error=None if error is None else str(error).strip(),
        all_locks=all_locks,
        sqlstate=getattr(error, "sqlstate", None),
    )


def _poll(
    ctl: psycopg.Connection[TupleRow],
    pid: int,
    seen: dict[int, LockMode],
    guards: list[_Guard],
) -> None:
    """Record the watched session's locks; hand over the guards it waits for."""
    # blockers first: a wait for a guard cannot end before the guard lets go, so the
    # lock being waited for is sure to be among the rows read next
    row = ctl.execute("SELECT pg_catalog.pg_blocking_pids(%s)", (pid,)).fetchone()
    blockers = set(row[0]) if row and row[0] else set()
    rows = ctl.execute(_LOCKS_OF_PID_SQL, (pid,)).fetchall()
    waiting_on: set[int] = set()
    for oid, mode_name, granted in rows:
        mode = LockMode.from_pg_name(mode_name)
        if oid not in seen or mode > seen[oid]:
            seen[oid] = mode
        if not granted:
            waiting_on.add(oid)
    for guard in guards:
        if guard.mode is None or guard.pid not in blockers:
            continue
        held = seen.get(guard.rel.oid)
        if guard.rel.oid not in waiting_on:
            # it waits for the guard's transaction to end (virtualxid), not for its
            # lock, e.g. CREATE INDEX CONCURRENTLY waiting for older transactions
            guard.handovers += 1
        next_mode = None
        if (
            held is not None
            and held != LockMode.ACCESS_EXCLUSIVE
            and guard.handovers < _MAX_HANDOVERS
        ):
            next_mode = _NEXT_GUARD[held]
        guard.hand_over(next_mode, ctl)


@contextlib.contextmanager
def disposable_database(admin_dsn: str, template: str) -> Iterator[str]:
    """A fresh copy of database ``template``, dropped on exit; yields its DSN.

    ``template`` must have no other sessions connected while it is copied
    (``ALTER DATABASE ... WITH ALLOW_CONNECTIONS false`` keeps autovacuum away).
    """
    name = f"safeddl_obs_{uuid.uuid4().hex[:12]}"
    with psycopg.Connection.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            pgsql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                pgsql.Identifier(name), pgsql.Identifier(template)
            )
        )
        try:
            yield psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
        finally:
            drop_database(admin, name)


def drop_database(admin: psycopg.Connection[Any], name: str) -> None:
    """Drop database ``name`` (if it exists), ending the sessions still connected to it
    (and its logical replication subscriptions, which would keep it)."""
    _drop_subscriptions(admin, name)
    if admin.info.server_version >= 130000:
        admin.execute(
            pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
        )
        return
    admin.execute(
        "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_catalog.pg_backend_pid()",
        (name,),
    )
    admin.execute(pgsql.SQL("DROP DATABASE IF EXISTS {}").format(pgsql.Identifier(name)))


def _drop_subscriptions(admin: psycopg.Connection[Any], name: str) -> None:
    """A database with a subscription cannot be dropped: each is dropped first, without
    its replication slot (``slot_name = NONE``: nothing is asked of the publisher)."""
    subscriptions = [row[0] for row in admin.execute(
        "SELECT s.subname FROM pg_catalog.pg_subscription s"
        " JOIN pg_catalog.pg_database d ON d.oid = s.subdbid WHERE d.datname = %s",
        (name,)).fetchall()]
    if not subscriptions:
        return
    with psycopg.Connection.connect(
            psycopg.conninfo.make_conninfo(admin.info.dsn, dbname=name),
            autocommit=True) as conn:
        for subscription in subscriptions:
            ident = pgsql.Identifier(subscription)
            conn.execute(pgsql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
            conn.execute(pgsql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
            conn.execute(pgsql.SQL("DROP SUBSCRIPTION {}").format(ident))
