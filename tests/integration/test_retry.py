"""Retrying units of work against a real server: a second session holds a table lock
(for a while, or for good), two threads deadlock, a unique key is violated.

Every wait is bounded: the lock holders let go on a timer or when the test ends, the
threads are joined with timeouts, the server breaks deadlocks after 100 ms, and
pytest-timeout bounds each test.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

import safeddl
import safeddl.psycopg
from safeddl import Policy
from safeddl.runtime.errors import RetriesExhausted

pytestmark = [pytest.mark.timeout(60)]

GUARDED = Policy(lock_timeout="200ms", guard_dml_lock_timeout=True)
HOLD_S = 1.0
MARGIN_S = 2.0  # scheduling slack on a busy machine
QUICK = {"backoff": "20ms", "max_backoff": "100ms"}


@pytest.fixture
def db(safeddl_db: str) -> str:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)")
        conn.execute("INSERT INTO accounts VALUES (1, 100), (2, 100)")
        conn.execute("CREATE TABLE events (id serial PRIMARY KEY, note text NOT NULL)")
        conn.execute("CREATE TABLE left_side (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute("CREATE TABLE right_side (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute("INSERT INTO left_side VALUES (1, 0)")
        conn.execute("INSERT INTO right_side VALUES (1, 0)")
        database = conn.execute("SELECT current_database()").fetchone()
        assert database is not None
        conn.execute(f'ALTER DATABASE "{database[0]}" SET deadlock_timeout = \'100ms\'')
    return safeddl_db


def _engine(url: str, policy: Policy | None) -> Iterator[Engine]:
    engine = create_engine(url, pool_size=2, max_overflow=0, pool_timeout=10)
    if policy is not None:
        safeddl.install(engine, policy)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def guarded(db: str, safeddl_db_url: str) -> Iterator[Engine]:
    """An engine with safeddl installed: lock waits of every statement bounded by 200 ms."""
    yield from _engine(safeddl_db_url, GUARDED)


@pytest.fixture
def plain(db: str, safeddl_db_url: str) -> Iterator[Engine]:
    """An engine without safeddl: errors arrive as SQLAlchemy's OperationalError."""
    yield from _engine(safeddl_db_url, None)


@contextmanager
def holding(dsn: str, table: str, release_after: float | None = None,
            ) -> Iterator[psycopg.Connection[Any]]:
    """Another session holding ACCESS EXCLUSIVE on ``table``, until ``release_after``
    seconds have passed (None: until the block ends)."""
    holder = psycopg.connect(dsn, application_name="lock holder")
    holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    timer = threading.Timer(release_after, holder.rollback) if release_after else None
    if timer is not None:
        timer.start()
    try:
        yield holder
    finally:
        if timer is not None:
            timer.cancel()
            timer.join(10)
        holder.rollback()
        holder.close()


def scalar(dsn: str, sql: str) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "safeddl" and r.levelno == logging.WARNING
            and "running it again" in r.getMessage()]


# --------------------------------------------------------------------------- lock timeouts


