"""The exact rewrites against real servers: for each rewrite, the original statement on
one fresh database and the guarded (rewritten) one on another with the same setup leave
the same catalog; the rewritten sequence never holds SHARE or stronger on the table
while it scans; a failed concurrent build leaves no INVALID index; every way in."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

import safeddl
import safeddl.psycopg
from safeddl import Policy
from safeddl.testing.server import fresh_database, sqlalchemy_url_from_dsn

pytestmark = [pytest.mark.timeout(120)]

ROWS = 3_000
# Nothing counts as "small": the rewrite applies to these small tables too.
POLICY = Policy(small_table_rows=0, lock_timeout="2s",
                actions={"truncate": "rewrite", "drop-index": "rewrite"})

SETUP = f"""
DROP SCHEMA public CASCADE;
CREATE SCHEMA public;
CREATE TABLE parent (id int PRIMARY KEY);
INSERT INTO parent SELECT g FROM generate_series(1, 100) g;
CREATE TABLE big (id int, x int, y int, z int, parent_id int, note text);
INSERT INTO big SELECT g, g, g % 100, g % 7, 1 + g % 100, 'n' FROM generate_series(1, {ROWS}) g;
CREATE INDEX big_y ON big (y);
ANALYZE parent;
ANALYZE big;
"""


@dataclass(frozen=True)
class Case:
    id: str
    sql: str
    rewritten: str  # a statement of the plan that must appear in the log


CASES = [
    Case("create-index", "CREATE INDEX big_x ON big (x)", "CREATE INDEX CONCURRENTLY big_x"),
    Case("create-unique-partial-index", "CREATE UNIQUE INDEX big_id ON big (id) WHERE x > 0",
         "CREATE UNIQUE INDEX CONCURRENTLY big_id"),
    Case("create-index-if-not-exists", "CREATE INDEX IF NOT EXISTS big_x ON big (x, z)",
         "CREATE INDEX CONCURRENTLY IF NOT EXISTS big_x"),
    Case("drop-index", "DROP INDEX big_y", "DROP INDEX CONCURRENTLY big_y"),
    Case("reindex", "REINDEX INDEX big_y", "REINDEX INDEX CONCURRENTLY big_y"),
    Case("foreign-key", "ALTER TABLE big ADD CONSTRAINT big_parent_fk FOREIGN KEY (parent_id) "
         "REFERENCES parent (id) ON DELETE CASCADE", "VALIDATE CONSTRAINT big_parent_fk"),
    Case("foreign-key-unnamed", "ALTER TABLE big ADD FOREIGN KEY (parent_id) REFERENCES parent",
         "VALIDATE CONSTRAINT big_parent_id_fkey"),
    Case("check", "ALTER TABLE big ADD CONSTRAINT big_x_positive CHECK (x > 0)",
         "VALIDATE CONSTRAINT big_x_positive"),
    Case("check-unnamed-one-column", "ALTER TABLE big ADD CHECK (x > 0)",
         "VALIDATE CONSTRAINT big_x_check"),
    Case("check-unnamed-two-columns", "ALTER TABLE big ADD CHECK (x > 0 AND y >= 0) NO INHERIT",
         "VALIDATE CONSTRAINT big_check"),
    Case("set-not-null", "ALTER TABLE big ALTER COLUMN x SET NOT NULL",
         "VALIDATE CONSTRAINT big_x_is_not_null"),
    Case("unique-unnamed", "ALTER TABLE big ADD UNIQUE (id)",
         "CREATE UNIQUE INDEX CONCURRENTLY big_id_key"),
    Case("unique-named-include-deferrable",
         "ALTER TABLE big ADD CONSTRAINT big_id_x UNIQUE (id, x) INCLUDE (z) "
         "DEFERRABLE INITIALLY DEFERRED", "UNIQUE USING INDEX big_id_x"),
    Case("primary-key-on-nullable-column", "ALTER TABLE big ADD PRIMARY KEY (id)",
         "PRIMARY KEY USING INDEX big_pkey"),
    Case("truncate", "TRUNCATE big", "DELETE FROM big"),
]


def catalog_state(dsn: str, table: str = "big") -> dict[str, Any]:
    """What a rewrite must leave exactly as the original does."""
    with psycopg.connect(dsn) as conn:
        def rows(query: str) -> list[tuple[Any, ...]]:
            return sorted(conn.execute(query, [table]).fetchall())

        return {
            "constraints": rows(
                "SELECT conname, contype, convalidated, condeferrable, condeferred, "
                "pg_get_constraintdef(oid), conindid::regclass::text FROM pg_constraint "
                "WHERE conrelid = %s::regclass"),
            "indexes": rows(
                "SELECT c.relname, i.indisvalid, i.indisunique, i.indisprimary, i.indisready, "
                "pg_get_indexdef(i.indexrelid) FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass"),
            "columns": rows(
                "SELECT attname, attnotnull, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"),
            "rows": conn.execute(f"SELECT count(*) FROM {table}").fetchall(),
        }


@pytest.fixture(scope="module")
def database_pair(safeddl_server_each: Any) -> Iterator[tuple[str, str]]:
    """Two databases on each server version, shared by the module's tests (each test
    starts from SETUP, which recreates the schema)."""
    with ExitStack() as stack:
        first = stack.enter_context(fresh_database(safeddl_server_each.dsn))
        second = stack.enter_context(fresh_database(safeddl_server_each.dsn))
        yield first, second


@pytest.fixture
def two_databases(database_pair: tuple[str, str]) -> tuple[str, str]:
    for dsn in database_pair:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SETUP)
    return database_pair


@pytest.fixture(scope="module")
def shared_db(safeddl_server: Any) -> Iterator[str]:
    with fresh_database(safeddl_server.dsn) as dsn:
        yield dsn


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rewrite_leaves_the_catalog_of_the_original(
        case: Case, two_databases: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    original_db, rewritten_db = two_databases
    with psycopg.connect(original_db, autocommit=True) as conn:
        conn.execute(case.sql)
    caplog.set_level(logging.INFO, logger="safeddl")
    with safeddl.psycopg.connect(rewritten_db, policy=POLICY, autocommit=True) as conn:
        conn.execute(case.sql)
        assert conn.execute("SHOW lock_timeout").fetchone() == ("0",)  # restored
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
    assert case.rewritten in caplog.text  # the plan ran, not the original
    assert catalog_state(rewritten_db) == catalog_state(original_db)


@pytest.mark.parametrize("case", [c for c in CASES if c.id != "truncate"],
                         ids=[c.id for c in CASES if c.id != "truncate"])
def test_in_a_transaction_the_plan_is_refused_and_spelled_out(case: Case, db: str) -> None:
    before = catalog_state(db)
    with safeddl.psycopg.connect(db, policy=POLICY) as conn, \
            pytest.raises(safeddl.UnsafeStatement) as info:
        conn.execute(case.sql)
    message = str(info.value)
    assert "autocommit" in message and case.rewritten in message
    assert catalog_state(db) == before


# --------------------------------------------------------------------------- failures


@pytest.fixture
def db(shared_db: str) -> str:
    with psycopg.connect(shared_db, autocommit=True) as conn:
        conn.execute(SETUP)
    return shared_db


def invalid_indexes(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid").fetchall()]


def test_failed_unique_build_leaves_no_invalid_index(db: str) -> None:
    with safeddl.psycopg.connect(db, policy=POLICY, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX big_y_unique ON big (y)")  # y repeats
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("ALTER TABLE big ADD CONSTRAINT big_y_key UNIQUE (y)")
    assert invalid_indexes(db) == []
    state = catalog_state(db)
    assert [i[0] for i in state["indexes"]] == ["big_y"]
    assert state["constraints"] == []


def test_failed_validation_says_what_is_left_and_resumes(db: str) -> None:
    """A row that violates the constraint: the plan is not undone (dropping the NOT VALID
    constraint would need a stronger lock than VALIDATE); the error names the step and
    what is left, and once the row is fixed the same statements finish the job."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE big SET x = NULL WHERE id = 7")
    statements = {
        "ALTER TABLE big ALTER COLUMN x SET NOT NULL": "big_x_is_not_null exists on big, NOT VALID",
        "ALTER TABLE big ADD CONSTRAINT big_x_small CHECK (x > 0)":
            "big_x_small exists on big, NOT VALID",
        "ALTER TABLE big ADD FOREIGN KEY (parent_id) REFERENCES parent":
            "big_parent_id_fkey exists on big, NOT VALID",
    }
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE big SET x = -1, parent_id = 1000 WHERE id = 8")  # no parent 1000
    with safeddl.psycopg.connect(db, policy=POLICY, autocommit=True) as conn:
        for sql, left in statements.items():
            with pytest.raises(safeddl.PlanInterrupted) as info:
                conn.execute(sql)
            assert isinstance(info.value.__cause__, psycopg.errors.IntegrityError), sql
            assert "VALIDATE CONSTRAINT" in info.value.step and left in str(info.value)
            assert "fix them, then run the same statement again" in str(info.value)
            if "SET NOT NULL" in sql:  # reads like the original's own failure
                assert isinstance(info.value, psycopg.errors.NotNullViolation)
                assert info.value.sqlstate == "23502"
                assert str(info.value).startswith(
                    'column "x" of relation "big" contains null values')
        with pytest.raises(psycopg.errors.UniqueViolation):  # the index build: nothing left
            conn.execute("ALTER TABLE big ADD PRIMARY KEY (y)")
    assert invalid_indexes(db) == []
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE big SET x = 7 WHERE id = 7")
        conn.execute("UPDATE big SET x = 8, parent_id = 8 WHERE id = 8")
    with safeddl.psycopg.connect(db, policy=POLICY, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)  # resumes: VALIDATE (and SET NOT NULL, DROP the helper)
    state = catalog_state(db)
    assert sorted((c[0], c[2]) for c in state["constraints"] if c[1] != "n") == [
        ("big_parent_id_fkey", True), ("big_x_small", True)]  # valid; no helper CHECK left
    assert ("x", True, "integer") in state["columns"]


