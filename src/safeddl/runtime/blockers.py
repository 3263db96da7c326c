"""Who is in the way: sessions holding a lock that conflicts with one a statement needs, read from ``pg_locks`` joined with ``pg_stat_activity``.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from safeddl.locks import CONFLICTS, LockMode
from safeddl.model import shorten

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
    params = {
        "limit": QUERY_LIMIT,
        "oids": [request.oid for request in requests],
        "names": [request.relation for request in requests],
        "modes": [",".join(conflicting_modes(request.mode)) for request in requests],
        "me": exclude_pid,
        "min_age": min_age,
    }
    return _unique([_blocker(row) for row in run(_BLOCKERS_SQL, params)])


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


def report_blockers(conninfo: str, requests: Sequence[LockRequest], exclude_pid: int,
                    ) -> tuple[list[Blocker], str | None]:
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

            return read_blockers(run, requests, exclude_pid), None
    except Exception as exc:  # noqa: BLE001 - a report must never hide the lock timeout
        logger.warning("safeddl: could not read the sessions blocking the lock: %s", exc)
        return [], f"(safeddl could not read the blocking sessions: {exc})"


__all__ = ["Blocker", "LockRequest", "conflicting_modes", "conninfo_of", "read_blockers",
           "report_blockers"]
