"""The runtime guard through raw psycopg 3 against a real server: safeddl.psycopg.connect,
cursor factories on existing connections, guard() and allow() blocks; every cursor entry
point (execute, executemany, stream, copy, server-side cursors)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, ClassVar

import psycopg
import pytest
from psycopg import sql

import safeddl
import safeddl.psycopg
from safeddl import Policy

pytestmark = [pytest.mark.timeout(120)]

BIG_ROWS = 20_000
INDEX_ON_BIG = "CREATE INDEX big_x ON big (x)"


@pytest.fixture
def db(safeddl_db: str) -> str:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, x int)")
        conn.execute(f"INSERT INTO big SELECT g, g FROM generate_series(1, {BIG_ROWS}) g")
        conn.execute("CREATE TABLE small (id int PRIMARY KEY, x int)")
        conn.execute("ANALYZE big")
    return safeddl_db


@pytest.fixture
def guarded(db: str) -> Iterator[psycopg.Connection[Any]]:
    conn = safeddl.psycopg.connect(db)
    try:
        yield conn
    finally:
        conn.close()


def index_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
        return bool(row and row[0])


def show(conn: psycopg.Connection[Any], name: str) -> str:
    with psycopg.Cursor(conn) as cursor:  # an unguarded cursor
        row = cursor.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return str(row[0])


# --------------------------------------------------------------------------- connect()


def test_connect_refuses_and_never_sends(guarded: psycopg.Connection[Any], db: str) -> None:
    with pytest.raises(safeddl.UnsafeStatement) as info:
        guarded.execute(INDEX_ON_BIG)
    assert info.value.rule == "create-index"
    assert info.value.statement == INDEX_ON_BIG
    guarded.rollback()
    assert not index_exists(db, "big_x")


@pytest.mark.parametrize("action", ["warn", "allow"])
def test_connect_warn_and_allow(db: str, action: str, caplog: pytest.LogCaptureFixture) -> None:
    with safeddl.psycopg.connect(db, policy=Policy(actions={"create-index": action})) as conn:
        conn.execute(INDEX_ON_BIG)
        conn.commit()
    assert index_exists(db, "big_x")
    warned = any(r.levelno == logging.WARNING and "create-index" in r.getMessage()
                 for r in caplog.records)
    assert warned is (action == "warn")


def test_allow_block(guarded: psycopg.Connection[Any], db: str) -> None:
    with safeddl.allow("create-index", reason="tiny in production"):
        guarded.execute(INDEX_ON_BIG)
    guarded.commit()
    assert index_exists(db, "big_x")


def test_composed_queries_are_read(guarded: psycopg.Connection[Any], db: str) -> None:
    query = sql.SQL("CREATE INDEX {} ON {} (x)").format(sql.Identifier("big_x"),
                                                        sql.Identifier("big"))
    with pytest.raises(safeddl.UnsafeStatement):
        guarded.execute(query)
    with pytest.raises(safeddl.UnsafeStatement):
        guarded.execute(INDEX_ON_BIG.encode())


def test_lock_timeout_set_local_in_a_transaction(db: str) -> None:
    with safeddl.psycopg.connect(db, policy=Policy(lock_timeout="1200ms")) as conn:
        conn.execute("ALTER TABLE big ADD COLUMN note text")
        assert show(conn, "lock_timeout") == "1200ms"
        conn.commit()
        assert show(conn, "lock_timeout") == "0"


def test_autocommit_restores_after_success_and_error(db: str) -> None:
    with safeddl.psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ALTER TABLE big ADD COLUMN note text")
        assert show(conn, "lock_timeout") == "0"
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("ALTER TABLE nowhere ADD COLUMN note text")
        assert show(conn, "lock_timeout") == "0"
        conn.execute("CREATE INDEX CONCURRENTLY big_x ON big (x)")
        assert show(conn, "statement_timeout") == "0"
    assert index_exists(db, "big_x")


# --------------------------------------------------------------------------- factories


def test_cursor_factory_on_an_existing_connection(db: str) -> None:
    with psycopg.connect(db) as conn:
        conn.cursor_factory = safeddl.psycopg.cursor_factory(Policy())
        with pytest.raises(safeddl.UnsafeStatement):
            conn.execute(INDEX_ON_BIG)
        conn.rollback()
        conn.cursor_factory = safeddl.psycopg.cursor_factory(
            Policy(actions={"create-index": "allow"}))
        conn.execute(INDEX_ON_BIG)
        conn.commit()
    assert index_exists(db, "big_x")


def test_client_cursor_stays_a_client_cursor(db: str) -> None:
    with psycopg.connect(db, cursor_factory=psycopg.ClientCursor) as conn:
        safeddl.psycopg.install(conn)
        cursor = conn.cursor()
        assert isinstance(cursor, psycopg.ClientCursor)
        assert isinstance(cursor, safeddl.psycopg.GuardedClientCursor)
        with pytest.raises(safeddl.UnsafeStatement):
            cursor.execute(INDEX_ON_BIG)


class _NarrowCursor(psycopg.Cursor[Any]):
    """A user's cursor whose execute takes no ``prepare`` / ``binary``."""

    def execute(self, query: Any, params: Any = None) -> Any:  # type: ignore[override]
        return super().execute(query, params)


