"""Runtime defects found under odd settings and odd traffic, each against a real server:
durations beyond what PostgreSQL accepts, internal failures of the guard, the driver's
own error handling under the guard (lock timeouts, a rewrite's failure), the connection
left as it was after a refusal, row-lock blockers, and the helpers' arguments."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.errors
import pytest
from sqlalchemy import create_engine, exc, text

import safeddl
import safeddl.psycopg
from safeddl import Policy
from safeddl.runtime.errors import is_retryable
from safeddl.runtime.policy import PG_TIMEOUT_MAX_MS

pytestmark = [pytest.mark.timeout(120)]

BIG_ROWS = 20_000


@pytest.fixture
def db(safeddl_db: str) -> str:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, x int, n int)")
        conn.execute(f"INSERT INTO big SELECT g, g, nullif(g, 7) "
                     f"FROM generate_series(1, {BIG_ROWS}) g")
        conn.execute("CREATE TABLE rows (id int PRIMARY KEY, x int)")
        conn.execute("INSERT INTO rows SELECT g, g FROM generate_series(1, 10) g")
        conn.execute("ANALYZE big")
    return safeddl_db


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize("value", ["30d", "99999999999999999999d", "1" + "0" * 23, 10 ** 24,
                                   float("inf"), "2147483648ms"])
def test_durations_beyond_postgresqls_range_fail_at_start_up(value: object) -> None:
    with pytest.raises(safeddl.ConfigError, match="lock_timeout"):
        Policy(lock_timeout=value)
    with pytest.raises(safeddl.ConfigError, match="statement_timeout.create-index"):
        Policy(statement_timeout={"create-index": value})


@pytest.mark.parametrize(("key", "value"), [("small_table_rows", "1" * 5000),
                                            ("pg_version", "9" * 5000),
                                            ("long_lock_threshold", "9" * 400 + "d")])
def test_numbers_too_large_for_python_fail_at_start_up_naming_the_key(key: str,
                                                                      value: str) -> None:
    with pytest.raises(safeddl.ConfigError, match=key):
        Policy.from_strings({key: value}, "URL")


@pytest.mark.parametrize("value", ["30d", "1" + "0" * 24])
def test_a_url_key_beyond_the_range_fails_when_the_engine_is_created(safeddl_db_url: str,
                                                                     value: str) -> None:
    glue = "&" if "?" in safeddl_db_url else "?"
    with pytest.raises(safeddl.ConfigError, match="lock_timeout"):
        create_engine(safeddl_db_url + f"{glue}plugin=safeddl&safeddl_lock_timeout={value}")


def test_the_largest_accepted_lock_timeout_works_on_the_server(db: str) -> None:
    """The bound is PostgreSQL's: the largest value accepted at start-up is one every
    guarded DDL can set (one more millisecond is refused up front)."""
    policy = Policy(lock_timeout=f"{PG_TIMEOUT_MAX_MS}ms",
                    statement_timeout={"default": f"{PG_TIMEOUT_MAX_MS}ms"})
    with safeddl.psycopg.connect(db, policy=policy, autocommit=True) as conn:
        conn.execute("ALTER TABLE rows ADD COLUMN note text")
    with safeddl.psycopg.connect(db, policy=policy) as conn:
        conn.execute("ALTER TABLE rows ADD COLUMN other text")
        with psycopg.Cursor(conn) as cursor:
            row = cursor.execute("SHOW lock_timeout").fetchone()
        assert row is not None and row[0] == f"{PG_TIMEOUT_MAX_MS}ms"
        conn.commit()
    with pytest.raises(safeddl.ConfigError, match="2,147,483,647"):
        Policy(lock_timeout=f"{PG_TIMEOUT_MAX_MS + 1}ms")


def test_retry_and_job_lock_timeouts_are_bounded_too(db: str) -> None:
    with pytest.raises(safeddl.ConfigError, match="lock_timeout_cap"):
        safeddl.RetryPolicy(lock_timeout="1s", lock_timeout_cap="30d")
    with psycopg.connect(db, autocommit=True) as conn:
        with pytest.raises(safeddl.ConfigError, match="lock_timeout"):
            safeddl.backfill(conn, "rows", "x = x", "false", lock_timeout="30d")


# --------------------------------------------------------------------------- refusals


def test_a_refusal_leaves_a_non_autocommit_connection_as_it_was(db: str) -> None:
    """The refused CREATE INDEX needs a catalog read first, which opened a transaction;
    nothing of the caller's was sent, so following the refusal's advice (autocommit)
    must work at once."""
    with safeddl.psycopg.connect(db) as conn:
        assert not conn.autocommit
        with pytest.raises(safeddl.UnsafeStatement, match="autocommit"):
            conn.execute("CREATE INDEX big_x ON big (x)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        conn.autocommit = True  # ProgrammingError while a transaction is open
        conn.execute("CREATE INDEX big_x ON big (x)")  # sent as CREATE INDEX CONCURRENTLY
        row = conn.execute("SELECT indisvalid FROM pg_index "
                           "WHERE indexrelid = 'big_x'::regclass").fetchone()
        assert row == (True,)


def test_a_refusal_inside_the_callers_transaction_keeps_that_transaction(db: str) -> None:
    with safeddl.psycopg.connect(db) as conn:
        conn.execute("INSERT INTO rows VALUES (100, 100)")
        with pytest.raises(safeddl.UnsafeStatement):
            conn.execute("CREATE INDEX big_x ON big (x)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.commit()
    with psycopg.connect(db) as other:
        assert other.execute("SELECT x FROM rows WHERE id = 100").fetchone() == (100,)


# --------------------------------------------------------------------------- helpers' arguments


def _locked_tables(dsn: str, pid: int) -> set[str]:
    with psycopg.connect(dsn) as other:
        rows = other.execute("SELECT relation::regclass::text FROM pg_locks WHERE pid = %s "
                             "AND locktype = 'relation' AND mode = 'ShareRowExclusiveLock'",
                             [pid]).fetchall()
    return {row[0] for row in rows}


def test_a_declared_table_name_with_a_space_is_refused_not_read_as_schema_qualified(
        db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA victim")
        conn.execute("CREATE TABLE victim.x (id int)")
        conn.execute('CREATE TABLE "victim x" (id int)')
    with psycopg.connect(db) as conn:
        with pytest.raises(safeddl.ConfigError, match="'victim x' is not a table name"):
            with safeddl.transaction(conn, tables={"victim x": "SHARE ROW EXCLUSIVE"}):
                pass
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with safeddl.transaction(conn, tables={'"victim x"': "SHARE ROW EXCLUSIVE"}):
            assert _locked_tables(db, conn.info.backend_pid) == {'"victim x"'}


@pytest.mark.parametrize(("arguments", "named"), [
    ({"batch_size": "1; DROP TABLE rows"}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"batch_size": float("inf")}, "batch_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"attempts": "3"}, "attempts"),
    ({"max_batches": 1.5}, "max_batches"),
    ({"table": "victim x"}, "table"),
    ({"assignments": ""}, "assignments"),
    ({"pending": None}, "pending"),
])
def test_backfill_checks_every_argument_before_anything_is_sent(
        db: str, arguments: dict[str, Any], named: str) -> None:
    call: dict[str, Any] = {"table": "rows", "assignments": "x = -x", "pending": "x > 0",
                            **arguments}
    table, assignments, pending = call.pop("table"), call.pop("assignments"), call.pop("pending")
    with psycopg.connect(db, autocommit=True) as conn:
        with pytest.raises(safeddl.ConfigError, match=f"safeddl.backfill: {named}="):
            safeddl.backfill(conn, table, assignments, pending, **call)
        row = conn.execute("SELECT count(*) FROM rows WHERE x < 0").fetchone()
        assert row == (0,)  # nothing ran


def test_swap_in_checks_its_arguments_before_anything_is_sent(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        for arguments, named in [({"attempts": 2.5}, "attempts"), ({"load": 42}, "load"),
                                 ({"table": "rows x"}, "table"), ({"load": " "}, "load")]:
            call: dict[str, Any] = {"table": "rows", "load": "SELECT 1, 1", **arguments}
            with pytest.raises(safeddl.ConfigError, match=f"safeddl.swap_in: {named}="):
                safeddl.swap_in(conn, call.pop("table"), call.pop("load"), **call)
        row = conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'rows%%'").fetchone()
        assert row == (2,)  # rows and its primary key: no copy was created


# --------------------------------------------------------------------------- internal failures


@pytest.fixture
def broken_decision(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An internal failure of the guard's analysis (the kind of bug a catalog that does
    not know a table once caused)."""
    import safeddl.runtime.guard as guard_module

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyError("public.ch")

    monkeypatch.setattr(guard_module, "decide", broken)
    yield


