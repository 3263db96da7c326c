"""Who is in the way: sessions holding a lock that conflicts with one a statement needs, read from ``pg_locks`` joined with ``pg_stat_activity``.

A wait for a *row* (an UPDATE, DELETE or SELECT FOR UPDATE behind another session's
uncommitted change of that row) is not on a relation lock: the server names the row in
the error's CONTEXT (``while updating tuple (0,1) in relation "t"``, :func:`row_wait`).
The holder is the transaction in that row version's ``xmax`` (or ``xmin``; the members
of a multixact for shared row locks), found in ``pg_locks`` as the holder of that
``transactionid``; sessions queued ahead for the same row hold its ``tuple`` lock
(:func:`read_row_blockers`).

After a lock timeout the waiter no longer waits, so ``pg_blocking_pids()`` of it is
empty; what is asked instead is "which sessions hold a lock on this relation that
conflicts with the mode it asked for" (the conflict matrix of :mod:`safeddl.locks`).
After a 55P03 the waiter's transaction is aborted and cannot run a query: the guard
sets a savepoint before the statement (or, in autocommit, opens the statement's own
short transaction) and reads the report on the same server connection after rolling
back to it (:func:`read_blockers`), so the report never needs a second connection,
which a full pool would make wait. Only a statement the guard did not bound, failing in
a transaction on a direct connection, is reported from a new, short-lived connection
(:func:`report_blockers`). The pre-flight check reads the same view from the guarded
session itself, before the statement joins any queue. The own backend is always
``pg_backend_pid()`` of the server connection running the query, never the client
library's key (a pooler's). On Citus: :mod:`safeddl.runtime.citus`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from safeddl.locks import CONFLICTS, LockMode
from safeddl.model import shorten
from safeddl.sql.names import local_name, quote_ident

logger = logging.getLogger("safeddl")

QUERY_LIMIT = 200
REPORT_CONNECT_TIMEOUT_S = 2
REPORT_STATEMENT_TIMEOUT = "2s"
REPORT_APPLICATION_NAME = "safeddl blocker report"

Run = Callable[[str, Sequence[Any] | dict[str, Any] | None], list[tuple[Any, ...]]]
"""Runs one query on some session and returns its rows."""


@dataclass(frozen=True)
class LockRequest:
    """A lock a statement asks for: on which relation (as written, and its oid when the
    live catalog resolved it) and in which mode."""

    relation: str
    mode: LockMode
    oid: int | None = None


@dataclass(frozen=True)
class Blocker:
    """A session holding a lock that conflicts with the one requested."""

    pid: int
    user: str | None
    application_name: str | None
    state: str | None
    relation: str
    mode: str  # as in pg_locks, e.g. AccessShareLock
    granted: bool
    xact_age: timedelta | None
    query_age: timedelta | None
    wait_event_type: str | None
    wait_event: str | None
    query: str | None
    # A row wait: the row (ctid) this session holds, or None for a table lock.
    row: str | None = None
    # False: a session that writes the table in an open transaction, reported because
    # the row's holder could not be read (it may hold the row, or not).
    certain: bool = True
    # On Citus: the node the lock is held on ("host:port"), the global pid of the
    # distributed transaction, and the shard (the lock's relation on that node).
    node: str | None = None
    global_pid: int | None = None
    shard: str | None = None

    def describe(self) -> str:
        who = f"pid {self.pid}"
        if self.node is not None:
            who += f" on node {self.node}"
            if self.global_pid is not None:
                who += f" (global pid {self.global_pid})"
        details = []
        if self.application_name:
            details.append(f"application {self.application_name!r}")
        if self.user:
            details.append(f"user {self.user!r}")
        if details:
            who += " (" + ", ".join(details) + ")"
        holds = "holds" if self.granted else "is queued for"
        if self.row is not None and not self.certain:
            ahead = "holds" if self.granted else "is queued ahead for"
            parts = [f"{who}: {ahead} the lock on row {self.row} of {self.relation} (maybe "
                     "not the row this statement waited for: the server did not name it)"]
        elif self.row is not None:
            ahead = "holds" if self.granted else "is queued ahead for"
            parts = [f"{who}: {ahead} the lock on row {self.row} of {self.relation} (its "
                     "transaction changed or locked the row and has not ended)"
                     if self.granted else
                     f"{who}: {ahead} the lock on row {self.row} of {self.relation}"]
        elif not self.certain:
            parts = [f"{who}: holds {self.mode} on {self.relation} and may hold the row "
                     "(its holder could not be read)"]
        else:
            shard = f" (shard {self.shard})" if self.shard and self.shard != self.relation else ""
            parts = [f"{who}: {holds} {self.mode} on {self.relation}{shard}"]
        parts.append(f"state {self.state or 'unknown'}")
        if self.xact_age is not None:
            parts.append(f"transaction open for {_seconds(self.xact_age)}")
        if self.query_age is not None:
            parts.append(f"query started {_seconds(self.query_age)} ago")
        if self.wait_event:
            parts.append(f"waiting on {self.wait_event_type or ''}/{self.wait_event}")
        parts.append(f"query: {shorten(self.query or '', QUERY_LIMIT)}")
        return "; ".join(parts)


def _seconds(age: timedelta) -> str:
    return f"{age.total_seconds():.1f} s"


def conflicting_modes(mode: LockMode) -> list[str]:
    """The ``pg_locks.mode`` names a session may hold that make ``mode`` wait."""
    return sorted(other.pg_name for other in CONFLICTS[mode])


_BLOCKERS_SQL = """
SELECT a.pid, a.usename::text, a.application_name, a.state, w.name, l.mode, l.granted,
       clock_timestamp() - a.xact_start, clock_timestamp() - a.query_start,
       a.wait_event_type, a.wait_event, left(a.query, %(limit)s)
