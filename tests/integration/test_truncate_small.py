"""TRUNCATE is never harmless because its table is small: its ACCESS EXCLUSIVE lasts
until COMMIT whatever the size (a reload after it keeps every reader waiting), and it
is not MVCC-safe. On a small table the guard sends the exact DELETE instead, by
default; where DELETE would differ it refuses, as on a big table. A table created in
the same transaction is still harmless (nobody else can see it)."""

from __future__ import annotations

import logging

import psycopg
import pytest

import safeddl
import safeddl.psycopg
from safeddl import Policy

pytestmark = [pytest.mark.timeout(120)]

SMALL_ROWS = 2_000  # well below the default small_table_rows (10,000)

SETUP = f"""
CREATE TABLE dashboard (id int PRIMARY KEY, v int);
INSERT INTO dashboard SELECT g, g FROM generate_series(1, {SMALL_ROWS}) g;
CREATE TABLE audited (id int PRIMARY KEY);
INSERT INTO audited SELECT generate_series(1, 100);
CREATE FUNCTION audited_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RETURN OLD; END $$;
CREATE TRIGGER audited_delete BEFORE DELETE ON audited FOR EACH ROW EXECUTE FUNCTION audited_log();
ANALYZE dashboard;
ANALYZE audited;
"""


@pytest.fixture
def db(safeddl_db_each: str) -> str:
    with psycopg.connect(safeddl_db_each, autocommit=True) as conn:
        conn.execute(SETUP)
    return safeddl_db_each


def _locks_of(dsn: str, pid: int) -> dict[str, str]:
    """Table locks a backend holds, seen from another session."""
    with psycopg.connect(dsn, autocommit=True) as other:
        rows = other.execute(
            "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE l.pid = %s AND l.granted AND c.relkind IN ('r', 'p')", [pid]).fetchall()
    return {name: mode for name, mode in rows}


def test_truncate_and_reload_of_a_small_table_does_not_block_readers(db: str) -> None:
    with safeddl.psycopg.connect(db, policy=Policy(lock_timeout="2s")) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        conn.execute("TRUNCATE dashboard")
        conn.execute("INSERT INTO dashboard SELECT g, -g FROM generate_series(1, 1500) g")
        held = _locks_of(db, pid)
        assert held.get("dashboard") == "RowExclusiveLock", held
        # a reader goes on while the reload is not committed, and sees the old rows
        with psycopg.connect(db, autocommit=True) as reader:
            reader.execute("SET lock_timeout = '1s'")
            assert reader.execute("SELECT count(*) FROM dashboard").fetchone() == (SMALL_ROWS,)
        conn.commit()
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*), min(v) FROM dashboard").fetchone() == (1500, -1500)


def test_the_plain_truncate_of_a_small_table_does_block_readers(db: str) -> None:
    """What the guard avoids, on the same table: unguarded, the reader times out."""
    with psycopg.connect(db) as conn:
        conn.execute("TRUNCATE dashboard")
        with psycopg.connect(db, autocommit=True) as reader:
            reader.execute("SET lock_timeout = '200ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                reader.execute("SELECT count(*) FROM dashboard")
        conn.rollback()


def test_small_table_where_delete_would_differ_is_sent_with_a_warning(
        db: str, caplog: pytest.LogCaptureFixture) -> None:
    """No exact DELETE (an ON DELETE trigger would fire): on a small table the TRUNCATE
    goes as written, with the rule's warning, so a test suite's teardown keeps working;
    on a big one the default policy refuses it (see test_rules / test_guard_*)."""
    caplog.set_level(logging.WARNING, logger="safeddl")
    with safeddl.psycopg.connect(db, policy=Policy(lock_timeout="2s")) as conn:
        conn.execute("TRUNCATE audited")
        conn.commit()
    assert any("truncate" in record.getMessage() for record in caplog.records)
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM audited").fetchone() == (0,)


def test_table_created_in_the_transaction_is_truncated_as_written(db: str) -> None:
    with safeddl.psycopg.connect(db, policy=Policy(lock_timeout="2s")) as conn:
        conn.execute("CREATE TABLE staging (id int)")
        conn.execute("INSERT INTO staging SELECT generate_series(1, 10)")
        conn.execute("TRUNCATE staging")
        # (only this session can see the new table in pg_class)
        modes = conn.execute("SELECT mode FROM pg_locks WHERE pid = pg_backend_pid()"
                             " AND relation = 'staging'::regclass").fetchall()
        assert ("AccessExclusiveLock",) in modes
        conn.rollback()


def test_policy_warn_still_sends_truncate(db: str) -> None:
    policy = Policy(lock_timeout="2s", actions={"truncate": "warn"})
    with safeddl.psycopg.connect(db, policy=policy) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        conn.execute("TRUNCATE dashboard")
        assert _locks_of(db, pid).get("dashboard") == "AccessExclusiveLock"
        conn.rollback()


def test_do_block_with_an_unsafe_statement_is_refused_not_rewritten(db: str) -> None:
    """A DO block is read (its static SQL), and what it may run is judged: a TRUNCATE
    inside one is refused (no exact rewrite of a whole block), never half-rewritten."""
    with safeddl.psycopg.connect(db, policy=Policy(lock_timeout="2s", small_table_rows=0,
                                                   actions={"truncate": "rewrite"})) as conn, \
            pytest.raises(safeddl.UnsafeStatement) as info:
        conn.execute("DO $$ BEGIN TRUNCATE dashboard; END $$")
    assert info.value.rule == "truncate"
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM dashboard").fetchone() == (SMALL_ROWS,)