def test_retries_until_the_holder_lets_go_and_commits_exactly_once(
        db: str, guarded: Engine, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    @safeddl.retrying(attempts=30, max_time="15s", **QUICK)
    def record_payment(conn: Connection, note: str) -> int:
        calls.append(1)
        # written before the statement that waits: must not be kept twice
        conn.execute(text("INSERT INTO events (note) VALUES (:note)"), {"note": note})
        conn.execute(text("UPDATE accounts SET balance = balance + 10 WHERE id = 1"))
        return len(calls)

    with holding(db, "accounts", release_after=HOLD_S) as holder:
        holder_pid = holder.info.backend_pid
        started = time.monotonic()
        result = record_payment(guarded, "payment 1")
        elapsed = time.monotonic() - started

    assert len(calls) >= 2, "the first attempt cannot have succeeded while the lock was held"
    assert result == len(calls)
    assert HOLD_S - 0.3 < elapsed < HOLD_S + MARGIN_S
    assert scalar(db, "SELECT count(*) FROM events WHERE note = 'payment 1'") == 1
    assert scalar(db, "SELECT balance FROM accounts WHERE id = 1") == 110
    warnings = retry_warnings(caplog)
    assert len(warnings) == len(calls) - 1
    assert all("lock timeout" in w and f"pid {holder_pid}" in w for w in warnings)
    assert any("lock holder" in r.getMessage() for r in caplog.records)  # the blocker's name


def test_gives_up_after_the_attempts_with_the_blockers(db: str, guarded: Engine) -> None:
    calls: list[int] = []

    def unit(conn: Connection) -> None:
        calls.append(1)
        conn.execute(text("INSERT INTO events (note) VALUES ('never kept')"))
        conn.execute(text("UPDATE accounts SET balance = 0 WHERE id = 2"))

    with holding(db, "accounts") as holder:
        started = time.monotonic()
        with pytest.raises(RetriesExhausted) as info:
            safeddl.run_transaction(guarded, unit, attempts=3, **QUICK)
        elapsed = time.monotonic() - started
        error = info.value
        assert len(calls) == 3 and len(error.failures) == 3
        assert [f.number for f in error.failures] == [1, 2, 3]
        assert all(f.reason == "lock timeout" and f.sqlstate == "55P03" for f in error.failures)
        assert all(holder.info.backend_pid in f.blocking_pids for f in error.failures)
        assert [b.pid for b in error.blockers] == [holder.info.backend_pid]
        assert error.blockers[0].mode == "AccessExclusiveLock"
        assert isinstance(error.__cause__, safeddl.LockTimeout)
        assert error.__cause__ is error.failures[-1].error
        assert isinstance(error, safeddl.SafeDDLError)
        message = str(error)
        assert "unit() after 3 attempts" in message and "the limit is 3 attempts" in message
        assert str(holder.info.backend_pid) in message and "lock holder" in message
        assert "attempts=..." in message
    assert elapsed < 3 * (0.2 + 0.1) + MARGIN_S
    assert scalar(db, "SELECT count(*) FROM events") == 0
    assert scalar(db, "SELECT balance FROM accounts WHERE id = 2") == 100


def test_gives_up_when_the_time_is_up(db: str, guarded: Engine) -> None:
    calls: list[int] = []

    def unit(conn: Connection) -> None:
        calls.append(1)
        conn.execute(text("SELECT count(*) FROM accounts"))

    with holding(db, "accounts"):
        started = time.monotonic()
        with pytest.raises(RetriesExhausted) as info:
            safeddl.run_transaction(guarded, unit, attempts=1000, max_time="1s", **QUICK)
        elapsed = time.monotonic() - started
    assert 2 <= len(calls) < 1000
    assert "max_time 1 s" in str(info.value)
    assert elapsed < 1.0 + 0.2 + MARGIN_S


def test_lock_timeout_grows_per_attempt_up_to_the_cap(db: str, plain: Engine) -> None:
    """Unguarded engine: the driver's 55P03 arrives wrapped by SQLAlchemy and is retried;
    each attempt sees its own lock_timeout, and nothing leaks into the pool."""
    seen: list[str] = []

    def unit(conn: Connection) -> None:
        seen.append(str(conn.exec_driver_sql("SHOW lock_timeout").scalar()))
        conn.execute(text("SELECT count(*) FROM accounts"))

    with holding(db, "accounts"), pytest.raises(RetriesExhausted) as info:
        safeddl.run_transaction(plain, unit, attempts=4, lock_timeout="100ms",
                                lock_timeout_cap="400ms", **QUICK)
    assert seen == ["100ms", "200ms", "400ms", "400ms"]
    failures = info.value.failures
    assert [f.lock_timeout_ms for f in failures] == [100, 200, 400, 400]
    assert all(0.08 < f.seconds < f.lock_timeout_ms / 1000 + MARGIN_S for f in failures
               if f.lock_timeout_ms)
    assert isinstance(info.value.__cause__, OperationalError)
    assert isinstance(info.value.__cause__.orig, psycopg.errors.LockNotAvailable)
    assert "not guarded by safeddl" in str(info.value)
    for _ in range(2):  # both pooled connections
        with plain.connect() as conn:
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "0"


def test_growing_lock_timeout_also_bounds_the_guarded_ddl(db: str, safeddl_db_url: str) -> None:
    """The guard would bound the ALTER by its policy's 3 s; the retry's schedule wins."""
    for engine in _engine(safeddl_db_url, Policy(lock_timeout="3s")):
        with holding(db, "accounts") as holder:
            started = time.monotonic()
            with pytest.raises(RetriesExhausted) as info:
                safeddl.run_transaction(
                    engine, lambda conn: conn.execute(text("ALTER TABLE accounts ADD COLUMN note text")),
                    attempts=3, lock_timeout="100ms", lock_timeout_cap="200ms", **QUICK)
            elapsed = time.monotonic() - started
            errors = info.value.errors
            assert all(isinstance(e, safeddl.LockTimeout) for e in errors)
            assert [e.lock_timeout_ms for e in errors] == [100, 200, 200]  # type: ignore[attr-defined]
            assert all(holder.info.backend_pid in f.blocking_pids for f in info.value.failures)
        assert elapsed < 3.0  # the policy's 3 s never applied
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "0"


# --------------------------------------------------------------------------- other errors


def test_deadlock_is_retried_and_both_units_commit_once(
        db: str, plain: Engine, caplog: pytest.LogCaptureFixture) -> None:
    barrier = threading.Barrier(2, timeout=10)
    calls: dict[str, int] = {"forward": 0, "backward": 0}
    pids: dict[str, list[int]] = {"forward": [], "backward": []}  # per attempt
    errors: list[BaseException] = []

    def worker(name: str, first: str, second: str) -> None:
        def unit(conn: Connection) -> None:
            calls[name] += 1
            pids[name].append(int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()))
            conn.execute(text(f"UPDATE {first} SET n = n + 1 WHERE id = 1"))
            if calls[name] == 1:
                barrier.wait()  # both hold their first row: the opposite order deadlocks
            conn.execute(text(f"UPDATE {second} SET n = n + 1 WHERE id = 1"))

        try:
            safeddl.run_transaction(plain, unit, attempts=5, **QUICK)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=("forward", "left_side", "right_side")),
               threading.Thread(target=worker, args=("backward", "right_side", "left_side"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert sorted(calls.values()) == [1, 2], calls  # one victim, retried once
    assert scalar(db, "SELECT n FROM left_side") == 2
    assert scalar(db, "SELECT n FROM right_side") == 2
    warnings = retry_warnings(caplog)
    assert len(warnings) == 1 and "deadlock" in warnings[0] and "40P01" in warnings[0]
    survivor, victim = ("forward", "backward") if calls["forward"] == 1 else ("backward", "forward")
    in_the_way = warnings[0].split("in the way: ")[1].split(" (")[0]  # read from the DETAIL
    assert in_the_way in {f"pid {pid}" for pid in pids[survivor]}
    # the victim's deadlocked session is not the one in the way (its retry may run on the
    # survivor's pooled connection, so only its first attempt counts)
    assert in_the_way != f"pid {pids[victim][0]}"


def test_serialization_failure_is_retried_with_a_fresh_snapshot(db: str, plain: Engine) -> None:
    """REPEATABLE READ: the row changed after this transaction's snapshot was taken, so
    its UPDATE fails with 40001; the next attempt reads the new value."""
    repeatable = plain.execution_options(isolation_level="REPEATABLE READ")
    seen: list[int] = []

    def add_interest(conn: Connection) -> None:
        seen.append(int(conn.execute(text("SELECT balance FROM accounts WHERE id = 1"))
                        .scalar_one()))
        if len(seen) == 1:  # someone else changes the row after our snapshot
            with psycopg.connect(db) as other:
                other.execute("UPDATE accounts SET balance = balance + 50 WHERE id = 1")
        conn.execute(text("UPDATE accounts SET balance = :b WHERE id = 1"),
                     {"b": seen[-1] * 2})

    safeddl.run_transaction(repeatable, add_interest, attempts=3, **QUICK)
    assert seen == [100, 150]
    assert scalar(db, "SELECT balance FROM accounts WHERE id = 1") == 300  # no lost update


def test_non_retryable_errors_propagate_at_once(db: str, guarded: Engine) -> None:
    calls: list[int] = []

    def unit(conn: Connection) -> None:
        calls.append(1)
        conn.execute(text("INSERT INTO accounts VALUES (1, 0)"))  # the key exists

    with pytest.raises(IntegrityError) as info:
        safeddl.run_transaction(guarded, unit, attempts=5)
    assert isinstance(info.value.orig, psycopg.errors.UniqueViolation)
    assert calls == [1]


# --------------------------------------------------------------------------- autocommit


def test_statement_in_autocommit_is_retried_on_its_own(
        db: str, safeddl_db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    index = "CREATE INDEX CONCURRENTLY accounts_balance ON accounts (balance)"
    engine = create_engine(safeddl_db_url, pool_size=1, max_overflow=0, pool_timeout=10)
    try:
        safeddl.install(engine, GUARDED)
        with holding(db, "accounts", release_after=HOLD_S):
            safeddl.retry_statement(engine, index, attempts=30, max_time="15s",
                                    lock_timeout="150ms", **QUICK)
        assert len(retry_warnings(caplog)) >= 1
        assert "CREATE INDEX CONCURRENTLY" in retry_warnings(caplog)[0]
        assert scalar(db, "SELECT count(*) FROM pg_index WHERE indrelid = 'accounts'::regclass "
                          "AND indisvalid AND NOT indisprimary") == 1
        with engine.connect() as conn:  # the one pooled connection: its setting was put back
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "0"
    finally:
        engine.dispose()


def test_inside_an_open_transaction_the_enclosing_unit_retries(db: str, guarded: Engine) -> None:
    outer_calls: list[int] = []
    inner_calls: list[int] = []

    def inner(conn: Connection) -> None:
        inner_calls.append(1)
        conn.execute(text("UPDATE accounts SET balance = balance - 5 WHERE id = 2"))

    def outer(conn: Connection) -> None:
        outer_calls.append(1)
        conn.execute(text("INSERT INTO events (note) VALUES ('outer')"))
        safeddl.run_transaction(conn, inner, attempts=10)  # runs once, in this transaction

    with holding(db, "accounts", release_after=HOLD_S):
        # a lone statement in an open transaction is not retried: one wait, then the error
        with guarded.begin() as conn:
            started = time.monotonic()
            with pytest.raises(safeddl.LockTimeout):
                safeddl.retry_statement(conn, "LOCK TABLE accounts IN SHARE MODE", attempts=10)
            assert time.monotonic() - started < 0.2 + MARGIN_S / 2
        safeddl.run_transaction(guarded, outer, attempts=30, max_time="15s", **QUICK)
    assert len(outer_calls) >= 2 and inner_calls == outer_calls
    assert scalar(db, "SELECT count(*) FROM events WHERE note = 'outer'") == 1
    assert scalar(db, "SELECT balance FROM accounts WHERE id = 2") == 95


# --------------------------------------------------------------------------- psycopg


def test_psycopg_attempts_with_a_connection_factory(db: str) -> None:
    def connect() -> psycopg.Connection[Any]:
        return safeddl.psycopg.connect(db, policy=GUARDED)

    numbers: list[int] = []
    with holding(db, "accounts", release_after=HOLD_S) as holder:
        holder_pid = holder.info.backend_pid
        for attempt in safeddl.attempts(connect, attempts=30, max_time="15s", **QUICK):
            with attempt as conn:
                numbers.append(attempt.number)
                assert conn.info.backend_pid != holder_pid
                conn.execute("INSERT INTO events (note) VALUES ('from psycopg')")
                conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
    assert len(numbers) >= 2 and numbers == list(range(1, len(numbers) + 1))
    assert scalar(db, "SELECT count(*) FROM events WHERE note = 'from psycopg'") == 1
    assert scalar(db, "SELECT balance FROM accounts WHERE id = 1") == 101


def test_psycopg_connection_and_dsn_targets(db: str) -> None:
    calls: list[int] = []

    def duplicate(conn: psycopg.Connection[Any]) -> None:
        calls.append(1)
        conn.execute("INSERT INTO accounts VALUES (2, 0)")

    with psycopg.connect(db) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):
            safeddl.run_transaction(conn, duplicate)
        assert calls == [1]
        # the connection is usable again, and each unit is its own committed transaction
        add: Callable[[psycopg.Connection[Any]], object] = lambda c: c.execute(
            "INSERT INTO events (note) VALUES ('psycopg connection')")
        safeddl.run_transaction(conn, add)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert scalar(db, "SELECT count(*) FROM events WHERE note = 'psycopg connection'") == 1
    total = safeddl.run_transaction(
        db, lambda c: c.execute("SELECT sum(balance) FROM accounts").fetchone()[0])
    assert total == 200


def test_psycopg_statement_in_autocommit(db: str) -> None:
    """An idle connection outside autocommit is switched for the statement (a concurrent
    build refuses to run in a transaction block) and back; its lock_timeout is put back."""
    with psycopg.connect(db) as conn:
        conn.execute("SET lock_timeout = '5s'")
        conn.commit()
        safeddl.retry_statement(conn, "CREATE INDEX CONCURRENTLY events_note ON events (note)",
                                lock_timeout="150ms")
        assert conn.autocommit is False
        assert conn.execute("SHOW lock_timeout").fetchone() == ("5s",)
        conn.rollback()
    assert scalar(db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'events_note'::regclass")
