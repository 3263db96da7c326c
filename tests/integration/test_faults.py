"""Faults in the middle of a rewrite plan, against a real server: for every rewrite plan,
the guarded session's backend is killed at a step while it waits for its lock and while
the step runs, and the server is restarted during a long step; then the statement as
written runs again through the guard, and must reach the catalog end state of the
original statement run unguarded (constraints with ``convalidated``, indexes with
``indisvalid`` and their definitions, ``attnotnull``, no helper objects). Two to four
sessions running the same guarded statement at once must all end well too.

The counts (faults injected, faults that hit the intended point, faults after which one
rerun converged) are printed at the end of the module (``-s`` shows them) and asserted.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

import safeddl
import safeddl.psycopg
from safeddl import Policy
from safeddl.runtime.guard import NOOP
from safeddl.testing.server import PostgresServer, ServerError, fresh_database, start_server

pytestmark = [pytest.mark.timeout(240)]

ROWS = 200_000
POLICY = Policy(small_table_rows=0, lock_timeout="5s", actions={"drop-index": "rewrite"})

SOURCE = f"""
DROP SCHEMA public CASCADE;
CREATE SCHEMA public;
CREATE TABLE parent (id int PRIMARY KEY);
INSERT INTO parent SELECT g FROM generate_series(1, 100) g;
CREATE TABLE big_src AS
  SELECT g AS id, g AS x, 1 + g % 100 AS parent_id, repeat(md5(g::text), 3) AS note
  FROM generate_series(1, {ROWS}) g;
