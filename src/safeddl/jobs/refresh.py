"""The full-refresh pattern done right: load a new copy of a table, then swap it in
under a short, timeout-bounded lock, retrying while readers hold the old one.

``TRUNCATE t`` + reload takes ACCESS EXCLUSIVE on ``t`` for the whole reload, and
queues every reader behind it. :func:`swap_in` instead:

1. creates ``<table>_new`` with ``CREATE TABLE ... (LIKE <table> INCLUDING ALL)``
   (columns, defaults, NOT NULL, CHECK constraints, indexes, primary key and unique
   constraints, identity, generated columns, storage, comments, statistics objects),
   and copies what ``INCLUDING ALL`` leaves out but can be copied: the grants, the
   table's own comment and its storage parameters;
2. lets the caller fill it (a callable receiving the connection and the new table's
   quoted name, or an SQL ``SELECT`` whose rows are inserted), committed;
3. in one short transaction, bounded by ``lock_timeout``: locks the table, renames it
   to ``<table>_old``, renames ``<table>_new`` to ``<table>``, hands the sequences the
   old columns own (serial) to the new columns, drops the old table and gives the new
   indexes (and the constraints they back) the old names. A lock timeout (a reader
   holding the table) rolls that back and tries again with exponential backoff (tenacity),
   up to ``attempts`` times.

Readers never see an empty or half-loaded table: before the swap they read the old
table, after it the new one (a query waiting for the table while it is swapped
looks the name up again and reads the new one). A reader waits at most about
``lock_timeout`` plus the brief swap.

What it does not carry over, and refuses up front (:class:`RefreshRefused`, naming
each one) rather than break: views or materialized views reading the table, foreign
keys of other tables pointing at it (they would follow the old table), partitions,
inheritance parents or children, user triggers, row-level security policies,
publications, identity columns (the new table would start a new sequence), and an
owner other than the current user. Foreign keys of the table itself are not copied
by LIKE either: they are refused too. Rows written to the old table after the load
began are lost with it: pause the writers or load them again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from safeddl.jobs.arguments import relation_name, sql_text, whole_number
from safeddl.runtime.errors import ConfigError, SafeDDLError, is_lock_timeout
from safeddl.runtime.policy import (
    Duration,
    as_timedelta,
    milliseconds,
    parse_duration,
    parse_timeout,
)
from safeddl.runtime.topology import bound_statement

logger = logging.getLogger("safeddl")

Loader = Callable[["psycopg.Connection[Any]", str], object] | str
"""A callable ``(connection, quoted new table name)`` that fills the new table, or an
SQL SELECT whose rows are inserted into it."""


class RefreshRefused(SafeDDLError):
    """The table has dependants a swap would break; nothing was changed."""

    def __init__(self, table: str, problems: list[str]) -> None:
        self.table = table
        self.problems = tuple(problems)
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"safeddl.jobs.refresh.swap_in: {table} cannot be swapped safely:\n"
                         f"{listing}\nRefresh it in place instead (DELETE + INSERT in one "
                         "transaction), or remove these dependants first.")


@dataclass(frozen=True)
class SwapResult:
    """What :func:`swap_in` did."""

    table: str  # the table, quoted and schema qualified
    rows: int  # rows in the new table
    attempts: int  # swap transactions tried (1: no lock timeout)
    swap_seconds: float  # time of the successful swap transaction


@dataclass(frozen=True)
class _Names:
    schema: str
    name: str

    def qualified(self, name: str | None = None) -> sql.Composed:
        return sql.SQL(".").join([sql.Identifier(self.schema), sql.Identifier(name or self.name)])


def swap_in(conn: psycopg.Connection[Any], table: str, load: Loader, *,
            lock_timeout: Duration = timedelta(seconds=2), attempts: int = 10,
            backoff_initial: Duration = timedelta(milliseconds=100),
            backoff_max: Duration = timedelta(seconds=5)) -> SwapResult:
    """Replace the contents of ``table`` (as written in SQL, e.g. ``"app.rates"``) with
    what ``load`` puts into a fresh copy, swapped in under a short lock. ``load`` (a
    SELECT, or a callable given the connection and the new table's name) is the
    caller's own SQL, run as given.

    ``conn`` is a psycopg connection outside a transaction block (its statements run
    unguarded: safeddl's own rules would warn about the renames). Raises
    :class:`RefreshRefused` when the swap would break something (nothing is created),
    and the driver's lock-timeout error when every attempt timed out (the new table is
    dropped again, the old one kept).
    """
    helper = "safeddl.swap_in"
    relation_name(helper, "table", table)
    if isinstance(load, str):
        sql_text(helper, "load", load)
    elif not callable(load):
        raise ConfigError(f"{helper}: load={load!r} must be a SELECT (SQL text, run as "
                          "given) or a callable(conn, new_table_name)")
    whole_number(helper, "attempts", attempts, minimum=1, maximum=1000)
    wait = parse_timeout(lock_timeout, "lock_timeout")
    parse_duration(backoff_initial, "backoff_initial", allow_zero=True)
    parse_duration(backoff_max, "backoff_max", allow_zero=True)
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise SafeDDLError("safeddl.jobs.refresh.swap_in needs a connection outside a "
                           "transaction block (commit or roll back first)")
    with conn.transaction():
        names = _resolve(conn, table)
        problems = _dependants(conn, names)
    if problems:
        raise RefreshRefused(f"{names.schema}.{names.name}", problems)
    new_name, old_name = _side_name(names.name, "new"), _side_name(names.name, "old")
    new = names.qualified(new_name)
    with conn.transaction():
        _run(conn, sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
            new, names.qualified()))
        _copy_extras(conn, names, new)
    try:
        with conn.transaction():
            if isinstance(load, str):
                _run(conn, sql.SQL("INSERT INTO {} ").format(new) + sql.SQL(load))
            else:
                load(conn, new.as_string(conn))
        with conn.transaction():
            rows = int(_run(conn, sql.SQL("SELECT count(*) FROM {}").format(new))[0][0])
        attempt_count, seconds = _swap(conn, names, new_name, old_name, wait, attempts,
                                       as_timedelta(backoff_initial), as_timedelta(backoff_max))
    except BaseException:
        _drop_quietly(conn, new)
        raise
    return SwapResult(names.qualified().as_string(conn), rows, attempt_count, seconds)


def _swap(conn: psycopg.Connection[Any], names: _Names, new_name: str, old_name: str,
          wait: timedelta, attempts: int, initial: timedelta, maximum: timedelta,
          ) -> tuple[int, float]:
    tried = 0
    started = 0.0
    for attempt in Retrying(
            retry=retry_if_exception(is_lock_timeout),
            wait=wait_exponential(multiplier=initial.total_seconds(),
                                  max=maximum.total_seconds()),
            stop=stop_after_attempt(attempts), reraise=True,
            before_sleep=lambda state: logger.info(
                "safeddl: swap_in %s: lock timeout on attempt %d, retrying",
                names.name, state.attempt_number)):
        with attempt:
            tried += 1
            started = time.monotonic()
            with conn.transaction():
                _swap_once(conn, names, new_name, old_name, wait)
    return tried, time.monotonic() - started


def _swap_once(conn: psycopg.Connection[Any], names: _Names, new_name: str, old_name: str,
               wait: timedelta) -> None:
    table, new, old = names.qualified(), names.qualified(new_name), names.qualified(old_name)
    _set_lock_timeout(conn, milliseconds(wait))
    _run(conn, sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
    old_indexes = _indexes(conn, table)
    sequences = _owned_sequences(conn, table)
    _run(conn, sql.SQL("ALTER TABLE {} RENAME TO {}").format(table, sql.Identifier(old_name)))
    _run(conn, sql.SQL("ALTER TABLE {} RENAME TO {}").format(new, sql.Identifier(names.name)))
    for sequence, column in sequences:
        _run(conn, sql.SQL("ALTER SEQUENCE {} OWNED BY {}.{}").format(
            sql.SQL(sequence), table, sql.Identifier(column)))
    new_indexes = _indexes(conn, table)
    _run(conn, sql.SQL("DROP TABLE {}").format(old))
    for shape, old_index in old_indexes.items():
        new_index = new_indexes.get(shape)
        if new_index is not None and new_index != old_index:
            _run(conn, sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.SQL(".").join([sql.Identifier(names.schema), sql.Identifier(new_index)]),
                sql.Identifier(old_index)))


# --------------------------------------------------------------------------- catalog


def _resolve(conn: psycopg.Connection[Any], table: str) -> _Names:
    rows = _run(conn, sql.SQL(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.oid = to_regclass({})").format(sql.Literal(table)))
    if not rows:
        raise SafeDDLError(f"safeddl.jobs.refresh.swap_in: no table {table}")
    return _Names(rows[0][0], rows[0][1])


_DEPENDANTS_SQL = """
WITH t AS (SELECT {table}::regclass AS oid)
SELECT 'view ' || v.oid::regclass::text || ' reads it (it would keep reading the old table)'
FROM t JOIN pg_depend d ON d.refobjid = t.oid AND d.classid = 'pg_rewrite'::regclass
JOIN pg_rewrite w ON w.oid = d.objid JOIN pg_class v ON v.oid = w.ev_class
WHERE v.oid <> t.oid
UNION ALL
SELECT 'foreign key ' || k.conname || ' of ' || k.conrelid::regclass::text
       || ' points at it (it would keep pointing at the old table)'
FROM t JOIN pg_constraint k ON k.confrelid = t.oid AND k.contype = 'f' AND k.conrelid <> t.oid
UNION ALL
SELECT 'foreign key ' || k.conname || ' (LIKE does not copy foreign keys)'
FROM t JOIN pg_constraint k ON k.conrelid = t.oid AND k.contype = 'f'
UNION ALL
SELECT 'it is partitioned, a partition or has inheritance children/parents'
FROM t JOIN pg_class c ON c.oid = t.oid
WHERE c.relkind = 'p' OR c.relispartition
   OR EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = t.oid OR h.inhparent = t.oid)
