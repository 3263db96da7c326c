"""The lock queue: a dashboard session holds ACCESS SHARE in an open transaction.

Without safeddl an ``ALTER TABLE`` queues behind it and every reader that arrives
afterwards queues behind the ALTER. With safeddl the ALTER gives up after the lock
timeout with a LockTimeout naming the dashboard session, and the readers go on.
Every wait here is bounded (statement_timeout on helper sessions, thread joins with
timeouts, pytest-timeout), so a regression fails instead of hanging.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text

import safeddl
import safeddl.psycopg
from safeddl import Policy

pytestmark = [pytest.mark.timeout(90)]

LOCK_TIMEOUT_S = 0.5
MARGIN_S = 1.5  # scheduling slack on a busy machine
DASHBOARD_QUERY = "SELECT count(*) AS dashboard_total FROM orders"
ALTER = "ALTER TABLE orders ADD COLUMN note text"


@pytest.fixture
def db(safeddl_db: str) -> str:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total int)")
        conn.execute("INSERT INTO orders SELECT g, g FROM generate_series(1, 50000) g")
        conn.execute("ANALYZE orders")
    return safeddl_db


@pytest.fixture
def dashboard(db: str) -> Iterator[psycopg.Connection[Any]]:
    """A session in an open transaction that has read ``orders`` (holds ACCESS SHARE)."""
    conn = psycopg.connect(db, application_name="dashboard")
    conn.execute(DASHBOARD_QUERY)
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


class Reader(threading.Thread):
    """A plain reader that starts after ``delay`` and measures how long it waited."""

    def __init__(self, dsn: str, delay: float) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.delay = delay
        self.waited: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        time.sleep(self.delay)
        try:
            with psycopg.connect(self.dsn, options="-c statement_timeout=20s") as conn:
                started = time.monotonic()
                conn.execute("SELECT count(*) FROM orders")
                self.waited = time.monotonic() - started
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc


def _timed(action: Callable[[], object]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        action()
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def _column_exists(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM information_schema.columns "
                           "WHERE table_name = 'orders' AND column_name = 'note'").fetchone()
        return bool(row and row[0])


def _assert_names_dashboard(error: safeddl.LockTimeout, dashboard: psycopg.Connection[Any],
                            ) -> None:
    pids = [b.pid for b in error.blockers]
    assert dashboard.info.backend_pid in pids
    blocker = error.blockers[pids.index(dashboard.info.backend_pid)]
    assert blocker.application_name == "dashboard"
    assert blocker.mode == "AccessShareLock"
    assert "dashboard_total" in (blocker.query or "")
    message = str(error)
    assert str(dashboard.info.backend_pid) in message and "dashboard_total" in message
    assert "ACCESS EXCLUSIVE on orders" in message
    assert error.relation == "orders"
    assert isinstance(error.__cause__, psycopg.errors.LockNotAvailable)


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_guarded_alter_fails_fast_and_readers_go_on(db: str, dashboard: psycopg.Connection[Any],
                                                     autocommit: bool) -> None:
    policy = Policy(lock_timeout=f"{int(LOCK_TIMEOUT_S * 1000)}ms")
    with safeddl.psycopg.connect(db, policy=policy, autocommit=autocommit) as conn:
        reader = Reader(db, delay=0.15)
        reader.start()
        elapsed, error = _timed(lambda: conn.execute(ALTER))
        reader.join(30)
        assert isinstance(error, safeddl.LockTimeout), error
        assert elapsed < LOCK_TIMEOUT_S + MARGIN_S
        _assert_names_dashboard(error, dashboard)
        assert error.lock_timeout_ms == int(LOCK_TIMEOUT_S * 1000)
        assert reader.error is None and reader.waited is not None
        assert reader.waited < LOCK_TIMEOUT_S + MARGIN_S  # not blocked beyond the timeout
        if not autocommit:
            conn.rollback()
        with psycopg.Cursor(conn) as cursor:
            assert cursor.execute("SHOW lock_timeout").fetchone() == ("0",)
    assert not _column_exists(db)


def test_the_same_without_safeddl_hangs(db: str, dashboard: psycopg.Connection[Any]) -> None:
    """The control: an unguarded ALTER queues behind the dashboard and stalls readers."""
    with psycopg.connect(db, autocommit=True) as conn:
        alter_pid = conn.info.backend_pid
        outcome: dict[str, BaseException | None] = {}

        def alter() -> None:
            try:
                conn.execute(ALTER)
                outcome["error"] = None
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome["error"] = exc

        worker = threading.Thread(target=alter, daemon=True)
        worker.start()
        reader = Reader(db, delay=0.3)
        reader.start()
        reader.join(2.5)
        assert reader.is_alive(), "the reader should still be stuck behind the ALTER"
        with psycopg.connect(db, autocommit=True) as admin:  # end the experiment
            admin.execute("SELECT pg_cancel_backend(%s)", [alter_pid])
        worker.join(10)
        reader.join(10)
        assert isinstance(outcome.get("error"), psycopg.errors.QueryCanceled)
        assert reader.waited is not None and reader.waited > 2.0


def test_sqlalchemy_lock_timeout(db: str, safeddl_db_url: str,
                                 dashboard: psycopg.Connection[Any]) -> None:
    engine = create_engine(safeddl_db_url, pool_size=1, max_overflow=0)
    try:
        safeddl.install(engine, Policy(lock_timeout="400ms"))
        reader = Reader(db, delay=0.1)
        reader.start()

        def alter() -> None:
            with engine.begin() as conn:
                conn.execute(text(ALTER))

        elapsed, error = _timed(alter)
        reader.join(30)
        assert isinstance(error, safeddl.LockTimeout), error
        assert elapsed < 0.4 + MARGIN_S
        _assert_names_dashboard(error, dashboard)
        assert safeddl.runtime.errors.is_lock_timeout(error)
        assert reader.waited is not None and reader.waited < 0.4 + MARGIN_S
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1  # the pool is healthy
    finally:
        engine.dispose()
    assert not _column_exists(db)


def test_lock_timeout_on_dml_with_the_users_own_timeout(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as locker:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE orders IN EXCLUSIVE MODE")
        with safeddl.psycopg.connect(db) as conn:
            with psycopg.Cursor(conn) as cursor:
                cursor.execute("SET lock_timeout = '200ms'")
            with pytest.raises(safeddl.LockTimeout) as info:
                conn.execute("UPDATE orders SET total = 0 WHERE id = 1")
            assert locker.info.backend_pid in [b.pid for b in info.value.blockers]
            assert info.value.lock_timeout_ms is None  # not safeddl's bound
        locker.execute("ROLLBACK")


def test_nowait_errors_are_left_alone(db: str) -> None:
    with psycopg.connect(db) as locker:
        locker.execute("SELECT * FROM orders WHERE id = 1 FOR UPDATE")
        with safeddl.psycopg.connect(db) as conn:
            with pytest.raises(psycopg.errors.LockNotAvailable):
                conn.execute("SELECT * FROM orders WHERE id = 1 FOR UPDATE NOWAIT")


def test_preflight_fails_at_once_without_joining_the_queue(
        db: str, dashboard: psycopg.Connection[Any]) -> None:
    time.sleep(0.3)  # the dashboard's transaction is older than min_age
    policy = Policy(lock_timeout="5s", preflight={"enabled": True, "min_age": "200ms"})  # type: ignore[arg-type]
    with safeddl.psycopg.connect(db, policy=policy) as conn:
        elapsed, error = _timed(lambda: conn.execute(ALTER))
        assert isinstance(error, safeddl.PreflightBlocked), error
        assert elapsed < 1.0  # did not wait for the 5 s lock timeout
        assert dashboard.info.backend_pid in [b.pid for b in error.blockers]
        assert "pre-flight" in str(error)
        assert conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR


def test_preflight_waits_for_the_blocker_to_finish(db: str) -> None:
    holder = psycopg.connect(db, application_name="short report")
    holder.execute(DASHBOARD_QUERY)
    time.sleep(0.3)
    timer = threading.Timer(0.5, holder.rollback)
    timer.start()
    try:
        policy = Policy(preflight={"enabled": True, "min_age": "200ms", "wait": "5s"})  # type: ignore[arg-type]
        with safeddl.psycopg.connect(db, policy=policy) as conn:
            elapsed, error = _timed(lambda: conn.execute(ALTER))
            conn.commit()
        assert error is None
        assert 0.3 < elapsed < 5
    finally:
        timer.join(10)
        holder.close()
    assert _column_exists(db)
