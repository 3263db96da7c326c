"""The lock ledger against a real server: what PostgreSQL keeps across savepoints, the
canonical table order and lock upgrades (warn / refuse before sending), row key order
from bound parameters, the long-held strong lock report, the runtime check of work done
under ACCESS EXCLUSIVE, and declared transactions."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

import safeddl
import safeddl.psycopg
from safeddl import Policy
from safeddl.locks import LockMode
from safeddl.runtime.guard import state_of
from safeddl.runtime.ledger import LongHeldLock

pytestmark = [pytest.mark.timeout(60)]

REFUSE = Policy(actions={
    "lock-order": "refuse", "row-lock-order": "refuse"})


def own_locks(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT relation::regclass::text, mode FROM pg_locks WHERE pid = pg_backend_pid() "
        "AND locktype = 'relation' AND relation::regclass::text IN ('a', 'b') ORDER BY 1, 2"
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


@pytest.fixture
def db(safeddl_db: str) -> str:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        for table in ("a", "b"):
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)")
            conn.execute(f"INSERT INTO {table} (id) SELECT g FROM generate_series(1, 10) g")
    return safeddl_db


@pytest.fixture
def engine(db: str, safeddl_db_url: str) -> Iterator[Engine]:
    # statement_timeout: a statement that should have been refused fails instead of hanging
    eng = create_engine(safeddl_db_url, pool_size=2, max_overflow=0, pool_timeout=10,
                        connect_args={"options": "-c statement_timeout=10s"})
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def holder(db: str) -> Iterator[psycopg.Connection[Any]]:
    """A second session; whatever it locks is released at the end."""
    conn = psycopg.connect(db, application_name="holder")
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


# --------------------------------------------------------------------------- the server


def test_server_releases_locks_taken_after_a_savepoint_on_rollback_to(safeddl_db_each: str,
                                                                       ) -> None:
    """What the ledger models: ROLLBACK TO SAVEPOINT releases the table and row locks
    taken after the savepoint (not those held before it); RELEASE keeps them."""
    with psycopg.connect(safeddl_db_each, autocommit=True) as setup:
        setup.execute("CREATE TABLE a (id int PRIMARY KEY, v int)")
        setup.execute("CREATE TABLE b (id int PRIMARY KEY, v int)")
        setup.execute("INSERT INTO a VALUES (1, 0), (2, 0)")
    with psycopg.connect(safeddl_db_each) as conn, \
            psycopg.connect(safeddl_db_each, autocommit=True) as other:
        other.execute("SET lock_timeout = '300ms'")
        conn.execute("UPDATE a SET v = 1 WHERE id = 2")  # before the savepoint
        conn.execute("SAVEPOINT s")
        conn.execute("LOCK TABLE b IN SHARE ROW EXCLUSIVE MODE")
        conn.execute("UPDATE a SET v = 1 WHERE id = 1")
        assert own_locks(conn) == [("a", "RowExclusiveLock"), ("b", "ShareRowExclusiveLock")]
        conn.execute("ROLLBACK TO SAVEPOINT s")
        assert own_locks(conn) == [("a", "RowExclusiveLock")]  # b released, a kept
        other.execute("UPDATE a SET v = 2 WHERE id = 1")  # its row lock is gone too
        with pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute("UPDATE a SET v = 2 WHERE id = 2")  # taken before: still held
        conn.execute("SAVEPOINT t")
        conn.execute("LOCK TABLE b IN SHARE MODE")
        conn.execute("RELEASE SAVEPOINT t")
        assert ("b", "ShareLock") in own_locks(conn)  # RELEASE keeps them
        conn.rollback()


# --------------------------------------------------------------------------- table order


def test_wrong_order_is_refused_before_it_is_sent(engine: Engine,
                                                  holder: psycopg.Connection[Any]) -> None:
    holder.execute("LOCK TABLE a IN ACCESS EXCLUSIVE MODE")  # anything sent on a would wait
    safeddl.install(engine, REFUSE)
    with engine.connect() as conn:
        conn.execute(text("UPDATE b SET v = v + 1 WHERE id = 1"))
        started = time.monotonic()
        with pytest.raises(safeddl.UnsafeStatement) as info:
            conn.execute(text("UPDATE a SET v = v + 1 WHERE id = 1"))
        assert time.monotonic() - started < 1.0  # refused, not waiting 3 s for the lock
        conn.commit()  # nothing was sent: the transaction is not aborted
    error = info.value
    assert error.rule == "lock-order"
    message = str(error)
    assert "not sent" in message
    assert "ROW EXCLUSIVE on a, which comes before b" in message
    assert "UPDATE b SET v = v + 1 WHERE id = 1" in message  # the statement that took b
    alternative = error.safe_alternative or ""
    assert alternative.index("UPDATE a SET") < alternative.index("UPDATE b SET")
    assert '{"a": "ROW EXCLUSIVE", "b": "ROW EXCLUSIVE"}' in alternative
    holder.rollback()
    with psycopg.connect(engine.url.render_as_string(hide_password=False).replace(
            "postgresql+psycopg", "postgresql")) as check:
        assert check.execute("SELECT v FROM b WHERE id = 1").fetchone() == (1,)
        assert check.execute("SELECT v FROM a WHERE id = 1").fetchone() == (0,)


def test_canonical_order_passes_and_policy_order_comes_first(engine: Engine) -> None:
    safeddl.install(engine, REFUSE)
    with engine.begin() as conn:
        conn.execute(text("UPDATE a SET v = v + 1 WHERE id = 1"))
        conn.execute(text("UPDATE b SET v = v + 1 WHERE id = 1"))
        conn.execute(text("UPDATE a SET v = v + 1 WHERE id = 2"))  # held already: fine
    safeddl.install(engine, Policy(actions={"lock-order": "refuse"}, lock_order=["b"]))
    with engine.begin() as conn:
        conn.execute(text("UPDATE b SET v = v + 1 WHERE id = 1"))
        conn.execute(text("UPDATE a SET v = v + 1 WHERE id = 1"))
    with pytest.raises(safeddl.UnsafeStatement, match="lock_order"), engine.begin() as conn:
        conn.execute(text("UPDATE a SET v = v + 1 WHERE id = 1"))
        conn.execute(text("UPDATE b SET v = v + 1 WHERE id = 1"))


def test_default_policy_warns_and_sends(engine: Engine, caplog: pytest.LogCaptureFixture,
                                        ) -> None:
    safeddl.install(engine, Policy())
    with engine.begin() as conn:
        conn.execute(text("UPDATE b SET v = v + 1 WHERE id = 1"))
        conn.execute(text("UPDATE a SET v = v + 1 WHERE id = 1"))
        assert conn.execute(text("SELECT v FROM a WHERE id = 1")).scalar() == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("safeddl: lock-order:") for m in warnings), warnings


def test_allow_block_lets_it_pass(engine: Engine) -> None:
    safeddl.install(engine, REFUSE)
    with safeddl.allow("lock-order", reason="reviewed: no concurrent writer"), \
            engine.begin() as conn:
        conn.execute(text("UPDATE b SET v = v + 1 WHERE id = 1"))
        conn.execute(text("UPDATE a SET v = v + 1 WHERE id = 1"))


def test_each_transaction_starts_a_fresh_ledger(engine: Engine) -> None:
    safeddl.install(engine, REFUSE)
    with engine.connect() as conn:
        conn.execute(text("UPDATE b SET v = v + 1 WHERE id = 1"))
        conn.commit()
        conn.execute(text("UPDATE a SET v = v + 1 WHERE id = 1"))  # a new transaction
        conn.execute(text("UPDATE b SET v = v + 1 WHERE id = 2"))
        conn.rollback()
        conn.execute(text("UPDATE b SET v = v + 1 WHERE id = 1"))
        conn.rollback()
        conn.execute(text("UPDATE a SET v = v + 1 WHERE id = 1"))  # after ROLLBACK too
        conn.commit()


def test_sqlalchemy_savepoint_rollback_forgets_its_locks(engine: Engine) -> None:
    safeddl.install(engine, REFUSE)
    with engine.begin() as conn:
        nested = conn.begin_nested()
        conn.execute(text("UPDATE b SET v = v + 1 WHERE id = 1"))
        nested.rollback()  # PostgreSQL released b
        conn.execute(text("UPDATE a SET v = v + 1 WHERE id = 1"))
    with pytest.raises(safeddl.UnsafeStatement), engine.begin() as conn:
        nested = conn.begin_nested()
        conn.execute(text("UPDATE b SET v = v + 1 WHERE id = 1"))
        nested.commit()  # RELEASE: b stays held
        conn.execute(text("UPDATE a SET v = v + 1 WHERE id = 1"))


def test_psycopg_transaction_blocks_and_commit(db: str) -> None:
    with safeddl.psycopg.connect(db, policy=REFUSE) as conn:
        with conn.transaction():
            with conn.transaction():
                conn.execute("UPDATE b SET v = v + 1 WHERE id = 1")
                raise psycopg.Rollback()  # ROLLBACK TO SAVEPOINT, by psycopg itself
            conn.execute("UPDATE a SET v = v + 1 WHERE id = 1")
            conn.execute("UPDATE b SET v = v + 1 WHERE id = 1")
        conn.execute("UPDATE b SET v = v + 1 WHERE id = 2")
        conn.commit()  # psycopg's own COMMIT: a new transaction, a fresh ledger
        with pytest.raises(safeddl.UnsafeStatement):
            conn.execute("SAVEPOINT s")
            conn.execute("UPDATE b SET v = v + 1 WHERE id = 2")
            conn.execute("RELEASE SAVEPOINT s")
            conn.execute("UPDATE a SET v = v + 1 WHERE id = 3")
        conn.rollback()


def test_lock_upgrade_is_reported(engine: Engine) -> None:
    safeddl.install(engine, REFUSE)
    with pytest.raises(safeddl.UnsafeStatement) as info, engine.begin() as conn:
        conn.execute(text("UPDATE a SET v = v + 1 WHERE id = 1"))
        conn.execute(text("LOCK TABLE a IN SHARE ROW EXCLUSIVE MODE"))
    message = str(info.value)
    assert "lock upgrade" in message
    assert "SHARE ROW EXCLUSIVE on a, which the transaction already holds in ROW EXCLUSIVE" \
        in message
    assert "LOCK TABLE a IN SHARE ROW EXCLUSIVE MODE;" in (info.value.safe_alternative or "")
    with engine.begin() as conn:  # the other way round is no upgrade
        conn.execute(text("LOCK TABLE a IN SHARE ROW EXCLUSIVE MODE"))
        conn.execute(text("UPDATE a SET v = v + 1 WHERE id = 1"))


def test_table_created_in_the_transaction_is_out_of_the_order(engine: Engine) -> None:
    safeddl.install(engine, REFUSE)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE zz (id int)"))
        conn.execute(text("INSERT INTO zz VALUES (1)"))
        conn.execute(text("UPDATE a SET v = v + 1 WHERE id = 1"))


# --------------------------------------------------------------------------- row keys


def test_row_keys_out_of_order_from_bound_parameters(db: str, engine: Engine) -> None:
    update = "UPDATE a SET v = v + 1 WHERE id = %s"
    with safeddl.psycopg.connect(db, policy=REFUSE) as conn:
        conn.execute(update, [3])
        conn.execute(update, [7])
        with pytest.raises(safeddl.UnsafeStatement) as info:
            conn.execute(update, [5])
        assert info.value.rule == "row-lock-order"
        assert "where id = 5 after the transaction locked those where id = 7" in str(info.value)
        conn.execute("UPDATE b SET v = v + 1 WHERE id = %s", [1])  # another table: own order
        conn.rollback()
        with pytest.raises(safeddl.UnsafeStatement, match="earlier in this batch"):
            conn.cursor().executemany(update, [(4,), (2,)])
        conn.rollback()
        batch = [{"id": 9}, {"id": 2}, {"id": 6}]
        conn.cursor().executemany("UPDATE a SET v = v + 1 WHERE id = %(id)s",
                                  safeddl.lock_ordered(batch, key=lambda row: row["id"]))
        conn.commit()
    safeddl.install(engine, REFUSE)
    with pytest.raises(safeddl.UnsafeStatement, match="row-lock-order"), engine.begin() as sa:
        sa.execute(text("SELECT v FROM a WHERE id = :id FOR UPDATE"), {"id": 8})
        sa.execute(text("DELETE FROM a WHERE id = :id"), {"id": 1})


# --------------------------------------------------------------------------- long locks


def test_strong_lock_held_long_is_reported_at_commit(engine: Engine, db: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    seen: list[LongHeldLock] = []
    stop = safeddl.on_long_held_lock(seen.append)
    try:
        safeddl.install(engine, Policy(long_lock_threshold="150ms"))
        with engine.begin() as conn:
            conn.execute(text("LOCK TABLE a IN SHARE MODE"))
            conn.execute(text("UPDATE b SET v = v + 1 WHERE id = 1"))  # ROW EXCLUSIVE: not
            time.sleep(0.3)
        with engine.begin() as conn:  # held briefly: not reported
            conn.execute(text("LOCK TABLE a IN SHARE MODE"))
        with safeddl.psycopg.connect(db, policy=Policy(long_lock_threshold="150ms")) as raw:
            raw.execute("LOCK TABLE b IN ACCESS EXCLUSIVE MODE")
            time.sleep(0.3)
            raw.rollback()  # psycopg's own ROLLBACK
    finally:
        stop()
    assert [(r.relation, r.mode, r.outcome) for r in seen] == [
        ("a", LockMode.SHARE, "commit"), ("b", LockMode.ACCESS_EXCLUSIVE, "rollback")]
    assert all(0.3 <= r.held_seconds < 5 and r.threshold_seconds == 0.15 for r in seen)
    assert seen[0].statement == "LOCK TABLE a IN SHARE MODE"
    records = [r for r in caplog.records if hasattr(r, "safeddl_long_held_lock")]
    assert [r.safeddl_long_held_lock for r in records] == seen  # type: ignore[attr-defined]
    assert "held SHARE on a for 0.3" in records[0].getMessage()


def test_work_under_access_exclusive_is_reported_at_runtime(engine: Engine) -> None:
    safeddl.install(engine, Policy(actions={"statements-after-access-exclusive": "refuse"}))
    with pytest.raises(safeddl.UnsafeStatement) as info, engine.begin() as conn:
        conn.execute(text("ALTER TABLE a ADD COLUMN note text"))
        conn.execute(text("UPDATE a SET note = 'x' WHERE id = 1"))
    assert info.value.rule == "statements-after-access-exclusive"
    assert "COMMIT;  -- releases ACCESS EXCLUSIVE on a" in (info.value.safe_alternative or "")


def test_a_rewritten_statement_is_recorded_as_sent(engine: Engine) -> None:
    # TRUNCATE sent as DELETE takes ROW EXCLUSIVE: the INSERT after it is not work done
    # under ACCESS EXCLUSIVE, and the ledger holds what pg_locks shows.
    safeddl.install(engine, Policy(small_table_rows=1, actions={
        "truncate": "rewrite", "statements-after-access-exclusive": "refuse"}))
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE a"))
        conn.execute(text("INSERT INTO a (id) VALUES (100)"))
        driver = conn.connection.driver_connection
        held = {(lock.relation, lock.mode) for lock in state_of(driver).ledger.locks}
        seen = set(own_locks(driver))
    assert held == {("a", LockMode.ROW_EXCLUSIVE)}
    assert seen == {("a", "RowExclusiveLock")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT array_agg(id) FROM a")).scalar() == [100]


# --------------------------------------------------------------------------- declared


def test_declared_transaction_takes_the_locks_in_canonical_order(engine: Engine) -> None:
    with safeddl.transaction(engine, tables={"b": "SHARE ROW EXCLUSIVE",
                                             "a": "row exclusive"}) as conn:
        ledger = state_of(conn.connection.driver_connection).ledger
        assert [(lock.relation, lock.mode) for lock in ledger.locks] == [
            ("a", LockMode.ROW_EXCLUSIVE), ("b", LockMode.SHARE_ROW_EXCLUSIVE)]
        modes = conn.execute(text(
            "SELECT relation::regclass::text, mode FROM pg_locks WHERE pid = "
            "pg_backend_pid() AND locktype = 'relation' AND relation::regclass::text "
            "IN ('a', 'b') ORDER BY 1")).all()
        assert [tuple(m) for m in modes] == [("a", "RowExclusiveLock"),
                                             ("b", "ShareRowExclusiveLock")]
        conn.execute(text("UPDATE b SET v = 10 WHERE id = 1"))  # held: any order is fine
        conn.execute(text("UPDATE a SET v = 10 WHERE id = 1"))
    with engine.connect() as check:
        assert check.execute(text("SELECT v FROM a WHERE id = 1")).scalar() == 10  # committed


def test_declared_transaction_rolls_back_on_error_and_keeps_checking(engine: Engine) -> None:
    with pytest.raises(ZeroDivisionError), safeddl.transaction(
            engine, tables={"a": "ROW EXCLUSIVE"}) as conn:
        conn.execute(text("UPDATE a SET v = 99 WHERE id = 2"))
        _ = 1 / 0
    with engine.connect() as check:
        assert check.execute(text("SELECT v FROM a WHERE id = 2")).scalar() == 0
    with pytest.raises(safeddl.UnsafeStatement, match="lock-order"), safeddl.transaction(
            engine, tables={"b": "SHARE ROW EXCLUSIVE"}, policy=REFUSE) as conn:
        conn.execute(text("UPDATE a SET v = 1 WHERE id = 1"))  # not declared, before b


def test_declared_lock_wait_is_bounded(engine: Engine, holder: psycopg.Connection[Any],
                                       ) -> None:
    holder.execute("LOCK TABLE b IN ACCESS SHARE MODE")
    holder.execute("UPDATE b SET v = v WHERE id = 1")  # ROW EXCLUSIVE on b
    started = time.monotonic()
    with pytest.raises(safeddl.LockTimeout) as info, safeddl.transaction(
            engine, tables={"a": "EXCLUSIVE", "b": "EXCLUSIVE"},
            policy=Policy(lock_timeout="200ms")):
        pytest.fail("the body must not run")
    assert time.monotonic() - started < 3
    assert info.value.relation == "b"
    assert any(b.application_name == "holder" for b in info.value.blockers)


def test_declared_transaction_on_psycopg_and_bad_modes(db: str) -> None:
    with psycopg.connect(db) as conn:
        with safeddl.transaction(conn, tables={"a": "ShareRowExclusiveLock"}) as same:
            assert same is conn
            same.execute("UPDATE a SET v = 5 WHERE id = 3")
        assert conn.execute("SELECT v FROM a WHERE id = 3").fetchone() == (5,)
        conn.rollback()
        with pytest.raises(safeddl.ConfigError, match=r"tables\['a'\] = 'SHARE ROW EXCLUSIV'"
                           r" is not a lock mode; use one of ACCESS SHARE"), \
                safeddl.transaction(conn, tables={"a": "SHARE ROW EXCLUSIV"}):
            pytest.fail("the body must not run")
        with pytest.raises(safeddl.ConfigError, match="not a table name"), \
                safeddl.transaction(conn, tables={"a.b.c": "SHARE"}):
            pytest.fail("the body must not run")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # nothing sent


def test_threads_do_not_share_a_ledger(engine: Engine) -> None:
    """Two connections of one engine in two threads: each has its own ledger."""
    safeddl.install(engine, REFUSE)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2, timeout=10)

    def work(first: str, second: str) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(text(f"UPDATE {first} SET v = v + 1 WHERE id = 5"))
                barrier.wait()
                if second:
                    conn.execute(text(f"UPDATE {second} SET v = v + 1 WHERE id = 6"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=("b", "")),
               threading.Thread(target=work, args=("a", "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not errors, errors