@pytest.mark.parametrize("autocommit", [False, True])
def test_an_internal_failure_refuses_ddl_with_a_clear_error_and_logs_the_statement(
        db: str, broken_decision: None, autocommit: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    policy = Policy(small_table_rows=10_001 + autocommit)  # a Guard of its own: no cache
    statement = f"ALTER TABLE rows ADD COLUMN ch{int(autocommit)} int"
    with caplog.at_level(logging.ERROR, logger="safeddl"):
        with safeddl.psycopg.connect(db, policy=policy, autocommit=autocommit) as conn:
            with pytest.raises(safeddl.UnsafeStatement) as info:
                conn.execute(statement)
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert not isinstance(info.value, KeyError)
    assert info.value.rule == "unparsed-statement"
    message = str(info.value)
    assert "KeyError: 'public.ch'" in message and "unparsed_ddl" in message
    assert 'safeddl.allow("unparsed-statement"' in message
    assert any(statement in record.getMessage() and record.exc_info
               for record in caplog.records)
    with psycopg.connect(db) as other:  # it was not sent
        row = other.execute("SELECT count(*) FROM information_schema.columns "
                            "WHERE table_name = 'rows' AND column_name LIKE 'ch_'").fetchone()
        assert row == (0,)


def test_an_internal_failure_lets_dml_pass_and_allow_lets_ddl_through(
        db: str, broken_decision: None, safeddl_db_url: str) -> None:
    policy = Policy(small_table_rows=10_003)
    with safeddl.psycopg.connect(db, policy=policy) as conn:
        conn.execute("UPDATE rows SET x = -1 WHERE id = 1")
        with safeddl.allow("unparsed-statement", reason="checked by hand"):
            conn.execute("ALTER TABLE rows ADD COLUMN ch int")
        conn.commit()
    engine = create_engine(safeddl_db_url)
    safeddl.install(engine, Policy(small_table_rows=10_004))
    try:
        with engine.begin() as sa_conn:
            sa_conn.execute(text("UPDATE rows SET x = -2 WHERE id = 2"))
            with pytest.raises(safeddl.UnsafeStatement, match="KeyError"):
                sa_conn.execute(text("ALTER TABLE rows ADD COLUMN other int"))
    finally:
        engine.dispose()
    with psycopg.connect(db) as other:  # both updates ran and committed
        rows = other.execute("SELECT x FROM rows WHERE id IN (1, 2) ORDER BY id").fetchall()
        assert rows == [(-1,), (-2,)]
        row = other.execute("SELECT count(*) FROM information_schema.columns "
                            "WHERE table_name = 'rows' AND column_name = 'ch'").fetchone()
        assert row == (1,)


# --------------------------------------------------------------------------- the driver's errors


@pytest.fixture
def holder(db: str) -> Iterator[psycopg.Connection[Any]]:
    """A second session with an open transaction (what it locks is up to the test)."""
    conn = psycopg.connect(db)
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


def test_a_guarded_lock_timeout_is_still_psycopgs_lock_not_available(
        db: str, holder: psycopg.Connection[Any]) -> None:
    holder.execute("SELECT count(*) FROM big")  # ACCESS SHARE until it ends
    with safeddl.psycopg.connect(db, policy=Policy(lock_timeout="100ms")) as conn:
        try:
            conn.execute("ALTER TABLE big ADD COLUMN c int")
        except psycopg.errors.LockNotAvailable as error:  # the application's own handler
            caught: BaseException = error
        assert isinstance(caught, safeddl.LockTimeout)
        assert isinstance(caught, psycopg.errors.OperationalError)
        assert caught.sqlstate == "55P03"
        assert caught.diag.sqlstate == "55P03"  # the server's diagnostics are kept
        assert "lock timeout" in (caught.diag.message_primary or "")
        assert caught.blockers[0].pid == holder.info.backend_pid
        assert str(caught).startswith("safeddl: lock timeout after 100 ms")
        conn.rollback()


def test_the_applications_own_lock_timeout_on_dml_still_raises_lock_not_available(
        db: str, holder: psycopg.Connection[Any]) -> None:
    holder.execute("LOCK TABLE rows IN EXCLUSIVE MODE")
    with safeddl.psycopg.connect(db) as conn:
        conn.execute("SET lock_timeout = '100ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable) as info:
            conn.execute("UPDATE rows SET x = 0 WHERE id = 1")
        assert isinstance(info.value, safeddl.LockTimeout)
        conn.rollback()


def test_under_sqlalchemy_a_lock_timeout_is_the_operational_error_it_would_raise(
        db: str, safeddl_db_url: str, holder: psycopg.Connection[Any]) -> None:
    holder.execute("SELECT count(*) FROM big")
    engine = create_engine(safeddl_db_url)
    safeddl.install(engine, Policy(lock_timeout="100ms"))
    try:
        with engine.connect() as conn:
            try:
                conn.execute(text("ALTER TABLE big ADD COLUMN c int"))
            except exc.OperationalError as error:  # the application's own handler
                caught: BaseException = error
                assert error.orig is not None
                assert getattr(error.orig, "sqlstate", None) == "55P03"
            assert isinstance(caught, safeddl.LockTimeout)
            assert caught.blockers[0].pid == holder.info.backend_pid
            assert str(caught).startswith("safeddl: lock timeout after 100 ms")
            conn.rollback()
            assert conn.execute(text("SELECT 1")).scalar() == 1  # the connection is usable
    finally:
        engine.dispose()


def _unguarded_failure(dsn: str, statement: str) -> psycopg.Error:
    with psycopg.connect(dsn) as conn:
        try:
            conn.execute(statement)
        except psycopg.Error as error:
            conn.rollback()
            return error
    raise AssertionError(f"{statement} did not fail")


def _constraints(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT conname FROM pg_constraint "
                            "WHERE conrelid = 'big'::regclass ORDER BY 1").fetchall()
        indexes = conn.execute("SELECT indexrelid::regclass::text FROM pg_index "
                               "WHERE indrelid = 'big'::regclass ORDER BY 1").fetchall()
    return [row[0] for row in rows + indexes]


@pytest.mark.parametrize("statement", ["ALTER TABLE big ALTER COLUMN n SET NOT NULL",
                                       "ALTER TABLE big DROP CONSTRAINT big_pkey, "
                                       "ADD PRIMARY KEY (n)"])
def test_a_rewrite_that_finds_nulls_fails_like_the_original_statement(
        db: str, statement: str) -> None:
    if "PRIMARY KEY" in statement:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("ALTER TABLE big DROP CONSTRAINT big_pkey")
        statement = "ALTER TABLE big ADD PRIMARY KEY (n)"
    before = _constraints(db)
    original = _unguarded_failure(db, statement)
    assert original.sqlstate == "23502"
    with safeddl.psycopg.connect(db, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.NotNullViolation) as info:
            conn.execute(statement)
    failure = info.value
    assert failure.sqlstate == "23502"
    assert str(failure).splitlines()[0] == str(original).splitlines()[0]
    assert "is_not_null" not in str(failure).splitlines()[0]
    assert isinstance(failure, safeddl.SafeDDLError)
    assert isinstance(failure.__cause__, psycopg.errors.CheckViolation)  # the step's own
    # the plan resumes rather than undoing (issue: rewrites survive faults): it says what
    # is left, and once the rows are fixed the same statement finishes the job
    assert isinstance(failure, safeddl.PlanInterrupted)
    assert "fix them, then run the same statement again" in str(failure)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE big SET n = 0 WHERE n IS NULL")
    with safeddl.psycopg.connect(db, autocommit=True) as conn:
        conn.execute(statement)
    after = _constraints(db)
    assert not any("is_not_null" in name for name in after), after  # no helper left
    assert set(before) <= set(after)


def test_under_sqlalchemy_a_rewrite_that_finds_nulls_is_an_integrity_error(
        db: str, safeddl_db_url: str) -> None:
    engine = create_engine(safeddl_db_url, isolation_level="AUTOCOMMIT")
    safeddl.install(engine)
    try:
        with engine.connect() as conn:
            with pytest.raises(exc.IntegrityError) as info:
                conn.execute(text("ALTER TABLE big ALTER COLUMN n SET NOT NULL"))
    finally:
        engine.dispose()
    assert getattr(info.value.orig, "sqlstate", None) == "23502"
    assert "contains null values" in str(info.value.orig).splitlines()[0]


# --------------------------------------------------------------------------- row-lock blockers

ROW_POLICY = Policy(lock_timeout="200ms", guard_dml_lock_timeout=True)


def test_a_row_lock_timeout_names_the_session_holding_the_row(
        db: str, holder: psycopg.Connection[Any]) -> None:
    holder.execute("UPDATE rows SET x = 5 WHERE id = 1")  # uncommitted: holds the row
    with safeddl.psycopg.connect(db, policy=ROW_POLICY) as conn:
        with pytest.raises(safeddl.LockTimeout) as info:
            conn.execute("UPDATE rows SET x = 0 WHERE id = 1")
        conn.rollback()
    timeout = info.value
    assert [b.pid for b in timeout.blockers] == [holder.info.backend_pid]
    assert timeout.blockers[0].row == "(0,1)" and timeout.blockers[0].certain
    assert timeout.row == "(0,1)" and timeout.relation == "rows"
    message = str(timeout)
    assert "waited for a lock on row (0,1) of rows" in message
    assert f"pid {holder.info.backend_pid}" in message and "holds the lock on row (0,1)" in message
    assert "UPDATE rows SET x = 5 WHERE id = 1" in message  # what the holder ran
    assert "No session" not in message


def test_row_lock_blockers_include_every_shared_holder_and_sessions_queued_ahead(
        db: str, holder: psycopg.Connection[Any]) -> None:
    holder.execute("SELECT * FROM rows WHERE id = 2 FOR SHARE")
    with psycopg.connect(db) as second, psycopg.connect(db, autocommit=True) as third:
        second.execute("SELECT * FROM rows WHERE id = 2 FOR SHARE")  # xmax: a multixact
        queued = threading.Thread(  # waits for the row, ahead of the guarded statement
            target=lambda: _ignore_errors(third, "SET lock_timeout = '5s'",
                                          "DELETE FROM rows WHERE id = 2"))
        queued.start()
        _wait_until_waiting(db, third.info.backend_pid)
        with safeddl.psycopg.connect(db, policy=ROW_POLICY) as conn:
            with pytest.raises(safeddl.LockTimeout) as info:
                conn.execute("UPDATE rows SET x = 0 WHERE id = 2")
            conn.rollback()
        second.rollback()
        holder.rollback()
        queued.join(10)
        pids = (holder.info.backend_pid, second.info.backend_pid, third.info.backend_pid)
    holding = {b.pid for b in info.value.blockers if b.granted}
    ahead = {b.pid for b in info.value.blockers if not b.granted}
    assert holding == {pids[0], pids[1]}
    assert ahead == {pids[2]}
    message = str(info.value)
    assert "waited for a lock on row (0,2) of rows" in message
    assert "is queued ahead for the lock on row (0,2) of public.rows" in message


def test_a_unique_check_wait_names_the_writers_of_the_table_as_candidates(
        db: str, holder: psycopg.Connection[Any]) -> None:
    holder.execute("INSERT INTO rows VALUES (50, 50)")  # uncommitted: the key is taken
    with safeddl.psycopg.connect(db, policy=ROW_POLICY) as conn:
        with pytest.raises(safeddl.LockTimeout) as info:
            conn.execute("INSERT INTO rows VALUES (50, 51)")
        conn.rollback()
    assert [(b.pid, b.certain) for b in info.value.blockers] == [
        (holder.info.backend_pid, False)]
    assert "may hold the row" in str(info.value)


def test_under_sqlalchemy_with_the_applications_lock_timeout_a_row_wait_names_its_holder(
        db: str, safeddl_db_url: str, holder: psycopg.Connection[Any]) -> None:
    holder.execute("DELETE FROM rows WHERE id = 3")
    engine = create_engine(safeddl_db_url)
    safeddl.install(engine)
    try:
        with engine.connect() as conn:
            conn.execute(text("SET lock_timeout = '200ms'"))
            with pytest.raises(exc.OperationalError) as info:
                conn.execute(text("UPDATE rows SET x = 0 WHERE id = 3"))
            conn.rollback()
    finally:
        engine.dispose()
    assert isinstance(info.value, safeddl.LockTimeout)
    assert [b.pid for b in info.value.blockers] == [holder.info.backend_pid]


def _ignore_errors(conn: psycopg.Connection[Any], *statements: str) -> None:
    try:
        for statement in statements:
            conn.execute(statement)
    except psycopg.Error:
        pass


def _wait_until_waiting(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(500):
            row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                               [pid]).fetchone()
            if row is not None and row[0] == "Lock":
                return
            conn.execute("SELECT pg_sleep(0.01)")
    raise AssertionError(f"pid {pid} never waited for a lock")


def test_retries_exhausted_by_lock_timeouts_is_still_the_drivers_lock_timeout(
        db: str, safeddl_db_url: str, holder: psycopg.Connection[Any]) -> None:
    holder.execute("SELECT count(*) FROM big")
    policy = Policy(lock_timeout="50ms")

    def migrate(conn: Any) -> None:
        statement = "ALTER TABLE big ADD COLUMN c int"
        conn.execute(text(statement) if hasattr(conn, "exec_driver_sql") else statement)

    with psycopg.connect(db, autocommit=True) as conn:
        safeddl.psycopg.install(conn, policy)
        with pytest.raises(psycopg.errors.LockNotAvailable) as info:
            safeddl.run_transaction(conn, migrate, attempts=2, backoff="1ms")
    assert isinstance(info.value, safeddl.RetriesExhausted)
    assert info.value.sqlstate == "55P03" and len(info.value.failures) == 2
    assert str(info.value).startswith("safeddl: gave up on")
    assert not is_retryable(info.value)  # an outer retry does not multiply the attempts

    engine = create_engine(safeddl_db_url)
    safeddl.install(engine, policy)
    try:
        with pytest.raises(exc.OperationalError) as sa_info:
            safeddl.run_transaction(engine, migrate, attempts=2, backoff="1ms")
    finally:
        engine.dispose()
    assert isinstance(sa_info.value, safeddl.RetriesExhausted)
    assert getattr(sa_info.value.orig, "sqlstate", None) == "55P03"


def test_under_sqlalchemy_a_rewritten_statement_that_times_out_is_an_operational_error(
        db: str, safeddl_db_url: str, holder: psycopg.Connection[Any]) -> None:
    """The concurrent build a CREATE INDEX is rewritten into waits for the writer's open
    transaction until the lock timeout."""
    holder.execute("INSERT INTO big (id) VALUES (-1)")  # ROW EXCLUSIVE, open
    engine = create_engine(safeddl_db_url, isolation_level="AUTOCOMMIT")
    safeddl.install(engine, Policy(small_table_rows=0, lock_timeout="200ms"))
    try:
        with engine.connect() as conn:
            with pytest.raises(exc.OperationalError) as info:
                conn.execute(text("CREATE INDEX big_x ON big (x)"))
            with pytest.raises(exc.OperationalError) as step_info:  # its first step waits
                conn.execute(text("ALTER TABLE big ALTER COLUMN x SET NOT NULL"))
    finally:
        engine.dispose()
    for caught in (info.value, step_info.value):
        assert isinstance(caught, safeddl.LockTimeout)
        assert getattr(caught.orig, "sqlstate", None) == "55P03"
    assert isinstance(step_info.value, safeddl.LockTimeout)
    assert "NOT VALID" in step_info.value.statement  # the step that timed out