def test_a_user_cursor_with_a_narrower_execute_keeps_working(db: str) -> None:
    with psycopg.connect(db, cursor_factory=_NarrowCursor) as conn:
        safeddl.psycopg.install(conn)
        cursor = conn.cursor()
        assert isinstance(cursor, _NarrowCursor)
        for _ in range(3):  # the first decides, the next ones take the known-text path
            assert cursor.execute("SELECT x FROM big WHERE id = %s", [5]).fetchone() == (5,)
            cursor.execute("UPDATE big SET x = x WHERE id = %s", [5])
        conn.commit()
        with pytest.raises(safeddl.UnsafeStatement):
            cursor.execute(INDEX_ON_BIG)


class _WiderCursor(psycopg.Cursor[Any]):
    """A user's cursor whose execute takes a keyword of its own."""

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                binary: bool | None = None, label: str = "") -> Any:  # type: ignore[override]
        self.labels = [*getattr(self, "labels", []), label]
        return super().execute(query, params, prepare=prepare, binary=binary)


class _CountingCursor(psycopg.Cursor[Any]):
    """A user's cursor with psycopg's execute signature that counts its calls."""

    calls: ClassVar[list[str]] = []

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                binary: bool | None = None) -> Any:  # type: ignore[override]
        _CountingCursor.calls.append(query)
        return super().execute(query, params, prepare=prepare, binary=binary)


def test_a_user_cursor_with_a_wider_execute_keeps_its_keywords(db: str) -> None:
    with psycopg.connect(db, cursor_factory=_WiderCursor) as conn:
        safeddl.psycopg.install(conn)
        cursor = conn.cursor()
        for n in range(3):  # the first decides, the next ones take the known-text path
            cursor.execute("SELECT x FROM big WHERE id = %s", [5], label=f"read {n}")
            cursor.execute("UPDATE big SET x = x WHERE id = %s", [5], label=f"write {n}")
        conn.commit()
        assert cursor.labels == [f"{kind} {n}" for n in range(3) for kind in ("read", "write")]
        with pytest.raises(safeddl.UnsafeStatement):
            cursor.execute(INDEX_ON_BIG, label="index")


def test_the_hot_path_calls_the_user_cursors_own_execute(db: str) -> None:
    with psycopg.connect(db, cursor_factory=_CountingCursor) as conn:
        safeddl.psycopg.install(conn)
        cursor = conn.cursor()
        before = len(_CountingCursor.calls)
        for _ in range(3):  # the known-text path from the second on
            assert cursor.execute("SELECT x FROM big WHERE id = %s", [5]).fetchone() == (5,)
            cursor.execute("UPDATE big SET x = x WHERE id = %s", [5])
        conn.commit()
        assert len(_CountingCursor.calls) - before == 6


def test_guard_block_on_a_connection(db: str) -> None:
    with psycopg.connect(db) as conn:
        with safeddl.guard(conn, Policy()), pytest.raises(safeddl.UnsafeStatement):
            conn.execute(INDEX_ON_BIG)
        conn.rollback()
        conn.execute(INDEX_ON_BIG)  # outside the block: not guarded
        conn.commit()
    assert index_exists(db, "big_x")


def test_install_and_uninstall(db: str) -> None:
    with psycopg.connect(db) as conn:
        safeddl.install(conn, Policy())
        with pytest.raises(safeddl.UnsafeStatement):
            conn.execute("TRUNCATE big")
        conn.rollback()
        safeddl.uninstall(conn)
        conn.execute("SELECT 1")
        conn.execute(INDEX_ON_BIG)
        conn.rollback()


# --------------------------------------------------------------------------- entry points


def test_executemany_is_guarded(db: str) -> None:
    policy = Policy(guard_dml_lock_timeout=True, lock_timeout="800ms")
    with safeddl.psycopg.connect(db, policy=policy) as conn:
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO small VALUES (%s, %s)", [(1, 1), (2, 2)])
        assert show(conn, "lock_timeout") == "800ms"
        conn.commit()


def test_stream_is_guarded(guarded: psycopg.Connection[Any]) -> None:
    with guarded.cursor() as cursor:
        with pytest.raises(safeddl.UnsafeStatement):
            list(cursor.stream(INDEX_ON_BIG))
        guarded.rollback()
        rows = list(cursor.stream("SELECT id FROM big WHERE id <= 3 ORDER BY id"))
    assert [r[0] for r in rows] == [1, 2, 3]