def test_concurrent_build_that_times_out_is_cleaned_up_before_the_retry(
        db: str, caplog: pytest.LogCaptureFixture) -> None:
    """A writer's open transaction makes the concurrent build wait (after it created the
    index entry) until the lock timeout. Dropping the INVALID index waits for the same
    writer, so it times out too and says so; the retry drops it first, then builds."""
    policy = Policy(small_table_rows=0, lock_timeout="300ms")
    with psycopg.connect(db) as writer:
        writer.execute("INSERT INTO big (id) VALUES (-1)")  # keeps ROW EXCLUSIVE, open
        with safeddl.psycopg.connect(db, policy=policy, autocommit=True) as conn:
            started = time.monotonic()
            with pytest.raises(safeddl.LockTimeout):
                conn.execute("CREATE INDEX big_x ON big (x)")
            assert time.monotonic() - started < 10
            assert "could not drop the INVALID index big_x" in caplog.text
            assert "running the statement again drops it first" in caplog.text
            assert invalid_indexes(db) == ["big_x"]
        writer.rollback()
    caplog.set_level(logging.INFO, logger="safeddl")
    with safeddl.psycopg.connect(db, policy=policy, autocommit=True) as conn:
        conn.execute("CREATE INDEX big_x ON big (x)")  # the retry
    assert "DROP INDEX CONCURRENTLY big_x;\nCREATE INDEX CONCURRENTLY big_x" in caplog.text
    assert invalid_indexes(db) == []
    assert ("big_x", True) in [i[:2] for i in catalog_state(db)["indexes"]]