"""
RESET = """
DROP TABLE IF EXISTS big;
CREATE TABLE big AS TABLE big_src;
"""


@dataclass(frozen=True)
class Fault:
    sql: str  # the statement as written
    step: str  # text that identifies the step in the guard's "rewrite step" log line
    how: str  # "waiting" (for its lock) | "running" | "restart" (the server, while running)
    prepare: str = ""  # run on the fresh table first (unguarded)

    @property
    def id(self) -> str:
        return f"{self.sql.split(' big ', 1)[-1][:28]}|{self.step}|{self.how}"


INDEX = "CREATE INDEX big_x ON big (x)"
FOREIGN_KEY = "ALTER TABLE big ADD FOREIGN KEY (parent_id) REFERENCES parent"
CHECK = "ALTER TABLE big ADD CONSTRAINT big_x_positive CHECK (x > 0)"
NOT_NULL = "ALTER TABLE big ALTER COLUMN x SET NOT NULL"
UNIQUE = "ALTER TABLE big ADD UNIQUE (id)"
PRIMARY_KEY = "ALTER TABLE big ADD PRIMARY KEY (id)"
REINDEX = "REINDEX INDEX big_x"

FAULTS = [
    Fault(INDEX, "CREATE INDEX CONCURRENTLY", "waiting"),
    Fault(INDEX, "CREATE INDEX CONCURRENTLY", "running"),
    Fault(FOREIGN_KEY, "NOT VALID", "waiting"),
    Fault(FOREIGN_KEY, "VALIDATE", "waiting"),
    Fault(FOREIGN_KEY, "VALIDATE", "running"),
    Fault(CHECK, "NOT VALID", "waiting"),
    Fault(CHECK, "VALIDATE", "waiting"),
    Fault(CHECK, "VALIDATE", "running"),
    Fault(NOT_NULL, "NOT VALID", "waiting"),
    Fault(NOT_NULL, "VALIDATE", "waiting"),
    Fault(NOT_NULL, "VALIDATE", "running"),
    Fault(NOT_NULL, "SET NOT NULL", "waiting"),
    Fault(NOT_NULL, "DROP CONSTRAINT", "waiting"),
    Fault(UNIQUE, "CREATE UNIQUE INDEX", "waiting"),
    Fault(UNIQUE, "CREATE UNIQUE INDEX", "running"),
    Fault(UNIQUE, "USING INDEX", "waiting"),
    Fault(PRIMARY_KEY, "CREATE UNIQUE INDEX", "running"),
    Fault(PRIMARY_KEY, "NOT VALID", "waiting"),
    Fault(PRIMARY_KEY, "VALIDATE", "running"),
    Fault(PRIMARY_KEY, "SET NOT NULL", "waiting"),
    Fault(PRIMARY_KEY, "DROP CONSTRAINT", "waiting"),
    Fault(PRIMARY_KEY, "USING INDEX", "waiting"),
    Fault(REINDEX, "REINDEX", "running", prepare="CREATE INDEX big_x ON big (x)"),
    Fault(REINDEX, "REINDEX", "waiting", prepare="CREATE INDEX big_x ON big (x)"),
    Fault("DROP INDEX big_x", "DROP INDEX CONCURRENTLY", "waiting",
          prepare="CREATE INDEX big_x ON big (x)"),
]
RESTARTS = [
    Fault(INDEX, "CREATE INDEX CONCURRENTLY", "restart"),
    Fault(FOREIGN_KEY, "VALIDATE", "restart"),
    Fault(NOT_NULL, "VALIDATE", "restart"),
    Fault(PRIMARY_KEY, "CREATE UNIQUE INDEX", "restart"),
]

COUNTS: collections.Counter[str] = collections.Counter()


def end_state(dsn: str) -> dict[str, Any]:
    """What a rerun must leave exactly as the original statement does."""
    with psycopg.connect(dsn) as conn:
        def rows(query: str) -> list[tuple[Any, ...]]:
            return sorted(conn.execute(query).fetchall())

        return {
            "constraints": rows(
                "SELECT conname, contype, convalidated, pg_get_constraintdef(oid) "
                "FROM pg_constraint WHERE conrelid = 'big'::regclass"),
            "indexes": rows(
                "SELECT c.relname, i.indisvalid, i.indisready, pg_get_indexdef(i.indexrelid) "
                "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = 'big'::regclass"),
            "columns": rows(
                "SELECT attname, attnotnull FROM pg_attribute WHERE attrelid = 'big'::regclass "
                "AND attnum > 0 AND NOT attisdropped"),
        }


@pytest.fixture(scope="module")
def fault_db(safeddl_server: Any) -> Iterator[str]:
    with fresh_database(safeddl_server.dsn) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SOURCE)
        yield dsn


_EXPECTED: dict[tuple[str, str], dict[str, Any]] = {}


def expected(dsn: str, sql: str, prepare: str = "") -> dict[str, Any]:
    """The end state of the statement run unguarded on a fresh copy (cached)."""
    key = (dsn, sql)
    if key not in _EXPECTED:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(RESET)
            if prepare:
                conn.execute(prepare)
            conn.execute(sql)
        _EXPECTED[key] = end_state(dsn)
    return _EXPECTED[key]


class Injector:
    """Injects the fault when the guard announces the step (its "rewrite step" log
    line, emitted just before the step is sent): takes a conflicting lock first
    ("waiting"), or waits until the step runs with all its locks granted (or, for a
    concurrent build, is in its build phase) and then kills the backend or restarts
    the server."""

    def __init__(self, fault: Fault, dsn: str, pid: int,
                 restart: Callable[[], None] | None = None, table: str = "big") -> None:
        self.fault = fault
        self.table = table
        self.dsn = dsn
        self.pid = pid
        self.restart = restart
        self.blocker: psycopg.Connection[Any] | None = None
        self.thread: threading.Thread | None = None
        self.hit = False  # the fault struck at the intended point
        self.fired = False
        self.done = threading.Event()  # the guarded statement has returned

    def announce(self, message: str) -> None:
        if self.fired or not message.startswith("safeddl: rewrite step:") \
                or self.fault.step not in message:
            return
        self.fired = True
        if self.fault.how == "waiting":
            self.blocker = psycopg.connect(self.dsn)
            self.blocker.execute(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE")
        self.thread = threading.Thread(target=self._strike, daemon=True)
        self.thread.start()

    def _strike(self) -> None:
        waiting = self.fault.how == "waiting"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 20
            seen = False
            while time.monotonic() < deadline and not self.done.is_set():
                row = conn.execute(
                    "SELECT a.query, EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid "
                    "AND NOT l.granted), (SELECT p.phase FROM pg_stat_progress_create_index p "
                    "WHERE p.pid = a.pid) FROM pg_stat_activity a WHERE a.pid = %s "
                    "AND a.state = 'active'", [self.pid]).fetchone()
                if seen and (row is None or self.fault.step not in row[0]):
                    return  # the step is over: missed (the caller injects again)
                if row is not None and self.fault.step in row[0]:
                    seen = True
                    query, ungranted, phase = row
                    if waiting and ungranted:
                        self.hit = True
                        break
                    building = phase is None or phase.startswith("building index")
                    if not waiting and not ungranted and building:
                        self.hit = True
                        break
                time.sleep(0.001)
            if not self.hit:
                return
            if self.fault.how == "restart" and self.restart is not None:
                self.restart()
                return
            conn.execute("SELECT pg_terminate_backend(%s)", [self.pid])

    def finish(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join(timeout=60)
        if self.blocker is not None:
            self.blocker.close()


class Announcements:
    """A logging handler passing the guard's log lines to the injector."""

    def __init__(self, injector: Injector | LockOnAnnounce) -> None:
        import logging

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                injector.announce(record.getMessage())

        self.handler = Handler(level=logging.INFO)
        self.logger = logging.getLogger("safeddl")

    def __enter__(self) -> Announcements:
        import logging

        self.previous = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.previous)


