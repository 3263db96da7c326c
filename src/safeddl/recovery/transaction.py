"""Declared transactions: take every table lock up front, in the canonical order.

::

    with safeddl.transaction(engine, tables={"accounts": "SHARE ROW EXCLUSIVE",
                                             "ledger": "ROW EXCLUSIVE"}) as conn:
        conn.execute(...)

opens a transaction, takes the declared locks one table at a time in the canonical lock
order (the policy's ``lock_order``, then by schema-qualified name) with ``LOCK TABLE ...
IN ... MODE``, each wait bounded by the policy's ``lock_timeout`` (a LockTimeout naming
the blockers when it runs out), runs the body, and commits; an exception rolls back.
The body runs guarded: its statements are still checked (lock order, row key order,
the rules), so a table it writes but did not declare is reported like anywhere else.

Trade-off: declaring the tables rules out deadlocks on the *table* locks the body
takes. With a self-conflicting mode (SHARE ROW EXCLUSIVE, EXCLUSIVE, ACCESS EXCLUSIVE)
it also serializes every writer of those tables, so two bodies cannot deadlock on rows
either, whatever order they update them in; throughput drops to one such transaction
at a time. With ROW EXCLUSIVE (what UPDATE takes anyway) writers still run
concurrently and rows must be taken in key order (:func:`safeddl.lock_ordered`).

Measured (``benchmarks/bench_deadlocks.py``: two workers, 100 transactions each, both
updating the same row of two tables, 1 ms apart, deadlock_timeout 200 ms, PostgreSQL 18
on a shared 2-core machine; a deadlocked transaction is run again until it commits):
opposite orders unguarded 6 transactions/s with 506 deadlocks in 600 commits; the same
bodies inside declared SHARE ROW EXCLUSIVE transactions 171/s, no deadlock; the code
fixed to the canonical order 669/s guarded, 678/s unguarded, no deadlock. Fixing the
order is the fast cure; declaring the tables is the safe one when the order cannot be
controlled.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from safeddl.integrations import guard
from safeddl.locks import LockMode
from safeddl.ordering import LockOrder
from safeddl.runtime.errors import ConfigError
from safeddl.runtime.policy import Policy, default_policy
from safeddl.runtime.scope import allow
from safeddl.sql.names import fold, quote_ident, split_relation_name

_MODES = ", ".join(mode.sql_name for mode in LockMode)
_WHY = "safeddl.transaction() takes its declared locks up front, in the canonical order"


@contextmanager
def transaction(target: Any, tables: Mapping[str, str | LockMode], *,
                policy: Policy | None = None) -> Iterator[Any]:
    """A transaction on ``target`` (an SQLAlchemy Engine or Connection, or a psycopg
    Connection) that first locks ``tables`` (name -> lock mode, e.g. ``"SHARE ROW
    EXCLUSIVE"``) in the canonical order; yields the connection to use. ``policy``:
    default the one installed on ``target``, else ``[tool.safeddl]`` / ``SAFEDDL_*``.
    A bad table name or mode raises ConfigError before anything is sent."""
    if policy is not None and not isinstance(policy, Policy):
        raise ConfigError(f"safeddl.transaction(): policy={policy!r} is not a safeddl.Policy")
    active = policy if policy is not None else _installed_policy(target) or default_policy()
    statements = lock_statements(tables, LockOrder(active.lock_order))
    library = (type(target).__module__ or "").split(".", 1)[0]
    if library == "sqlalchemy":
        with _sqlalchemy_transaction(target) as conn, guard(conn, active):
            with allow("statements-after-access-exclusive", reason=_WHY):
                for sql in statements:
                    conn.exec_driver_sql(sql)
            yield conn
    elif library == "psycopg":
        with guard(target, active), target.transaction():
            with allow("statements-after-access-exclusive", reason=_WHY):
                for sql in statements:
                    target.execute(sql)
            yield target
    else:
        raise TypeError(f"safeddl.transaction() needs an SQLAlchemy Engine or Connection or a "
                        f"psycopg Connection, not a {type(target).__name__}")


def lock_statements(tables: Mapping[str, str | LockMode], order: LockOrder) -> list[str]:
    """``LOCK TABLE <t> IN <mode> MODE`` for each table, in canonical order."""
    if not isinstance(tables, Mapping) or not tables:
        raise ConfigError("safeddl.transaction(): tables= must name at least one table, "
                          'e.g. tables={"accounts": "SHARE ROW EXCLUSIVE"}')
    modes = {table: lock_mode(table, value) for table, value in tables.items()}
    names = {table: _table_sql(table) for table in tables}
    return [f"LOCK TABLE {names[table]} IN {modes[table].sql_name} MODE"
            for table in order.sorted(tables)]


def lock_mode(table: str, value: object) -> LockMode:
    """``"share row exclusive"``, ``"SHARE ROW EXCLUSIVE MODE"``, ``"ShareRowExclusiveLock"``
    or a LockMode; ConfigError naming the table otherwise."""
    if isinstance(value, LockMode):
        return value
    if isinstance(value, str):
        words = value.split()
        if words and words[-1].upper() == "MODE":
            words = words[:-1]
        try:
            return LockMode.from_sql_name(" ".join(words))
        except ValueError:
            pass
        try:
            return LockMode.from_pg_name(value.strip())
        except KeyError:
            pass
    raise ConfigError(f"safeddl.transaction(): tables[{table!r}] = {value!r} is not a lock "
                      f"mode; use one of {_MODES}")


def _table_sql(table: object) -> str:
    parts = split_relation_name(table) if isinstance(table, str) else None
    if not parts or len(parts) > 2 or any(not part for part, _quoted in parts):
        raise ConfigError(f"safeddl.transaction(): {table!r} is not a table name "
                          '(table or schema.table, as in SQL: "my table" in double quotes '
                          "for a name with a space or capitals)")
    return ".".join(quote_ident(fold(part, quoted)) for part, quoted in parts)


@contextmanager
def _sqlalchemy_transaction(target: Any) -> Iterator[Any]:
    from sqlalchemy.engine import Connection, Engine

    if isinstance(target, Engine):
        with target.begin() as conn:
            yield conn
    elif isinstance(target, Connection):
        if target.in_transaction():
            raise ConfigError("safeddl.transaction(): the connection is already in a "
                              "transaction; declared locks must come first: pass the engine "
                              "or a connection outside a transaction")
        with target.begin():
            yield target
    else:
        raise TypeError(f"safeddl.transaction() cannot use a {type(target).__name__}")


def _installed_policy(target: Any) -> Policy | None:
    library = (type(target).__module__ or "").split(".", 1)[0]
    if library == "sqlalchemy":
        from safeddl.integrations.sqlalchemy import hook_for, sync_engine_of

        installed = hook_for(sync_engine_of(target)).guard
    elif library == "psycopg":
        from safeddl.integrations.psycopg import slot_of

        slot = slot_of(target)
        installed = slot.guard if slot is not None else None
    else:
        return None
    return installed.policy if installed is not None else None


__all__ = ["lock_mode", "lock_statements", "transaction"]