def test_concurrent_build_that_times_out_drops_its_invalid_index(db: str) -> None:
    """The same, when the writer is gone by the time the build has failed: the failed
    build's INVALID index is dropped at once."""
    policy = Policy(small_table_rows=0, lock_timeout="500ms")
    writer = psycopg.connect(db)
    writer.execute("INSERT INTO big (id) VALUES (-1)")  # keeps ROW EXCLUSIVE, open
    timer = threading.Timer(0.8, writer.rollback)  # the writer ends while the build fails
    try:
        with safeddl.psycopg.connect(db, policy=policy, autocommit=True) as conn:
            timer.start()
            with pytest.raises(safeddl.LockTimeout):
                conn.execute("CREATE INDEX big_x ON big (x)")
    finally:
        timer.join(timeout=10)
        writer.close()
    assert invalid_indexes(db) == []


def test_if_not_exists_does_not_keep_an_invalid_index(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn, \
            pytest.raises(psycopg.errors.UniqueViolation):  # a failed build, unguarded
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY big_z ON big (z)")
    assert invalid_indexes(db) == ["big_z"]
    with safeddl.psycopg.connect(db, policy=POLICY, autocommit=True) as conn:
        conn.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS big_z ON big (z)")  # as written
    assert invalid_indexes(db) == []
    with psycopg.connect(db, autocommit=True) as conn, \
            pytest.raises(psycopg.errors.UniqueViolation):  # again, then the rewritten form
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY big_w ON big (z)")
    with safeddl.psycopg.connect(db, policy=POLICY, autocommit=True) as conn:
        conn.execute("CREATE INDEX IF NOT EXISTS big_w ON big (z)")
    assert invalid_indexes(db) == []
    names = [i[0] for i in catalog_state(db)["indexes"]]
    assert "big_z" in names and "big_w" in names


def test_truncate_is_not_rewritten_where_delete_would_differ(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ALTER TABLE big ADD PRIMARY KEY (id)")
        conn.execute("CREATE TABLE child (id int PRIMARY KEY, big_id int REFERENCES big)")
        conn.execute("CREATE TABLE counted (id serial PRIMARY KEY)")
        conn.execute("INSERT INTO counted SELECT FROM generate_series(1, 20000)")
        conn.execute("ANALYZE counted")
    with safeddl.psycopg.connect(db, policy=POLICY) as conn:
        with pytest.raises(safeddl.UnsafeStatement, match="no exact rewrite"):
            conn.execute("TRUNCATE big")  # a foreign key points at it
        conn.rollback()
        with pytest.raises(safeddl.UnsafeStatement, match="no exact rewrite"):
            conn.execute("TRUNCATE counted RESTART IDENTITY")
        conn.rollback()
        conn.execute("TRUNCATE counted")  # rewritten: DELETE, in this transaction
        conn.commit()
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM counted").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM big").fetchone() == (ROWS,)


def test_truncate_stays_refused_by_default(db: str) -> None:
    with safeddl.psycopg.connect(db, policy=Policy(small_table_rows=0)) as conn, \
            pytest.raises(safeddl.UnsafeStatement) as info:
        conn.execute("TRUNCATE big")
    assert info.value.rule == "truncate"


# --------------------------------------------------------------------------- locks


LOCK_ROWS = 200_000
WEAK_MODES = {"AccessShareLock", "RowShareLock", "RowExclusiveLock",
              "ShareUpdateExclusiveLock"}


class LockSampler:
    """Samples, from another session, the table locks a backend holds and the
    statement it runs, as fast as it can."""

    def __init__(self, dsn: str, pid: int) -> None:
        self.dsn = dsn
        self.pid = pid
        self.samples: list[tuple[str, frozenset[str]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                row = conn.execute(
                    "SELECT a.query, a.state, array(SELECT l.mode FROM pg_locks l "
                    "WHERE l.pid = a.pid AND l.granted AND l.relation = 'big'::regclass) "
                    "FROM pg_stat_activity a WHERE a.pid = %s", [self.pid]).fetchone()
                if row and row[1] == "active":
                    self.samples.append((row[0], frozenset(row[2])))

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def during(self, needle: str) -> list[frozenset[str]]:
        return [modes for query, modes in self.samples if needle in query]


def test_rewritten_scans_never_hold_share_or_stronger(shared_db: str) -> None:
    dsn = shared_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SETUP.replace(str(ROWS), str(LOCK_ROWS)))
    with safeddl.psycopg.connect(dsn, policy=POLICY, autocommit=True) as conn:
        pid = conn.info.backend_pid
        sampler = LockSampler(dsn, pid)
        sampler.start()
        try:
            conn.execute("CREATE INDEX big_x ON big (x)")
            conn.execute("ALTER TABLE big ADD FOREIGN KEY (parent_id) REFERENCES parent")
            conn.execute("ALTER TABLE big ALTER COLUMN x SET NOT NULL")
            conn.execute("ALTER TABLE big ADD UNIQUE (id)")
            with psycopg.Cursor(conn) as plain:  # the control: unguarded, it holds SHARE
                plain.execute("CREATE INDEX big_z ON big (z)")
        finally:
            sampler.finish()
    scans = {"CONCURRENTLY big_x": sampler.during("INDEX CONCURRENTLY big_x"),
             "VALIDATE fkey": sampler.during("VALIDATE CONSTRAINT big_parent_id_fkey"),
             "VALIDATE not null": sampler.during("VALIDATE CONSTRAINT big_x_is_not_null"),
             "CONCURRENTLY big_id_key": sampler.during("CONCURRENTLY big_id_key")}
    for name, samples in scans.items():
        assert samples, f"no sample caught {name}"
        assert all(modes <= WEAK_MODES for modes in samples), (name, samples)
    control = sampler.during("CREATE INDEX big_z")
    assert control and any("ShareLock" in modes for modes in control)


def test_writer_is_not_blocked_by_a_rewritten_build(shared_db: str) -> None:
    """While the rewritten CREATE INDEX builds over a slow expression (~2 s), a writer
    keeps inserting with short latencies; the build does not inherit the session's short
    statement_timeout, which is back afterwards."""
    dsn = shared_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SETUP.replace(str(ROWS), "2000"))
        conn.execute("CREATE FUNCTION slow_key(v int) RETURNS int LANGUAGE plpgsql IMMUTABLE "
                     "AS $$ BEGIN PERFORM pg_sleep(0.0005); RETURN v; END $$")
    latencies: list[float] = []
    done = threading.Event()

    def write() -> None:
        with psycopg.connect(dsn, autocommit=True) as writer:
            while not done.is_set():
                started = time.monotonic()
                writer.execute("INSERT INTO big (id, x) VALUES (0, 0)")
                latencies.append(time.monotonic() - started)
                time.sleep(0.01)

    thread = threading.Thread(target=write, daemon=True)
    with safeddl.psycopg.connect(dsn, policy=POLICY, autocommit=True,
                                 options="-c statement_timeout=500") as conn:
        thread.start()
        started = time.monotonic()
        conn.execute("CREATE INDEX big_slow ON big (slow_key(x))")
        build = time.monotonic() - started
        assert conn.execute("SHOW statement_timeout").fetchone() == ("500ms",)
    done.set()
    thread.join(timeout=10)
    assert build > 1.0  # the build really took a while
    assert len(latencies) > 20
    assert max(latencies) < 0.5, max(latencies)


# --------------------------------------------------------------------------- ways in


def test_sqlalchemy_engine_plugin_and_guard_block(db: str) -> None:
    url = sqlalchemy_url_from_dsn(db)
    engine = create_engine(url, plugins=["safeddl"], safeddl_policy=POLICY)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ALTER TABLE big ADD CONSTRAINT big_x_positive CHECK (x > 0)"))
        with engine.connect() as conn, \
                pytest.raises(safeddl.UnsafeStatement, match="autocommit_block"):
            conn.execute(text("CREATE INDEX big_x ON big (x)"))
    finally:
        engine.dispose()
    plain = create_engine(url)
    try:
        with plain.connect().execution_options(isolation_level="AUTOCOMMIT") as conn, \
                safeddl.guard(conn, policy=POLICY):
            conn.execute(text("CREATE INDEX big_x ON big (x)"))
    finally:
        plain.dispose()
    state = catalog_state(db)
    assert ("big_x_positive", "c", True) in [c[:3] for c in state["constraints"]]
    assert ("big_x", True) in [i[:2] for i in state["indexes"]]


def test_sqlalchemy_async_engine(db: str) -> None:
    pytest.importorskip("greenlet")
    url = sqlalchemy_url_from_dsn(db)

    async def scenario() -> None:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        safeddl.install(engine, POLICY)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("ALTER TABLE big ALTER COLUMN x SET NOT NULL"))
        finally:
            await engine.dispose()

    asyncio.run(scenario())
    state = catalog_state(db)
    assert ("x", True, "integer") in state["columns"]
    assert [c for c in state["constraints"] if c[1] == "c"] == []  # the proof CHECK dropped