def inject(fault: Fault, dsn: str, restart: Callable[[], None] | None) -> BaseException | None:
    """Run the statement through the guard with the fault injected; the error it raised
    (None: the fault came too late, the statement succeeded)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(RESET)
        if fault.prepare:
            conn.execute(fault.prepare)
    conn = safeddl.psycopg.connect(dsn, policy=POLICY, autocommit=True)
    injector = Injector(fault, dsn, conn.info.backend_pid, restart)
    try:
        with Announcements(injector):
            conn.execute(fault.sql)
    except safeddl.SafeDDLError as exc:
        if getattr(exc, "step", "") == NOOP:
            return None  # every step had completed: the fault came too late
        return exc
    finally:
        injector.finish()
        conn.close()
        COUNTS["injected"] += 1
        COUNTS["caught the step at the intended point"] += injector.hit
        assert injector.fired, f"the step {fault.step!r} never ran"
    return None


def inject_and_rerun(fault: Fault, dsn: str, restart: Callable[[], None] | None = None) -> None:
    want = expected(dsn, fault.sql, fault.prepare)
    for _ in range(5):  # a short step may be over before the fault strikes: again
        error = inject(fault, dsn, restart)
        if error is not None:
            break
        COUNTS["missed (the step was over), injected again"] += 1
    assert error is not None, "the fault never struck the step"
    message = str(error)
    step = getattr(error, "step", "")
    assert "State left:" in message and step, message
    # The kill (or the restart) takes a moment to land: a short step may be over by then,
    # and the fault strikes the next one. Counted, not asserted.
    COUNTS["struck the intended step"] += fault.step in step
    assert "Running the same statement again resumes" in message
    assert error.__cause__ is not None  # the driver's error is kept
    if fault.sql != REINDEX:  # a REINDEX stopped before its build leaves the index as is
        assert end_state(dsn) != want  # the fault left the schema part way
    with safeddl.psycopg.connect(dsn, policy=POLICY, autocommit=True) as again:
        again.execute(fault.sql)  # the rerun, as written
    assert end_state(dsn) == want
    COUNTS["converged after one rerun"] += 1


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_a_killed_step_resumes_on_the_rerun(fault: Fault, fault_db: str) -> None:
    inject_and_rerun(fault, fault_db)


@pytest.fixture(scope="module")
def restartable() -> Iterator[PostgresServer]:
    try:
        server = start_server()
    except ServerError as exc:
        pytest.skip(f"no server of our own to restart: {exc}")
    with server:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(SOURCE)
        yield server


@pytest.mark.parametrize("fault", RESTARTS, ids=[f.id for f in RESTARTS])
def test_a_restart_during_a_long_step_resumes_on_the_rerun(
        fault: Fault, restartable: PostgresServer) -> None:
    inject_and_rerun(fault, restartable.dsn, restartable.restart)


# --------------------------------------------------------------------------- concurrency


CONCURRENT = [INDEX, FOREIGN_KEY, NOT_NULL, PRIMARY_KEY]


def run_together(dsn: str, sql: str, sessions: int, stagger_s: float) -> list[BaseException]:
    """``sessions`` guarded sessions run ``sql`` at once (``stagger_s`` apart); their
    errors."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(sessions)

    def one(number: int) -> None:
        try:
            with safeddl.psycopg.connect(dsn, policy=POLICY, autocommit=True) as conn:
                barrier.wait(timeout=30)
                time.sleep(number * stagger_s)
                conn.execute(sql)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