UNION ALL
SELECT 'trigger ' || g.tgname || ' (not copied)'
FROM t JOIN pg_trigger g ON g.tgrelid = t.oid AND NOT g.tgisinternal
UNION ALL
SELECT 'row-level security policy ' || p.polname || ' (not copied)'
FROM t JOIN pg_policy p ON p.polrelid = t.oid
UNION ALL
SELECT 'row-level security is enabled (not copied)'
FROM t JOIN pg_class c ON c.oid = t.oid WHERE c.relrowsecurity
UNION ALL
SELECT 'publication ' || p.pubname || ' lists it (not copied)'
FROM t JOIN pg_publication_rel r ON r.prrelid = t.oid JOIN pg_publication p ON p.oid = r.prpubid
UNION ALL
SELECT 'identity column ' || a.attname || ' (the copy would restart its sequence)'
FROM t JOIN pg_attribute a ON a.attrelid = t.oid AND a.attidentity <> '' AND NOT a.attisdropped
UNION ALL
SELECT 'owned by ' || pg_get_userbyid(c.relowner) || ', not by ' || current_user
       || ' (the copy would change owner)'
FROM t JOIN pg_class c ON c.oid = t.oid WHERE c.relowner <> (SELECT oid FROM pg_roles
                                                             WHERE rolname = current_user)
