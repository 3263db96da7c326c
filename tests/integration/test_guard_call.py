"""CALL through the guard on a real server: the procedure's body is read from the
database (``pg_get_functiondef``), so a CALL whose statements are plain DML is sent
with its lock waits bounded, one whose body holds strong locks is judged by the rules of
those statements, and one whose body cannot be read (dynamic SQL, another language,
overloads) stays refused as opaque."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import safeddl
import safeddl.psycopg

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture
def db(safeddl_db: str) -> str:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, x int)")
        conn.execute("INSERT INTO big SELECT g, g FROM generate_series(1, 20000) g")
        conn.execute("ANALYZE big")
        conn.execute("CREATE PROCEDURE touch(k int) LANGUAGE sql "
                     "AS $$ UPDATE big SET x = x + 1 WHERE id = k $$")
        conn.execute("CREATE PROCEDURE touch_atomic(k int) LANGUAGE sql "
                     "BEGIN ATOMIC UPDATE big SET x = x + 1 WHERE id = k; END")
        conn.execute("CREATE PROCEDURE empty_big() LANGUAGE plpgsql "
                     "AS $$ BEGIN TRUNCATE big; END $$")
        conn.execute("CREATE PROCEDURE dynamic() LANGUAGE plpgsql "
                     "AS $$ BEGIN EXECUTE 'TRUNCATE big'; END $$")
        conn.execute("CREATE PROCEDURE twice(k int) LANGUAGE sql AS $$ SELECT 1 $$")
        conn.execute("CREATE PROCEDURE twice(k text) LANGUAGE sql AS $$ TRUNCATE big $$")
    return safeddl_db


@pytest.fixture
def guarded(db: str) -> Iterator[psycopg.Connection[Any]]:
    conn = safeddl.psycopg.connect(db)
    try:
        yield conn
    finally:
        conn.close()


def value_of(dsn: str, key: int) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT x FROM big WHERE id = %s", [key]).fetchone()
        assert row is not None
        return int(row[0])


def count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM big").fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.parametrize("procedure", ["touch", "touch_atomic"])
def test_a_call_of_plain_dml_is_sent(guarded: psycopg.Connection[Any], db: str,
                                     procedure: str) -> None:
    before = value_of(db, 7)
    guarded.execute(f"CALL {procedure}(7)")
    guarded.commit()
    assert value_of(db, 7) == before + 1
    guarded.execute(f"CALL {procedure}(7)")  # in the same transaction again: a known text
    guarded.commit()
    assert value_of(db, 7) == before + 2


def test_a_call_whose_body_truncates_is_refused_by_the_truncate_rule(
        guarded: psycopg.Connection[Any], db: str) -> None:
    with pytest.raises(safeddl.UnsafeStatement) as refused:
        guarded.execute("CALL empty_big()")
    assert refused.value.rule == "truncate"
    guarded.rollback()
    assert count(db) == 20000


@pytest.mark.parametrize(("sql", "why"), [
    ("CALL dynamic()", "EXECUTE"),
    ("CALL twice(1)", "procedures of that name"),
    ("CALL missing()", "not in the text"),
])
def test_a_call_whose_body_cannot_be_read_stays_refused(
        guarded: psycopg.Connection[Any], db: str, sql: str, why: str) -> None:
    with pytest.raises(safeddl.UnsafeStatement) as refused:
        guarded.execute(sql)
    assert refused.value.rule == "opaque-statement"
    assert why in str(refused.value), str(refused.value)
    guarded.rollback()
    assert count(db) == 20000