FROM unnest(%(oids)s::oid[], %(names)s::text[], %(modes)s::text[]) AS w(relid, name, modes)
JOIN pg_locks l
  ON l.locktype = 'relation'
 AND l.relation = coalesce(w.relid, to_regclass(w.name)::oid)
 AND l.mode = ANY (string_to_array(w.modes, ','))
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.granted
  AND l.pid <> coalesce(%(me)s, pg_backend_pid())
  AND (%(min_age)s::interval IS NULL OR a.xact_start <= clock_timestamp() - %(min_age)s::interval)
ORDER BY l.granted DESC, a.xact_start NULLS LAST, a.pid
"""


def read_blockers(run: Run, requests: Sequence[LockRequest], exclude_pid: int | None = None,
                  min_age: timedelta | None = None) -> list[Blocker]:
    """Sessions other than ``exclude_pid`` (None: the server backend running the query,
    ``pg_backend_pid()``, the right one also behind a pooler) holding a lock that conflicts with one of
    ``requests`` (with a transaction open for at least ``min_age``). Sessions still
    waiting are left out: after a timeout nobody can tell whether they queued ahead of
    the statement or behind it."""
    if not requests:
        return []
    params = {**request_params(requests, min_age), "me": exclude_pid}
    return _unique([_blocker(row) for row in run(_BLOCKERS_SQL, params)])


def request_params(requests: Sequence[LockRequest],
                   min_age: timedelta | None = None) -> dict[str, Any]:
    """The parameters the blocker queries take for ``requests``: the relations (oid and
    name) and, per relation, the modes that conflict with the one asked for."""
    return {
        "limit": QUERY_LIMIT,
        "oids": [request.oid for request in requests],
        "names": [request.relation for request in requests],
        "modes": [",".join(conflicting_modes(request.mode)) for request in requests],
        "min_age": min_age,
    }


def _blocker(row: tuple[Any, ...]) -> Blocker:
    (pid, user, application, state, relation, mode, granted, xact_age, query_age,
     wait_type, wait_event, query) = row
    return Blocker(pid, user, application, state, relation, mode, granted, xact_age,
                   query_age, wait_type, wait_event, query)


def _unique(blockers: list[Blocker]) -> list[Blocker]:
    seen: set[tuple[int, str, str]] = set()
    out = []
    for blocker in blockers:
        key = (blocker.pid, blocker.relation, blocker.mode)
        if key not in seen:
            seen.add(key)
            out.append(blocker)
    return out


# ------------------------------------------------------------------------- row waits

_ROW_CONTEXT = re.compile(
    r'while (?P<action>[a-z ]+?) (?:tuple|version) \((?P<page>\d+),(?P<tuple>\d+)\)'
    r'(?: of tuple)? in relation "(?P<relation>(?:[^"]|"")+)"')


@dataclass(frozen=True)
class RowWait:
    """The row a statement was waiting for when it gave up, as the server's CONTEXT
    names it: ``relation`` unqualified, as the server spells it; ``page`` and ``tuple``
    its ctid; ``action`` e.g. "updating", "deleting", "locking", "inserting index"."""

    relation: str
    page: int
    tuple: int
    action: str

    @property
    def ctid(self) -> str:
        return f"({self.page},{self.tuple})"

    @property
    def own_row(self) -> bool:
        """The ctid is the waiting statement's own new row (a unique check waited for
        another inserter): it says nothing about the holder."""
        return self.action.startswith("inserting") or "uniqueness" in self.action


def row_wait(context: str | None) -> RowWait | None:
    """The row named in a lock timeout's CONTEXT (``while updating tuple (0,1) in
    relation "t"``), or None for a wait on a table lock."""
    if not context:
        return None
    match = _ROW_CONTEXT.search(context)
    if match is None:
        return None
    return RowWait(match.group("relation").replace('""', '"'), int(match.group("page")),
                   int(match.group("tuple")), match.group("action"))


_ACTIVITY = """a.pid, a.usename::text, a.application_name, a.state,
       clock_timestamp() - a.xact_start, clock_timestamp() - a.query_start,
       a.wait_event_type, a.wait_event, left(a.query, %(limit)s)"""

_RELATION_SQL = """
SELECT c.oid, n.nspname, c.relname, coalesce(i.indrelid, c.oid) AS table_oid
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_index i ON i.indexrelid = c.oid
WHERE c.oid = coalesce(%(oid)s::oid, to_regclass(%(name)s)::oid)
"""

_ROW_HOLDERS_SQL = f"""
SELECT {_ACTIVITY}, h.holds
FROM (
  SELECT l.pid, true AS holds, 0 AS rank
  FROM pg_locks l
  WHERE l.locktype = 'transactionid' AND l.granted AND l.mode = 'ExclusiveLock'
    AND l.transactionid = ANY (%(xids)s::xid[])
  UNION ALL
  SELECT l.pid, false, 1
  FROM pg_locks l
  WHERE l.locktype = 'tuple' AND l.granted AND l.relation = %(relid)s::oid
    AND l.page = %(page)s AND l.tuple = %(tuple)s
) h
JOIN pg_stat_activity a ON a.pid = h.pid
WHERE h.pid <> coalesce(%(me)s, pg_backend_pid())
ORDER BY h.rank, a.xact_start NULLS LAST, a.pid
"""

_TABLE_WRITERS_SQL = f"""
SELECT {_ACTIVITY}, l.mode, true
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.relation = %(relid)s::oid AND l.granted
  AND l.mode IN ('RowExclusiveLock', 'RowShareLock') AND l.pid <> coalesce(%(me)s, pg_backend_pid())
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY a.xact_start NULLS LAST, a.pid
"""


def read_row_blockers(run: Run, wait: RowWait, requests: Sequence[LockRequest],
                      exclude_pid: int | None) -> list[Blocker]:
    """The sessions in the way of a row wait: the transaction holding the row (from the
    row version's xmin/xmax in ``pg_locks``, the members of a multixact for shared
    locks), then the sessions queued ahead for it. When the row cannot be read (the
    waiter's own new row of a unique check, or no longer there), the sessions writing
    the table in an open transaction, marked as not certain."""
    relation = _resolve(run, wait, requests)
    if relation is None:
        return []
    relid, name, table_oid = relation
    blockers: list[Blocker] = []
    if not wait.own_row and relid == table_oid:
        blockers = _row_holders(run, name, relid, wait.ctid, exclude_pid)
    if not blockers:
        params = {"limit": QUERY_LIMIT, "relid": table_oid, "me": exclude_pid}
        blockers = [_activity_blocker(row, name, certain=False)
                    for row in run(_TABLE_WRITERS_SQL, params)]
    return _unique(blockers)


ROW_LOCK = "row lock"


def _activity_blocker(values: tuple[Any, ...], relation: str, *, ctid: str | None = None,
                      certain: bool = True) -> Blocker:
    (pid, user, application, state, xact_age, query_age, wait_type, wait_event, query,
     *rest) = values
    mode, granted = (ROW_LOCK, bool(rest[0])) if ctid is not None else (rest[0], True)
    return Blocker(pid, user, application, state, relation, mode, granted, xact_age,
                   query_age, wait_type, wait_event, query, row=ctid, certain=certain)


def _resolve(run: Run, wait: RowWait, requests: Sequence[LockRequest],
             ) -> tuple[int, str, int] | None:
    """(oid, quoted schema-qualified name of the table, the table's oid) of the relation
    the server named: the statement's own relation of that name when it has one (the
    server names it without its schema), else as the server's search_path finds it."""
    oid, name = None, quote_ident(wait.relation)
    for request in requests:
        if local_name(request.relation) == wait.relation:
            oid, name = request.oid, request.relation
            break
    rows = run(_RELATION_SQL, {"oid": oid, "name": name})
    if not rows:
        return None
    relid, schema, relname, table_oid = rows[0]
    if table_oid != relid:  # an index: report its table
        table = run(_RELATION_SQL, {"oid": table_oid, "name": None})
        if not table:
            return None
        _oid, schema, relname, _table = table[0]
    return int(relid), f"{quote_ident(schema)}.{quote_ident(relname)}", int(table_oid)


def _row_holders(run: Run, table: str, relid: int, ctid: str, exclude_pid: int | None,
                 certain: bool = True) -> list[Blocker]:
    """The transactions holding the row version at ``ctid`` of ``table`` (its xmax, or
    xmin; the members of xmax when that is a multixact of shared row locks, asked only
    when xmax is no running transaction), then the sessions queued for its tuple lock."""
    page, number = (int(part) for part in ctid.strip("()").split(","))

    def holders(xids: list[str]) -> list[Blocker]:
        params = {"limit": QUERY_LIMIT, "xids": xids, "relid": relid, "page": page,
                  "tuple": number, "me": exclude_pid}
        return [_activity_blocker(row, table, ctid=ctid, certain=certain)
                for row in run(_ROW_HOLDERS_SQL, params)]

    xmin, xmax = _row_version(run, table, ctid)
    xids = [xid for xid in (xmax, xmin) if xid and xid != "0"]
    found = holders(xids)
    if xmax and xmax != "0" and not any(blocker.granted for blocker in found):
        members = _multixact_members(run, xmax)
        if members:
            found = holders(xids + members)
    return found


def _row_version(run: Run, table: str, ctid: str) -> tuple[str | None, str | None]:
    """xmin and xmax of the row version at ``ctid`` (None, None when it cannot be read:
    gone, hidden by row-level security, no privilege)."""
    try:
        rows = run(f"SELECT xmin::text, xmax::text FROM ONLY {table} "
                   "WHERE ctid = %(ctid)s::tid", {"ctid": ctid})
    except Exception:  # noqa: BLE001 - the report goes on without the row
        logger.debug("safeddl: could not read row %s of %s", ctid, table, exc_info=True)
        return None, None
    return (str(rows[0][0]), str(rows[0][1])) if rows else (None, None)


def _multixact_members(run: Run, xmax: str) -> list[str]:
    try:
        members = run("SELECT xid::text FROM pg_get_multixact_members(%(xmax)s::xid)",
                      {"xmax": xmax})
    except Exception:  # noqa: BLE001 - xmax is a plain transaction id, not a multixact
        return []
    return [str(member[0]) for member in members]


_QUEUED_FOR_ROWS_SQL = f"""
WITH ahead AS (
  SELECT l.pid, l.relation, l.page, l.tuple
  FROM pg_locks l
  WHERE l.locktype = 'tuple' AND l.granted AND l.pid <> coalesce(%(me)s, pg_backend_pid())
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.relation = ANY (SELECT coalesce(w.relid, to_regclass(w.name)::oid)
                          FROM unnest(%(oids)s::oid[], %(names)s::text[]) AS w(relid, name))
), holders AS (
  SELECT DISTINCT b.pid, q.relation, q.page, q.tuple
  FROM ahead q CROSS JOIN LATERAL unnest(pg_blocking_pids(q.pid)) AS b(pid)
  WHERE b.pid <> coalesce(%(me)s, pg_backend_pid())
)
SELECT {_ACTIVITY}, x.relation, '(' || x.page || ',' || x.tuple || ')', x.holds
FROM (SELECT pid, relation, page, tuple, true AS holds, 0 AS rank FROM holders
      UNION ALL
      SELECT pid, relation, page, tuple, false, 1 FROM ahead) x
JOIN pg_stat_activity a ON a.pid = x.pid
ORDER BY x.rank, a.xact_start NULLS LAST, a.pid
"""


def read_queued_row_blockers(run: Run, requests: Sequence[LockRequest],
                             exclude_pid: int | None) -> list[Blocker]:
    """A statement queued behind another waiter for a row gives up without naming the
    row (the server sets no CONTEXT for a wait on a ``tuple`` lock): the sessions that
    hold a ``tuple`` lock on the statement's tables (queued ahead for a row), and those
    that ``pg_blocking_pids()`` of each of them names (the row's holders, read while
    those still wait). Certain when one row is involved only."""
    if not requests:
        return []
    params = {"limit": QUERY_LIMIT, "me": exclude_pid,
              "oids": [request.oid for request in requests],
              "names": [request.relation for request in requests]}
    rows = run(_QUEUED_FOR_ROWS_SQL, params)
    waits = dict.fromkeys((row[9], row[10]) for row in rows)
    certain = len(waits) == 1
    names: dict[int, str] = {}
    for relid, _ctid in waits:
        found = run(_RELATION_SQL, {"oid": relid, "name": None})
        if found:
            names[relid] = f"{quote_ident(found[0][1])}.{quote_ident(found[0][2])}"
    blockers: list[Blocker] = []
    for relid, ctid in waits:  # every holder of the row, also the members of a multixact
        if relid in names:
            blockers.extend(blocker for blocker in _row_holders(
                run, names[relid], relid, ctid, exclude_pid, certain) if blocker.granted)
    for (pid, user, application, state, xact_age, query_age, wait_type, wait_event, query,
         relid, ctid, holds) in rows:
        blockers.append(Blocker(pid, user, application, state, names.get(relid, str(relid)),
                                ROW_LOCK, bool(holds), xact_age, query_age, wait_type,
                                wait_event, query, row=ctid, certain=certain))
    return _unique(sorted(blockers, key=lambda b: not b.granted))


def read_all_blockers(run: Run, requests: Sequence[LockRequest], exclude_pid: int | None,
                      wait: RowWait | None = None) -> list[Blocker]:
    """The sessions in the way of a statement that gave up waiting: for a row wait, its
    holder (:func:`read_row_blockers`); for a table lock, the holders of conflicting
    locks on the statement's relations (:func:`read_blockers`); when there are none,
    the sessions queued ahead for rows of those tables and the rows' holders
    (:func:`read_queued_row_blockers`)."""
    if wait is not None:
        return read_row_blockers(run, wait, requests, exclude_pid)
    return (read_blockers(run, requests, exclude_pid)
            or read_queued_row_blockers(run, requests, exclude_pid))


class ConnectionInfoLike(Protocol):
    """What :func:`conninfo_of` needs of ``psycopg.Connection.info``."""

    @property
    def password(self) -> str | None: ...

    def get_parameters(self) -> dict[str, str]: ...


def conninfo_of(info: ConnectionInfoLike) -> str:
    """A libpq connection string for another session like the one ``info`` describes."""
    from psycopg.conninfo import make_conninfo

    params: dict[str, Any] = dict(info.get_parameters())
    if info.password:
        params["password"] = info.password
    return make_conninfo("", **params)


def report_blockers(conninfo: str, requests: Sequence[LockRequest], exclude_pid: int | None,
                    wait: RowWait | None = None) -> tuple[list[Blocker], str | None]:
    """Read the blockers from a new, short-lived connection (the waiter's own
    transaction is aborted). Returns the blockers and, when that failed, why."""
    import psycopg

    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=REPORT_CONNECT_TIMEOUT_S,
                             application_name=REPORT_APPLICATION_NAME) as conn:
            conn.execute(f"SET statement_timeout = '{REPORT_STATEMENT_TIMEOUT}'")

            def run(sql: str, params: Sequence[Any] | dict[str, Any] | None,
                    ) -> list[tuple[Any, ...]]:
                return conn.execute(sql, params).fetchall()

            return read_all_blockers(run, requests, exclude_pid, wait), None
    except Exception as exc:  # noqa: BLE001 - a report must never hide the lock timeout
        logger.warning("safeddl: could not read the sessions blocking the lock: %s", exc)
        return [], f"(safeddl could not read the blocking sessions: {exc})"


__all__ = ["Blocker", "LockRequest", "RowWait", "conflicting_modes", "conninfo_of",
           "read_all_blockers", "read_blockers", "read_queued_row_blockers",
           "read_row_blockers", "report_blockers", "request_params",
           "row_wait"]