"""


def _dependants(conn: psycopg.Connection[Any], names: _Names) -> list[str]:
    query = sql.SQL(_DEPENDANTS_SQL).format(
        table=sql.Literal(names.qualified().as_string(conn)))
    return [str(row[0]) for row in _run(conn, query)]


def _copy_extras(conn: psycopg.Connection[Any], names: _Names, new: sql.Composed) -> None:
    """What LIKE ... INCLUDING ALL leaves out: grants, the table comment, storage
    parameters."""
    table = sql.Literal(names.qualified().as_string(conn))
    rows = _run(conn, sql.SQL(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, "
        "a.privilege_type, a.is_grantable FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.oid = {}::regclass AND a.grantee <> c.relowner").format(table))
    for grantee, privilege, grantable in rows:
        role = sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee)
        option = sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")
        _run(conn, sql.SQL("GRANT {} ON {} TO {}{}").format(
            sql.SQL(privilege), new, role, option))
    extras = _run(conn, sql.SQL(
        "SELECT obj_description(c.oid, 'pg_class'), c.reloptions FROM pg_class c "
        "WHERE c.oid = {}::regclass").format(table))
    comment, options = extras[0]
    if comment is not None:
        _run(conn, sql.SQL("COMMENT ON TABLE {} IS {}").format(new, sql.Literal(comment)))
    if options:
        _run(conn, sql.SQL("ALTER TABLE {} SET ({})").format(
            new, sql.SQL(", ").join(sql.SQL(option) for option in options)))


def _indexes(conn: psycopg.Connection[Any], table: sql.Composed) -> dict[tuple[Any, ...], str]:
    """Index name by shape (unique, primary, definition after the table name)."""
    rows = _run(conn, sql.SQL(
        "SELECT i.indisunique, i.indisprimary, "
        "regexp_replace(pg_get_indexdef(i.indexrelid), '^.* USING ', ''), c.relname "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = {}::regclass ORDER BY c.relname").format(
            sql.Literal(table.as_string(conn))))
    out: dict[tuple[Any, ...], str] = {}
    for unique, primary, shape, name in rows:
        out.setdefault((unique, primary, shape), name)
    return out


def _owned_sequences(conn: psycopg.Connection[Any], table: sql.Composed,
                     ) -> list[tuple[str, str]]:
    """(sequence as SQL, column) of the sequences the table's columns own (serial)."""
    rows = _run(conn, sql.SQL(
        "SELECT d.objid::regclass::text, a.attname FROM pg_depend d "
        "JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
        "JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
        "WHERE d.refobjid = {}::regclass AND d.classid = 'pg_class'::regclass "
        "AND d.deptype = 'a' AND d.refobjsubid > 0").format(sql.Literal(table.as_string(conn))))
    return [(str(r[0]), str(r[1])) for r in rows]