@pytest.mark.parametrize("sessions", [2, 3, 4])
@pytest.mark.parametrize("sql", CONCURRENT)
def test_sessions_running_the_same_plan_at_once_all_end_well(
        sql: str, sessions: int, fault_db: str) -> None:
    want = expected(fault_db, sql)
    for stagger_s in (0.0, 0.15):  # at the same moment; each during the other's steps
        with psycopg.connect(fault_db, autocommit=True) as conn:
            conn.execute(RESET)
        errors = run_together(fault_db, sql, sessions, stagger_s)
        assert errors == [], (stagger_s, [str(e) for e in errors])
        assert end_state(fault_db) == want, stagger_s


def test_report_counts() -> None:
    """The counts of the fault suite (when it ran in this session)."""
    if not COUNTS["injected"]:
        pytest.skip("the fault tests did not run")
    print(f"\nfault injection: {COUNTS}")
    faults = COUNTS["injected"] - COUNTS["missed (the step was over), injected again"]
    assert COUNTS["converged after one rerun"] == faults


# --------------------------------------------------------------------------- lock timeouts


class LockOnAnnounce:
    """Takes ``mode`` on big when the guard announces a step containing ``step`` (the
    first ``times`` times), and releases it ``hold_s`` later."""

    def __init__(self, dsn: str, step: str, mode: str, hold_s: float, times: int = 1) -> None:
        self.dsn, self.step, self.mode, self.hold_s, self.times = dsn, step, mode, hold_s, times
        self.announced = 0
        self.threads: list[threading.Thread] = []

    def announce(self, message: str) -> None:
        if not message.startswith("safeddl: rewrite step:") or self.step not in message:
            return
        self.announced += 1
        if self.announced > self.times:
            return
        holder = psycopg.connect(self.dsn)
        holder.execute(f"LOCK TABLE big IN {self.mode} MODE")
        timer = threading.Timer(self.hold_s, holder.close)
        timer.start()
        self.threads.append(timer)

    def finish(self) -> None:
        for thread in self.threads:
            thread.join(timeout=30)


def test_a_lock_timeout_in_a_step_names_that_step_and_a_retry_resumes(fault_db: str) -> None:
    from safeddl.locks import LockMode
    from safeddl.runtime.errors import is_retryable

    want = expected(fault_db, FOREIGN_KEY)
    policy = Policy(small_table_rows=0, lock_timeout="300ms")
    with psycopg.connect(fault_db, autocommit=True) as conn:
        conn.execute(RESET)
    blocker = LockOnAnnounce(fault_db, "VALIDATE", "SHARE UPDATE EXCLUSIVE", hold_s=1.0)
    with safeddl.psycopg.connect(fault_db, policy=policy, autocommit=True) as conn:
        try:
            with Announcements(blocker), pytest.raises(safeddl.PlanStepLockTimeout) as info:
                conn.execute(FOREIGN_KEY)
        finally:
            blocker.finish()
    error = info.value
    assert error.mode is LockMode.SHARE_UPDATE_EXCLUSIVE and error.relation == "big"
    assert "VALIDATE CONSTRAINT big_parent_id_fkey" in error.step
    assert "waited for SHARE UPDATE EXCLUSIVE on big" in str(error)
    assert "step 2 of 2" in str(error) and "big_parent_id_fkey exists on big, NOT VALID" \
        in str(error)
    assert is_retryable(error) and isinstance(error.__cause__, psycopg.errors.LockNotAvailable)

    # Through retry_statement: the first attempt times out in VALIDATE, the next resumes.
    with psycopg.connect(fault_db, autocommit=True) as conn:
        conn.execute(RESET)
    blocker = LockOnAnnounce(fault_db, "VALIDATE", "SHARE UPDATE EXCLUSIVE", hold_s=1.0)
    with safeddl.psycopg.connect(fault_db, policy=policy, autocommit=True) as conn:
        try:
            with Announcements(blocker):
                safeddl.retry_statement(conn, FOREIGN_KEY, attempts=5, max_time="30s")
        finally:
            blocker.finish()
    assert blocker.announced >= 2  # VALIDATE ran again, the ADD was skipped
    assert end_state(fault_db) == want