def test_stream_stopped_early_restores(db: str) -> None:
    policy = Policy(guard_dml_lock_timeout=True)
    with safeddl.psycopg.connect(db, policy=policy, autocommit=True) as conn:
        with conn.cursor() as cursor:
            for _row in cursor.stream("SELECT id FROM big"):
                break
        assert show(conn, "lock_timeout") == "0"


def test_copy_is_guarded(db: str) -> None:
    policy = Policy(guard_dml_lock_timeout=True, lock_timeout="600ms")
    with safeddl.psycopg.connect(db, policy=policy) as conn:
        with conn.cursor() as cursor, cursor.copy("COPY small (id, x) FROM STDIN") as copy:
            copy.write_row((1, 1))
        assert show(conn, "lock_timeout") == "600ms"
        conn.commit()
    with safeddl.psycopg.connect(db) as conn, conn.cursor() as cursor:
        with pytest.raises(safeddl.UnsafeStatement):
            with cursor.copy("COPY (SELECT 1) TO STDOUT; TRUNCATE big"):
                pass


def test_server_side_cursor_is_guarded(db: str) -> None:
    policy = Policy(guard_dml_lock_timeout=True, lock_timeout="700ms")
    with safeddl.psycopg.connect(db, policy=policy) as conn:
        with conn.cursor(name="reader") as cursor:
            assert isinstance(cursor, safeddl.psycopg.GuardedServerCursor)
            cursor.execute("SELECT id FROM big ORDER BY id")
            assert cursor.fetchone() == (1,)
        assert show(conn, "lock_timeout") == "700ms"


def test_tiny_and_new_tables_pass(guarded: psycopg.Connection[Any], db: str) -> None:
    guarded.execute("CREATE INDEX small_x ON small (x)")
    guarded.execute("CREATE TABLE fresh (id int, x int)")
    guarded.execute(f"INSERT INTO fresh SELECT g, g FROM generate_series(1, {BIG_ROWS}) g")
    guarded.execute("ANALYZE fresh")
    guarded.execute("CREATE INDEX fresh_x ON fresh (x)")
    guarded.commit()
    assert index_exists(db, "small_x") and index_exists(db, "fresh_x")


# --------------------------------------------------------------------------- rewrite seam


@pytest.fixture
def concurrent_rewriter() -> Iterator[None]:
    """A stand-in rewriter: CREATE INDEX -> drop a leftover invalid index, then build it
    CONCURRENTLY (the real rewrites live elsewhere; this pins the seam)."""
    from safeddl.runtime.guard import set_rewriter
    from safeddl.runtime.plan import Decision, Plan, PlanStep, SessionFacts

    def rewrite(decision: Decision, facts: SessionFacts) -> Plan | None:
        step = decision.statement.steps[0]
        if step.name is None:
            return None
        sql = decision.statement.sql.replace("INDEX", "INDEX CONCURRENTLY", 1)
        return Plan((PlanStep(f"DROP INDEX CONCURRENTLY IF EXISTS {step.name}", True),
                     PlanStep(sql, True)))

    set_rewriter(rewrite)
    try:
        yield
    finally:
        set_rewriter(None)


@pytest.mark.usefixtures("concurrent_rewriter")
def test_rewrite_plan_runs_step_by_step(db: str) -> None:
    policy = Policy(actions={"create-index": "rewrite"})
    with safeddl.psycopg.connect(db, policy=policy, autocommit=True) as conn:
        conn.execute(INDEX_ON_BIG)
        with psycopg.Cursor(conn) as cursor:
            row = cursor.execute("SELECT indisvalid FROM pg_index "
                                 "WHERE indexrelid = 'big_x'::regclass").fetchone()
        assert row == (True,)
    with safeddl.psycopg.connect(db, policy=policy) as conn:  # in a transaction: refused
        with pytest.raises(safeddl.UnsafeStatement, match="autocommit"):
            conn.execute("CREATE INDEX big_x2 ON big (x)")
    assert not index_exists(db, "big_x2")


# --------------------------------------------------------------------------- every version