# --------------------------------------------------------------------------- helpers


def _side_name(name: str, label: str) -> str:
    from safeddl.runtime.rewrite import pg_object_name

    return pg_object_name(name, None, label)


def _set_lock_timeout(conn: psycopg.Connection[Any], lock_timeout_ms: int) -> None:
    """``SET LOCAL lock_timeout`` as a literal statement (Citus forwards only those)."""
    with psycopg.Cursor(conn) as cursor:
        def run(query: str, params: Any) -> list[tuple[Any, ...]]:
            cursor.execute(query.encode(), params)
            return list(cursor.fetchall())

        cursor.execute(bound_statement(run, lock_timeout_ms).encode())


def _run(conn: psycopg.Connection[Any], query: sql.Composed | sql.SQL) -> list[tuple[Any, ...]]:
    """An internal statement on a plain (unguarded) cursor of the connection."""
    with psycopg.Cursor(conn) as cursor:
        cursor.execute(query)
        return list(cursor.fetchall()) if cursor.description else []


def _drop_quietly(conn: psycopg.Connection[Any], new: sql.Composed) -> None:
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        with conn.transaction():
            _run(conn, sql.SQL("DROP TABLE IF EXISTS {}").format(new))
    except Exception as exc:  # noqa: BLE001 - the original error is what matters
        logger.warning("safeddl: swap_in could not drop %s: %s", new.as_string(conn), exc)


__all__ = ["Loader", "RefreshRefused", "SwapResult", "swap_in"]
