"""On a direct connection, the lock-wait bound lives and dies with one transaction:
observed on the server by an event trigger, and in what the lock ledger reports."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

import safeddl
import safeddl.psycopg
from safeddl import Policy

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
def db(safeddl_db: str) -> str:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total int)")
        conn.execute("INSERT INTO orders SELECT g, g FROM generate_series(1, 20000) g")
        conn.execute("ANALYZE orders")
        conn.execute("CREATE TABLE seen (lock_timeout text, own_transaction bool)")
        conn.execute("""
            CREATE FUNCTION record_settings() RETURNS event_trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO seen VALUES (current_setting('lock_timeout'),
                                         transaction_timestamp() < statement_timestamp());
            END $$""")
        conn.execute("CREATE EVENT TRIGGER record_settings ON ddl_command_start "
                     "EXECUTE FUNCTION record_settings()")
    return safeddl_db


def _seen(db: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db, autocommit=True) as conn:
        return conn.execute("SELECT * FROM seen").fetchall()


def test_autocommit_ddl_runs_in_a_transaction_of_its_own_with_set_local(db: str) -> None:
    with safeddl.psycopg.connect(db, policy=Policy(lock_timeout="1234ms"),
                                 autocommit=True) as conn:
        conn.execute("ALTER TABLE orders ADD COLUMN note text")
        assert conn.execute("SHOW lock_timeout").fetchone() == ("0",)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # the statement ran with the bound, in a transaction begun before it (BEGIN; SET LOCAL)
    assert _seen(db) == [("1234ms", True)]


def test_a_lock_timeout_in_a_transaction_reports_no_lock_it_never_got(
        db: str, caplog: pytest.LogCaptureFixture) -> None:
    policy = Policy(lock_timeout="300ms", long_lock_threshold="100ms")
    with psycopg.connect(db) as holder, safeddl.psycopg.connect(db, policy=policy) as conn:
        holder.execute("SELECT count(*) FROM orders")
        conn.execute("SELECT 1")
        with caplog.at_level(logging.INFO, logger="safeddl"), \
                pytest.raises(safeddl.LockTimeout) as caught:
            conn.execute("ALTER TABLE orders ADD COLUMN note text")
        assert holder.info.backend_pid in [b.pid for b in caught.value.blockers]
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")  # still aborted, as the server left it
        with caplog.at_level(logging.INFO, logger="safeddl"):
            conn.rollback()
        holder.rollback()
    assert "long-held-lock" not in caplog.text
    # and a lock it did get is still reported
    with safeddl.psycopg.connect(db, policy=policy) as conn, \
            caplog.at_level(logging.INFO, logger="safeddl"):
        conn.execute("SELECT 1")
        conn.execute("ALTER TABLE orders ADD COLUMN note text")
        conn.execute("SELECT pg_sleep(0.2)")
        conn.rollback()
    assert "long-held-lock" in caplog.text
