"""Rewrites of tables with hostile names leave exactly the catalog the original statement
leaves: the names safeddl generates for constraints and indexes are the ones PostgreSQL
itself chooses (ChooseConstraintName / ChooseRelationName: ``table_column_label``, cut
to 63 bytes without splitting a multi-byte character, a number added when taken), for
names with quotes, semicolons, spaces, mixed and non-ASCII case, reserved words, ``$``,
backslashes, comment marks and dots, in a schema whose name holds a dot."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest

import safeddl
import safeddl.psycopg
from safeddl import Policy
from safeddl.testing.server import fresh_database

pytestmark = [pytest.mark.timeout(300)]

POLICY = Policy(small_table_rows=0, lock_timeout="2s")
SCHEMA = 'my.sch "x"'
NAMES = [
    'Semi;colon "quoted"', "Mixed Case", "ÄRGER", "select", "a$b", "back\\slash",
    "-- not a comment", "/* nor this */", "d.o.t", "x" * 70, "ä" * 40,
]


def q(name: str) -> str:
    """Quoted as the test writes it (independent of safeddl's own quoting)."""
    return '"' + name.replace('"', '""') + '"'


def cases(table: str, column: str) -> list[str]:
    t, c = f"{q(SCHEMA)}.{q(table)}", q(column)
    return [
        f"ALTER TABLE {t} ADD CHECK ({c} > 0)",
        f"ALTER TABLE {t} ADD CHECK ({c} > 0 AND id > 0)",
        f"ALTER TABLE {t} ADD UNIQUE ({c})",
        f"ALTER TABLE {t} ADD PRIMARY KEY (id)",
        f"ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL",
        f"ALTER TABLE {t} ADD FOREIGN KEY ({c}) REFERENCES {q(SCHEMA)}.parent (id)",
    ]


def setup(dsn: str, table: str, column: str) -> None:
    t = f"{q(SCHEMA)}.{q(table)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {q(SCHEMA)} CASCADE")
        conn.execute(f"CREATE SCHEMA {q(SCHEMA)}")
        conn.execute(f"CREATE TABLE {q(SCHEMA)}.parent (id int PRIMARY KEY)")
        conn.execute(f"INSERT INTO {q(SCHEMA)}.parent SELECT g FROM generate_series(1, 500) g")
        conn.execute(f"CREATE TABLE {t} (id int, {q(column)} int)")
        conn.execute(f"INSERT INTO {t} SELECT g, g FROM generate_series(1, 500) g")
        # a taken name: PostgreSQL then adds a number, and so must the rewrite
        conn.execute(f"CREATE TABLE {q(SCHEMA)}.other (id int)")
        conn.execute(f"ANALYZE {t}")


def state(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return sorted(conn.execute(
            "SELECT 'constraint', conrelid::regclass::text, conname, contype::text, "
            "convalidated, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = %(s)s::regnamespace "
            "UNION ALL SELECT 'index', i.indrelid::regclass::text, c.relname, "
            "i.indisvalid::text, i.indisunique, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = %(s)s::regnamespace "
            "UNION ALL SELECT 'column', attrelid::regclass::text, attname, attnotnull::text, "
            "true, '' FROM pg_attribute WHERE attrelid IN (SELECT oid FROM pg_class WHERE "
            "relnamespace = %(s)s::regnamespace AND relkind = 'r') AND attnum > 0",
            {"s": q(SCHEMA)}).fetchall())


@pytest.fixture(scope="module")
def databases(safeddl_server: Any) -> Iterator[tuple[str, str]]:
    with ExitStack() as stack:
        yield (stack.enter_context(fresh_database(safeddl_server.dsn)),
               stack.enter_context(fresh_database(safeddl_server.dsn)))


@pytest.mark.parametrize("name", NAMES)
def test_rewrites_of_hostile_names_leave_the_original_catalog(
        name: str, databases: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    original, rewritten = databases
    outcomes: Counter[str] = Counter()
    differences = []
    caplog.set_level(logging.INFO, logger="safeddl")
    for statement in cases(name, name + " col"):
        for dsn in databases:
            setup(dsn, name, name + " col")
        with psycopg.connect(original, autocommit=True) as conn:
            conn.execute(statement)
        caplog.clear()
        with safeddl.psycopg.connect(rewritten, policy=POLICY, autocommit=True) as conn:
            conn.execute(statement)
        outcomes["rewritten" if "CONCURRENTLY" in caplog.text or "VALID" in caplog.text
                 else "as written"] += 1
        if state(rewritten) != state(original):
            differences.append((statement, sorted(set(state(rewritten)) ^ set(state(original)))))
    print(f"\n{name!r}: {dict(outcomes)}")
    assert outcomes["rewritten"] >= 5  # the plans ran, not the originals
    assert not differences, differences
