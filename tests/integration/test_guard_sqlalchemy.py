"""The runtime guard through SQLAlchemy (sync and async) against a real server: every way
in (install, engine plugin, guard(), allow()) x refuse / warn / allow, bounded lock waits,
no settings leaking to the next pooled checkout, new and tiny tables."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import NoSuchModuleError, ProgrammingError
from sqlalchemy.ext.asyncio import create_async_engine

import safeddl
from safeddl import Policy

pytestmark = [pytest.mark.timeout(120)]

BIG_ROWS = 20_000
INDEX_ON_BIG = "CREATE INDEX big_x ON big (x)"


def _setup(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, x int)")
        conn.execute(f"INSERT INTO big SELECT g, g FROM generate_series(1, {BIG_ROWS}) g")
        conn.execute("CREATE TABLE small (id int PRIMARY KEY, x int)")
        conn.execute("INSERT INTO small SELECT g, g FROM generate_series(1, 10) g")
        conn.execute("ANALYZE big")
        conn.execute("ANALYZE small")


def index_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
        return bool(row and row[0])


def column_exists(dsn: str, table: str, column: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM information_schema.columns "
                           "WHERE table_name = %s AND column_name = %s", [table, column]).fetchone()
        return bool(row and row[0])


def server_default(dsn: str, name: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SHOW {name}").fetchone()
        assert row is not None
        return str(row[0])


@pytest.fixture
def db(safeddl_db: str) -> str:
    _setup(safeddl_db)
    return safeddl_db


@pytest.fixture
def url(db: str, safeddl_db_url: str) -> str:
    return safeddl_db_url


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    eng = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=10)
    try:
        yield eng
    finally:
        eng.dispose()


def _register_plugin() -> None:
    from sqlalchemy.dialects import plugins

    try:
        plugins.load("safeddl")
    except NoSuchModuleError:  # before the entry point is declared in pyproject.toml
        plugins.register("safeddl", "safeddl.integrations.sqlalchemy", "SafeDDLPlugin")


# --------------------------------------------------------------------------- install()


def test_install_refuses_and_never_sends(engine: Engine, db: str) -> None:
    safeddl.install(engine)
    with pytest.raises(safeddl.UnsafeStatement) as info, engine.begin() as conn:
        conn.execute(text(INDEX_ON_BIG))
    assert info.value.rule == "create-index"
    assert "CONCURRENTLY" in (info.value.safe_alternative or "")
    assert not index_exists(db, "big_x")
    with pytest.raises(safeddl.UnsafeStatement), engine.begin() as conn:
        conn.execute(text("ALTER TABLE big ADD COLUMN r float8 DEFAULT random()"))
    assert not column_exists(db, "big", "r")


def test_install_warns(engine: Engine, db: str, caplog: pytest.LogCaptureFixture) -> None:
    safeddl.install(engine, Policy(actions={"create-index": "warn"}))
    with engine.begin() as conn:
        conn.execute(text(INDEX_ON_BIG))
    assert index_exists(db, "big_x")
    assert any(r.levelno == logging.WARNING and "create-index" in r.getMessage()
               for r in caplog.records)


def test_install_allows_by_policy(engine: Engine, db: str,
                                  caplog: pytest.LogCaptureFixture) -> None:
    safeddl.install(engine, Policy(actions={"create-index": "allow"}))
    with engine.begin() as conn:
        conn.execute(text(INDEX_ON_BIG))
    assert index_exists(db, "big_x")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_allow_block_lets_one_rule_pass_and_logs_why(
        engine: Engine, db: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="safeddl")
    safeddl.install(engine)
    with safeddl.allow("create-index", reason="built during the maintenance window"):
        with engine.begin() as conn:
            conn.execute(text(INDEX_ON_BIG))
    assert index_exists(db, "big_x")
    assert "built during the maintenance window" in caplog.text
    with pytest.raises(safeddl.UnsafeStatement):  # only inside the block
        with engine.begin() as conn:
            conn.execute(text("CREATE INDEX big_x2 ON big (x)"))


def test_uninstall(engine: Engine, db: str) -> None:
    safeddl.install(engine)
    safeddl.uninstall(engine)
    with engine.begin() as conn:
        conn.execute(text(INDEX_ON_BIG))
    assert index_exists(db, "big_x")


# --------------------------------------------------------------------------- guard()


def test_guard_block_on_engine(engine: Engine, db: str) -> None:
    with safeddl.guard(engine, Policy()), pytest.raises(safeddl.UnsafeStatement):
        with engine.begin() as conn:
            conn.execute(text(INDEX_ON_BIG))
    assert not index_exists(db, "big_x")
    with engine.begin() as conn:  # outside the block: not guarded
        conn.execute(text(INDEX_ON_BIG))
    assert index_exists(db, "big_x")


def test_guard_block_on_connection_and_error_exit(engine: Engine, db: str) -> None:
    with engine.connect() as conn:
        with pytest.raises(safeddl.UnsafeStatement), safeddl.guard(conn, Policy()):
            conn.execute(text(INDEX_ON_BIG))
        conn.rollback()
        conn.execute(text(INDEX_ON_BIG))  # the block ended (by an error): dormant again
        conn.commit()
    assert index_exists(db, "big_x")


def test_guard_block_warn_and_policy_override(engine: Engine, db: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    safeddl.install(engine)  # refuses; the block's policy wins inside the block
    with safeddl.guard(engine, Policy(actions={"create-index": "warn"})):
        with engine.begin() as conn:
            conn.execute(text(INDEX_ON_BIG))
    assert index_exists(db, "big_x")
    assert "create-index" in caplog.text


def test_guard_block_is_per_thread(engine: Engine, db: str) -> None:
    import threading

    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            with engine.begin() as conn:
                conn.execute(text(INDEX_ON_BIG))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with safeddl.guard(engine, Policy()):
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join(30)
    assert not errors and index_exists(db, "big_x")


# --------------------------------------------------------------------------- plugin


def test_engine_plugin_reads_url_keys(url: str, db: str) -> None:
    _register_plugin()
    eng = create_engine(url + ("&" if "?" in url else "?")
                        + "safeddl_lock_timeout=1500ms&safeddl_warn=create-index",
                        plugins=["safeddl"])
    try:
        assert not any(k.startswith("safeddl_") for k in eng.url.query)
        with eng.begin() as conn:
            conn.execute(text("ALTER TABLE big ADD COLUMN note text"))
            assert conn.execute(text("SHOW lock_timeout")).scalar() == "1500ms"
            conn.execute(text(INDEX_ON_BIG))  # warn, not refuse
        assert index_exists(db, "big_x")
        with pytest.raises(safeddl.UnsafeStatement), eng.begin() as conn:
            conn.execute(text("TRUNCATE big"))
    finally:
        eng.dispose()


def test_engine_plugin_from_url_query_and_kwargs(url: str, db: str) -> None:
    _register_plugin()
    eng = create_engine(url + ("&" if "?" in url else "?") + "plugin=safeddl",
                        safeddl_policy=Policy(lock_timeout="700ms"))
    try:
        with eng.begin() as conn:
            conn.execute(text("ALTER TABLE big ADD COLUMN note text"))
            assert conn.execute(text("SHOW lock_timeout")).scalar() == "700ms"
            with pytest.raises(safeddl.UnsafeStatement):
                conn.execute(text(INDEX_ON_BIG))
    finally:
        eng.dispose()


def test_engine_plugin_bad_setting(url: str) -> None:
    _register_plugin()
    with pytest.raises(safeddl.ConfigError, match="lock_timeout = '0'"):
        create_engine(url + ("&" if "?" in url else "?") + "safeddl_lock_timeout=0",
                      plugins=["safeddl"])


# --------------------------------------------------------------------------- bounded waits


def test_lock_timeout_is_local_inside_a_transaction(engine: Engine, db: str) -> None:
    safeddl.install(engine, Policy(lock_timeout="2s"))
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE big ADD COLUMN note text"))
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "2s"
    with engine.begin() as conn:
        assert conn.execute(text("SHOW lock_timeout")).scalar() == server_default(db,
                                                                                  "lock_timeout")


def test_dml_is_not_bounded_unless_asked(engine: Engine, db: str) -> None:
    safeddl.install(engine)
    default = server_default(db, "lock_timeout")
    with engine.begin() as conn:
        conn.execute(text("UPDATE big SET x = x WHERE id = 1"))
        assert conn.execute(text("SHOW lock_timeout")).scalar() == default
    safeddl.install(engine, Policy(guard_dml_lock_timeout=True, lock_timeout="900ms"))
    with engine.begin() as conn:
        conn.execute(text("UPDATE big SET x = x WHERE id = 1"))
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "900ms"


def test_autocommit_settings_are_restored(engine: Engine, db: str) -> None:
    with psycopg.connect(db, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{admin.info.dbname}" SET statement_timeout = \'45s\'')
    safeddl.install(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ALTER TABLE big ADD COLUMN note text"))
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "0"
        conn.execute(text("CREATE INDEX CONCURRENTLY big_x ON big (x)"))
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "45s"
        source = conn.execute(text("SELECT source FROM pg_settings "
                                   "WHERE name = 'statement_timeout'")).scalar()
        assert source == "database"  # RESET, not a copy of the value
    assert index_exists(db, "big_x")


def test_a_user_session_setting_is_restored_as_it_was(engine: Engine) -> None:
    safeddl.install(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("SET lock_timeout = '8s'"))
        conn.execute(text("ALTER TABLE big ADD COLUMN note text"))
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "8s"


@pytest.mark.parametrize("failure", ["missing table", "lock timeout"])
def test_settings_never_leak_to_the_next_checkout(engine: Engine, db: str, failure: str) -> None:
    safeddl.install(engine, Policy(lock_timeout="300ms"))
    default = server_default(db, "lock_timeout")
    holder = psycopg.connect(db, application_name="holder")
    try:
        if failure == "lock timeout":
            holder.execute("SELECT count(*) FROM big")  # holds ACCESS SHARE, open transaction
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            table = "big" if failure == "lock timeout" else "no_such_table"
            with pytest.raises((safeddl.LockTimeout, ProgrammingError)):
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN note text"))
        with engine.connect() as conn:  # pool_size=1: the same DBAPI connection
            assert conn.execute(text("SHOW lock_timeout")).scalar() == default
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            assert conn.execute(text("SHOW lock_timeout")).scalar() == default
    finally:
        holder.close()


def test_a_connection_whose_settings_cannot_be_restored_is_replaced(
        engine: Engine, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import safeddl.runtime.session as session_module

    safeddl.install(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("SELECT 1"))
        first_pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]

        def broken(session: object) -> None:
            raise psycopg.OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(session_module, "restore_settings", broken)
        # cannot run in a transaction block: on a direct connection it is bounded with a
        # session setting (a transactional statement gets a transaction of its own)
        conn.execute(text("CREATE INDEX CONCURRENTLY big_x_idx ON big (x)"))  # restore fails
    monkeypatch.undo()
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection.info.backend_pid != first_pid  # type: ignore[union-attr]
        assert conn.execute(text("SHOW lock_timeout")).scalar() == server_default(db,
                                                                                  "lock_timeout")
        assert conn.execute(text("SELECT to_regclass('big_x_idx') IS NOT NULL")).scalar()


# --------------------------------------------------------------------------- context


def test_new_table_in_the_same_transaction_is_not_refused(engine: Engine, db: str) -> None:
    safeddl.install(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE fresh (id int, x int)"))
        conn.execute(text(f"INSERT INTO fresh SELECT g, g FROM generate_series(1, {BIG_ROWS}) g"))
        conn.execute(text("ANALYZE fresh"))  # big by its statistics, but nobody can see it
        conn.execute(text("CREATE INDEX fresh_x ON fresh (x)"))
        conn.execute(text("ALTER TABLE fresh ALTER COLUMN x SET NOT NULL"))
    assert index_exists(db, "fresh_x")


def test_table_created_in_a_savepoint_is_new(engine: Engine, db: str) -> None:
    safeddl.install(engine)
    with engine.begin() as conn:
        with conn.begin_nested():
            conn.execute(text("CREATE TABLE fresh (id int, x int)"))
        conn.execute(text(f"INSERT INTO fresh SELECT g, g FROM generate_series(1, {BIG_ROWS}) g"))
        conn.execute(text("ANALYZE fresh"))
        conn.execute(text("CREATE INDEX fresh_x ON fresh (x)"))
    assert index_exists(db, "fresh_x")


def test_a_table_altered_in_the_transaction_is_not_mistaken_for_new(engine: Engine,
                                                                   db: str) -> None:
    safeddl.install(engine)
    with pytest.raises(safeddl.UnsafeStatement), engine.begin() as conn:
        conn.execute(text("ALTER TABLE big ADD COLUMN note text"))  # new pg_class row
        conn.execute(text(INDEX_ON_BIG))
    assert not index_exists(db, "big_x")


def test_tiny_table_is_not_refused(engine: Engine, db: str) -> None:
    safeddl.install(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX small_x ON small (x)"))
        conn.execute(text("TRUNCATE small"))
    assert index_exists(db, "small_x")
    safeddl.install(engine, Policy(small_table_rows=5))
    with pytest.raises(safeddl.UnsafeStatement), engine.begin() as conn:
        conn.execute(text("INSERT INTO small SELECT g, g FROM generate_series(1, 10) g"))
        conn.execute(text("ANALYZE small"))
        conn.execute(text("CREATE INDEX small_x2 ON small (x)"))


def test_metadata_create_all_passes(engine: Engine) -> None:
    from sqlalchemy import Column, ForeignKey, Index, Integer, MetaData, String, Table

    safeddl.install(engine)
    metadata = MetaData()
    parent = Table("parent", metadata, Column("id", Integer, primary_key=True),
                   Column("name", String(50), index=True))
    Table("child", metadata, Column("id", Integer, primary_key=True),
          Column("parent_id", ForeignKey("parent.id")), Index("child_parent", "parent_id"))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(parent.insert().values(name="a"))
    metadata.drop_all(engine)


def test_unparsed_ddl_is_refused(engine: Engine, db: str) -> None:
    safeddl.install(engine)
    with pytest.raises(safeddl.UnsafeStatement) as info, engine.begin() as conn:
        conn.execute(text("DO $$ BEGIN EXECUTE 'ALTER TABLE big ADD COLUMN q int'; END $$"))
    assert info.value.rule == "unparsed-statement"
    assert not column_exists(db, "big", "q")


# --------------------------------------------------------------------------- async


@pytest.mark.parametrize("action", ["refuse", "warn", "allow"])
def test_async_engine(url: str, db: str, action: str) -> None:
    async def scenario() -> Any:
        eng = create_async_engine(url)  # psycopg's async driver
        try:
            safeddl.install(eng, Policy(actions={"create-index": action}))
            async with eng.begin() as conn:
                await conn.execute(text("ALTER TABLE big ADD COLUMN note text"))
                assert (await conn.execute(text("SHOW lock_timeout"))).scalar() == "3s"
                await conn.execute(text(INDEX_ON_BIG))
        finally:
            await eng.dispose()

    if action == "refuse":
        with pytest.raises(safeddl.UnsafeStatement):
            asyncio.run(scenario())
        assert not index_exists(db, "big_x") and not column_exists(db, "big", "note")
    else:
        asyncio.run(scenario())
        assert index_exists(db, "big_x")


def test_async_plugin_guard_allow_and_autocommit_restore(url: str, db: str) -> None:
    _register_plugin()

    async def scenario() -> None:
        eng = create_async_engine(url, plugins=["safeddl"])
        try:
            async with eng.connect() as conn:
                with pytest.raises(safeddl.UnsafeStatement):
                    await conn.execute(text(INDEX_ON_BIG))
                await conn.rollback()
                with safeddl.allow("create-index", reason="async test"):
                    await conn.execute(text(INDEX_ON_BIG))
                await conn.commit()
            auto = eng.execution_options(isolation_level="AUTOCOMMIT")
            async with auto.connect() as conn:
                await conn.execute(text("ALTER TABLE big ADD COLUMN note text"))
                assert (await conn.execute(text("SHOW lock_timeout"))).scalar() == "0"
            async with eng.connect() as conn:  # the block's policy wins inside the block
                with safeddl.guard(conn, Policy(actions={"create-index": "allow"})):
                    await conn.execute(text("CREATE INDEX big_x2 ON big (x)"))
                await conn.commit()
                with pytest.raises(safeddl.UnsafeStatement):
                    await conn.execute(text("CREATE INDEX big_x3 ON big (x)"))
        finally:
            await eng.dispose()

    asyncio.run(scenario())
    assert index_exists(db, "big_x") and column_exists(db, "big", "note")
    assert index_exists(db, "big_x2") and not index_exists(db, "big_x3")


def test_rewrite_without_a_rewriter_refuses_with_the_plan(engine: Engine, db: str) -> None:
    from safeddl.runtime.guard import set_rewriter

    set_rewriter(lambda decision, facts: None)  # a rewriter that never finds an exact plan
    try:
        safeddl.install(engine, Policy(actions={"create-index": "rewrite"}))
        with pytest.raises(safeddl.UnsafeStatement, match="CONCURRENTLY") as info, \
                engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(INDEX_ON_BIG))
    finally:
        set_rewriter(None)
    assert "no exact rewrite" in str(info.value)
    assert not index_exists(db, "big_x")


def test_rewrite_plan_replaces_the_statement(engine: Engine, db: str) -> None:
    from safeddl.runtime.guard import set_rewriter
    from safeddl.runtime.plan import Decision, Plan, PlanStep, SessionFacts

    def rewrite(decision: Decision, facts: SessionFacts) -> Plan | None:
        sql = decision.statement.sql.replace("INDEX", "INDEX CONCURRENTLY", 1)
        return Plan((PlanStep(sql, needs_autocommit=True),))

    set_rewriter(rewrite)
    try:
        safeddl.install(engine, Policy(actions={"create-index": "rewrite"}))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(INDEX_ON_BIG))
    finally:
        set_rewriter(None)
    assert index_exists(db, "big_x")