# --------------------------------------------------------------------------- names taken


@pytest.mark.parametrize(("before", "sql", "there", "planned"), [
    ("ALTER TABLE big ADD CONSTRAINT big_parent_id_fkey FOREIGN KEY (x) REFERENCES parent "
     "NOT VALID", FOREIGN_KEY, "FOREIGN KEY (x) REFERENCES parent(id) NOT VALID",
     "FOREIGN KEY (parent_id) REFERENCES parent(id)"),
    ("ALTER TABLE big ADD CONSTRAINT big_x_positive CHECK (x > 1) NOT VALID", CHECK,
     "CHECK ((x > 1)) NOT VALID", "CHECK ((x > 0))"),
    ("CREATE INDEX big_x ON big (id)", INDEX,
     "CREATE INDEX big_x ON public.big USING btree (id)", "USING btree (x)"),
    ("CREATE UNIQUE INDEX big_id_key ON big (id) WHERE x > 0", UNIQUE,
     "CREATE UNIQUE INDEX big_id_key ON public.big USING btree (id) WHERE (x > 0)",
     "USING btree (id)"),
], ids=["foreign-key", "check", "index", "unique"])
def test_a_name_taken_with_another_definition_is_refused_naming_both(
        before: str, sql: str, there: str, planned: str, fault_db: str) -> None:
    with psycopg.connect(fault_db, autocommit=True) as conn:
        conn.execute(RESET)
        conn.execute(before)
    state = end_state(fault_db)
    with safeddl.psycopg.connect(fault_db, policy=POLICY, autocommit=True) as conn, \
            pytest.raises(safeddl.UnsafeStatement) as info:
        conn.execute(sql)
    message = str(info.value)
    assert "already there with another definition" in message
    assert f"there:   {there}" in message and planned in message.split("planned:")[1], message
    assert end_state(fault_db) == state  # nothing was sent


# --------------------------------------------------------------------------- SQLAlchemy


def test_through_sqlalchemy_a_killed_validate_resumes(fault_db: str) -> None:
    """The same fault through the SQLAlchemy integration (an AUTOCOMMIT engine, as
    Alembic's autocommit_block() uses): the error names the step and the state, with
    the driver's error as its cause, and the rerun converges."""
    from sqlalchemy import create_engine, text

    from safeddl.testing.server import sqlalchemy_url_from_dsn

    want = expected(fault_db, FOREIGN_KEY)
    with psycopg.connect(fault_db, autocommit=True) as conn:
        conn.execute(RESET)
    engine = create_engine(sqlalchemy_url_from_dsn(fault_db), isolation_level="AUTOCOMMIT")
    safeddl.install(engine, POLICY)
    try:
        fault = Fault(FOREIGN_KEY, "VALIDATE", "waiting")
        with engine.connect() as conn:
            pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
            injector = Injector(fault, fault_db, pid)
            try:
                with Announcements(injector), pytest.raises(safeddl.PlanInterrupted) as info:
                    conn.execute(text(FOREIGN_KEY))
            finally:
                injector.finish()
        assert injector.hit and "VALIDATE CONSTRAINT big_parent_id_fkey" in info.value.step
        assert "big_parent_id_fkey exists on big, NOT VALID" in str(info.value)
        assert isinstance(info.value.__cause__, psycopg.errors.AdminShutdown)
        with engine.connect() as conn:
            conn.execute(text(FOREIGN_KEY))  # the rerun (a fresh pooled connection)
    finally:
        safeddl.uninstall(engine)
        engine.dispose()
    assert end_state(fault_db) == want