def test_catalog_facts_on_every_server_version(safeddl_db_each: str) -> None:
    """New / altered / tiny / big tables, the lock timeout and its restore, on each
    PostgreSQL version available (the live catalog queries must run on all of them)."""
    dsn = safeddl_db_each
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, x int)")
        conn.execute(f"INSERT INTO big SELECT g, g FROM generate_series(1, {BIG_ROWS}) g")
        conn.execute("CREATE TABLE small (id int PRIMARY KEY, x int)")
        conn.execute("ANALYZE big")
    with safeddl.psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE fresh (id int, x int)")
        conn.execute(f"INSERT INTO fresh SELECT g, g FROM generate_series(1, {BIG_ROWS}) g")
        conn.execute("ANALYZE fresh")
        conn.execute("CREATE INDEX fresh_x ON fresh (x)")  # new: allowed
        conn.execute("CREATE INDEX small_x ON small (x)")  # tiny: allowed
        conn.execute("ALTER TABLE big ADD COLUMN note text")  # brief: allowed, bounded
        assert show(conn, "lock_timeout") == "3s"
        with pytest.raises(safeddl.UnsafeStatement):  # altered is not new
            conn.execute(INDEX_ON_BIG)
        conn.rollback()
    with safeddl.psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE INDEX CONCURRENTLY big_x ON big (x)")
        assert show(conn, "lock_timeout") == "0"
    assert index_exists(dsn, "big_x") and not index_exists(dsn, "fresh_x")


# --------------------------------------------------------------------------- CALL
# The procedure's body is read from the database (``pg_get_functiondef``): a CALL of
# plain DML is sent, one whose body holds strong locks is judged by the rules of those
# statements, and one whose body cannot be read (dynamic SQL, another language,
# overloads) stays refused as opaque.


@pytest.fixture
def procedures(db: str) -> str:
    with psycopg.connect(db, autocommit=True) as conn:
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
    return db


def value_of(dsn: str, key: int) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT x FROM big WHERE id = %s", [key]).fetchone()
        assert row is not None
        return int(row[0])


def row_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM big").fetchone()
        assert row is not None
        return int(row[0])


@pytest.mark.parametrize("procedure", ["touch", "touch_atomic"])
def test_a_call_of_plain_dml_is_sent(guarded: psycopg.Connection[Any], procedures: str,
                                     procedure: str) -> None:
    before = value_of(procedures, 7)
    guarded.execute(f"CALL {procedure}(7)")
    guarded.commit()
    assert value_of(procedures, 7) == before + 1
    guarded.execute(f"CALL {procedure}(7)")  # in the same transaction again: a known text
    guarded.commit()
    assert value_of(procedures, 7) == before + 2


def test_a_call_whose_body_truncates_is_refused_by_the_truncate_rule(
        guarded: psycopg.Connection[Any], procedures: str) -> None:
    with pytest.raises(safeddl.UnsafeStatement) as refused:
        guarded.execute("CALL empty_big()")
    assert refused.value.rule == "truncate"
    guarded.rollback()
    assert row_count(procedures) == BIG_ROWS


@pytest.mark.parametrize(("sql", "why"), [
    ("CALL dynamic()", "EXECUTE"),
    ("CALL twice(1)", "procedures of that name"),
    ("CALL missing()", "its body is not known"),
])
def test_a_call_whose_body_cannot_be_read_stays_refused(
        guarded: psycopg.Connection[Any], procedures: str, sql: str, why: str) -> None:
    with pytest.raises(safeddl.UnsafeStatement) as refused:
        guarded.execute(sql)
    assert refused.value.rule == "opaque-statement"
    assert why in str(refused.value), str(refused.value)
    guarded.rollback()
    assert row_count(procedures) == BIG_ROWS


def test_a_call_run_over_and_over_reads_the_catalog_once(
        guarded: psycopg.Connection[Any], procedures: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The body is read from the database once per live catalog (kept a short while),
    not at every CALL: a CALL of plain DML is not DDL, and its decision is kept with
    the catalog it was made against."""
    from safeddl.runtime import live_catalog

    reads = []
    real = live_catalog.read_catalog

    def counted(*args: Any, **kwargs: Any) -> live_catalog.LiveCatalog:
        reads.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(live_catalog, "read_catalog", counted)
    before = value_of(procedures, 3)
    for _ in range(20):
        guarded.execute("CALL touch(3)")
        guarded.commit()
    assert value_of(procedures, 3) == before + 20
    assert len(reads) == 1, reads


def test_an_allowed_do_block_with_dynamic_sql_that_commits_runs_in_autocommit(
        db: str) -> None:
    # its locks cannot be read, its COMMIT can: wrapped in a transaction block to bound
    # its lock waits, the server would refuse it (2D000)
    block = ("DO $$ BEGIN EXECUTE 'UPDATE big SET x = x WHERE id = 1'; COMMIT; "
             "UPDATE big SET x = x WHERE id = 2; END $$")
    with psycopg.connect(db, autocommit=True) as conn:
        safeddl.psycopg.install(conn)
        with pytest.raises(safeddl.UnsafeStatement):
            conn.execute(block)  # unreadable: refused unless allowed
        with safeddl.allow("unparsed-statement", reason="reviewed"):
            conn.execute(block)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
