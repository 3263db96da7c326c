"""The full-refresh swap (safeddl.jobs.refresh.swap_in) and the batched backfill
(safeddl.jobs.backfill.backfill) against a real server: readers never see an empty table
nor wait much longer than the lock timeout, the swap retries behind a long reader,
dependants are refused, backfills fill every row in counted batches without blocking a
concurrent writer for long."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

import safeddl
import safeddl.psycopg
from safeddl.jobs.backfill import backfill
from safeddl.jobs.refresh import RefreshRefused, swap_in

pytestmark = [pytest.mark.timeout(60)]

OLD_ROWS = 500
NEW_ROWS = 800

RATES = f"""
CREATE TABLE rates (id serial PRIMARY KEY, code text NOT NULL UNIQUE,
                    rate numeric CONSTRAINT rate_positive CHECK (rate > 0)) WITH (fillfactor = 90);
CREATE INDEX rates_rate ON rates (rate);
COMMENT ON TABLE rates IS 'daily rates';
GRANT SELECT ON rates TO PUBLIC;
INSERT INTO rates (code, rate) SELECT 'old' || g, g FROM generate_series(1, {OLD_ROWS}) g;
"""
NEW_ROWS_SQL = f"SELECT g, 'new' || g, g FROM generate_series(1, {NEW_ROWS}) g"


@pytest.fixture
def db(safeddl_db: str) -> str:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        conn.execute(RATES)
    return safeddl_db


def shape(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        def rows(query: str) -> list[tuple[Any, ...]]:
            return sorted(conn.execute(query).fetchall())

        return {
            "indexes": rows("SELECT c.relname, regexp_replace(pg_get_indexdef(i.indexrelid), "
                            "'^.* USING ', '') FROM pg_index i JOIN pg_class c "
                            "ON c.oid = i.indexrelid WHERE i.indrelid = 'rates'::regclass"),
            "constraints": rows("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                                "WHERE conrelid = 'rates'::regclass AND contype <> 'n'"),
            "grants": rows("SELECT grantee, privilege_type FROM information_schema.table_privileges "
                           "WHERE table_name = 'rates' AND grantee = 'PUBLIC'"),
            "comment": rows("SELECT obj_description('rates'::regclass, 'pg_class')"),
            "options": rows("SELECT reloptions FROM pg_class WHERE oid = 'rates'::regclass"),
            "tables": rows("SELECT relname FROM pg_class WHERE relname LIKE 'rates%' "
                           "AND relkind = 'r'"),
        }


def test_swap_in_replaces_the_rows_and_keeps_the_table_as_it_was(db: str) -> None:
    before = shape(db)
    with psycopg.connect(db) as conn:
        result = swap_in(conn, "rates", NEW_ROWS_SQL)
    assert result.rows == NEW_ROWS and result.attempts == 1
    assert shape(db) == before  # names, constraints, grants, comment, fillfactor
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*), min(code) FROM rates").fetchone() == (NEW_ROWS,
                                                                                     "new1")
        conn.execute("SELECT setval('rates_id_seq', 10000)")
        conn.execute("INSERT INTO rates (code, rate) VALUES ('more', 1)")  # serial still works
        conn.commit()


def test_swap_in_with_a_loader_callable_and_a_guarded_connection(db: str) -> None:
    def load(conn: psycopg.Connection[Any], table: str) -> None:
        with psycopg.Cursor(conn) as cursor:
            cursor.execute(f"INSERT INTO {table} (code, rate) VALUES ('a', 1), ('b', 2)")

    with safeddl.psycopg.connect(db) as conn:
        result = swap_in(conn, "public.rates", load)
    assert result.rows == 2
    assert shape(db)["tables"] == [("rates",)]


def test_readers_never_see_an_empty_table_nor_wait_long(db: str) -> None:
    counts: list[int] = []
    waits: list[float] = []
    stop = threading.Event()

    def read() -> None:
        with psycopg.connect(db, autocommit=True) as reader:
            while not stop.is_set():
                started = time.monotonic()
                row = reader.execute("SELECT count(*) FROM rates").fetchone()
                waits.append(time.monotonic() - started)
                counts.append(row[0] if row else -1)
                time.sleep(0.002)

    def slow_load(conn: psycopg.Connection[Any], table: str) -> None:
        with psycopg.Cursor(conn) as cursor:
            cursor.execute(f"INSERT INTO {table} {NEW_ROWS_SQL}")
        time.sleep(0.5)  # readers keep reading the old rows meanwhile

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        with psycopg.connect(db) as conn:
            swap_in(conn, "rates", slow_load, lock_timeout="300ms")
        time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert set(counts) == {OLD_ROWS, NEW_ROWS}  # never 0, never half loaded
    assert counts.index(NEW_ROWS) > 10 and counts[-1] == NEW_ROWS
    assert max(waits) < 0.3 + 0.5, max(waits)


def test_swap_in_retries_behind_a_long_reader(db: str) -> None:
    holder = psycopg.connect(db)
    holder.execute("SELECT count(*) FROM rates")  # ACCESS SHARE until COMMIT
    timer = threading.Timer(1.0, holder.commit)
    timer.start()
    try:
        with psycopg.connect(db) as conn:
            started = time.monotonic()
            result = swap_in(conn, "rates", NEW_ROWS_SQL, lock_timeout="200ms",
                             backoff_initial="50ms", backoff_max="200ms")
            elapsed = time.monotonic() - started
    finally:
        timer.join(timeout=10)
        holder.close()
    assert result.attempts >= 2
    assert 0.9 < elapsed < 10
    assert result.swap_seconds < 0.2 + 0.5


def test_swap_in_gives_up_after_its_attempts_and_keeps_the_old_table(db: str) -> None:
    with psycopg.connect(db) as holder:
        holder.execute("SELECT count(*) FROM rates")
        with psycopg.connect(db) as conn, pytest.raises(psycopg.errors.LockNotAvailable):
            swap_in(conn, "rates", NEW_ROWS_SQL, lock_timeout="100ms", attempts=2,
                    backoff_initial="10ms")
        holder.rollback()
    assert shape(db)["tables"] == [("rates",)]  # rates_new dropped again
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM rates").fetchone() == (OLD_ROWS,)


@pytest.mark.parametrize(("dependant", "named"), [
    ("CREATE VIEW rates_view AS SELECT * FROM rates", "view rates_view"),
    ("CREATE TABLE quotes (rate_id int REFERENCES rates)", "foreign key quotes_rate_id_fkey"),
    (("CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;"
      "CREATE TRIGGER rates_touch BEFORE INSERT ON rates FOR EACH ROW EXECUTE FUNCTION noop()"),
     "trigger rates_touch"),
])
def test_swap_in_refuses_tables_with_dependants(db: str, dependant: str, named: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(dependant)
    with psycopg.connect(db) as conn, pytest.raises(RefreshRefused) as info:
        swap_in(conn, "rates", NEW_ROWS_SQL)
    assert named in str(info.value)
    assert shape(db)["tables"] == [("rates",)]


# --------------------------------------------------------------------------- backfill

ORDERS_ROWS = 5_000


@pytest.fixture
def orders(safeddl_db: str) -> str:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, price int, quantity int)")
        conn.execute(f"INSERT INTO orders SELECT g, g % 10, 2 FROM generate_series(1, "
                     f"{ORDERS_ROWS}) g")
        conn.execute("ALTER TABLE orders ADD COLUMN total int")
    return safeddl_db


def test_backfill_fills_every_row_in_counted_batches(orders: str) -> None:
    with psycopg.connect(orders) as conn:
        result = backfill(conn, "orders", "total = price * quantity", "total IS NULL",
                          batch_size=1000)
    assert (result.rows, result.batches, result.retries) == (ORDERS_ROWS, 5, 0)
    with psycopg.connect(orders) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE total IS DISTINCT FROM "
                            "price * quantity").fetchone() == (0,)


def test_backfill_does_not_block_a_writer_for_long(orders: str) -> None:
    latencies: list[float] = []
    stop = threading.Event()

    def write() -> None:
        with psycopg.connect(orders, autocommit=True) as writer:
            n = 0
            while not stop.is_set():
                n += 1
                started = time.monotonic()
                writer.execute("UPDATE orders SET quantity = quantity WHERE id = %s",
                               [1 + (n * 37) % ORDERS_ROWS])
                latencies.append(time.monotonic() - started)
                time.sleep(0.002)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        with psycopg.connect(orders) as conn:
            result = backfill(conn, "orders", "total = price * quantity", "total IS NULL",
                              batch_size=250, pause="20ms")
    finally:
        stop.set()
        thread.join(timeout=10)
    # a row the writer moved between the two halves of a batch comes in a later one
    assert result.rows == ORDERS_ROWS and result.batches >= ORDERS_ROWS // 250
    assert len(latencies) > 20
    assert max(latencies) < 0.5, max(latencies)


def test_backfill_retries_a_batch_that_waits_too_long(orders: str) -> None:
    holder = psycopg.connect(orders)
    holder.execute("SELECT * FROM orders WHERE id = 1 FOR UPDATE")  # a pending row, locked
    timer = threading.Timer(0.6, holder.commit)
    timer.start()
    try:
        with psycopg.connect(orders) as conn:
            result = backfill(conn, "orders", "total = price * quantity", "total IS NULL",
                              batch_size=2000, lock_timeout="150ms", attempts=20)
    finally:
        timer.join(timeout=10)
        holder.close()
    assert result.rows == ORDERS_ROWS and result.retries >= 1
