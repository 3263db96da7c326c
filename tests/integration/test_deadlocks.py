"""Deadlocks on a real server, with threads: two workers run many transactions that
update the same rows of two tables in opposite orders.

- unguarded, PostgreSQL kills some of them (40P01);
- with the ordering guard in refuse mode, the wrong order is caught before it is sent;
- declared transactions in a self-conflicting mode: no deadlock, each transaction
  committed exactly once;
- the code fixed to the canonical order: no deadlock, without serializing.

And a migration altering both tables while the application writes both, in opposite
orders: deadlocks unguarded, not with the canonical order on both sides.

deadlock_timeout is 50 ms for these sessions so that a deadlock costs little; every
session has a statement_timeout, every thread is joined with a timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

import safeddl
import safeddl.psycopg
from safeddl import Policy

pytestmark = [pytest.mark.timeout(90)]

TRANSACTIONS = 20  # per worker
PAUSE_S = 0.005  # between the two updates of a transaction: widens the race
OPTIONS = "-c deadlock_timeout=50ms -c statement_timeout=10s"
REFUSE = Policy(actions={"lock-order": "refuse"})
JOIN_S = 30


@dataclass
class Tally:
    committed: int = 0
    deadlocks: int = 0
    refused: int = 0
    other: list[BaseException] = field(default_factory=list)


Body = Callable[[psycopg.Connection[Any], int], None]


@pytest.fixture
def db(safeddl_db: str) -> str:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        for table in ("a", "b"):
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)")
            conn.execute(f"INSERT INTO {table} (id) VALUES (1), (2)")
        conn.execute("CREATE TABLE done (worker text, n int, PRIMARY KEY (worker, n))")
    return safeddl_db


def update(first: str, second: str) -> Body:
    """A transaction body that updates row 1 of ``first``, then of ``second``."""

    def body(conn: psycopg.Connection[Any], _n: int) -> None:
        conn.execute(f"UPDATE {first} SET v = v + 1 WHERE id = 1")
        time.sleep(PAUSE_S)
        conn.execute(f"UPDATE {second} SET v = v + 1 WHERE id = 1")

    return body


def connect(dsn: str, policy: Policy | None) -> psycopg.Connection[Any]:
    if policy is None:
        return psycopg.connect(dsn, options=OPTIONS)
    return safeddl.psycopg.connect(dsn, policy=policy, options=OPTIONS)


def run_workers(dsn: str, workers: dict[str, tuple[Body, Policy | None, dict[str, str] | None]],
                transactions: int = TRANSACTIONS) -> dict[str, Tally]:
    """Each worker runs ``transactions`` transactions (its body, then a row in ``done``),
    all starting together; declared tables (the third item) use safeddl.transaction()."""
    tallies = {name: Tally() for name in workers}
    barrier = threading.Barrier(len(workers), timeout=JOIN_S)

    def work(name: str, body: Body, policy: Policy | None,
             tables: dict[str, str] | None) -> None:
        tally = tallies[name]
        with connect(dsn, policy) as conn:
            barrier.wait()
            for n in range(transactions):
                try:
                    if tables is not None:
                        with safeddl.transaction(conn, tables=tables, policy=policy) as tx:
                            body(tx, n)
                            tx.execute("INSERT INTO done VALUES (%s, %s)", [name, n])
                    else:
                        body(conn, n)
                        conn.execute("INSERT INTO done VALUES (%s, %s)", [name, n])
                        conn.commit()
                    tally.committed += 1
                except psycopg.errors.DeadlockDetected:
                    tally.deadlocks += 1
                    conn.rollback()
                except safeddl.UnsafeStatement:
                    tally.refused += 1
                    conn.rollback()
                except Exception as exc:  # noqa: BLE001 - reported by the test
                    tally.other.append(exc)
                    conn.rollback()

    threads = [threading.Thread(target=work, args=(name, *spec), daemon=True)
               for name, spec in workers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=JOIN_S)
    assert not any(thread.is_alive() for thread in threads), "a worker did not finish"
    return tallies


def committed_rows(dsn: str) -> tuple[int, int, int]:
    with psycopg.connect(dsn) as conn:
        done = conn.execute("SELECT count(*) FROM done").fetchone()
        a = conn.execute("SELECT v FROM a WHERE id = 1").fetchone()
        b = conn.execute("SELECT v FROM b WHERE id = 1").fetchone()
        assert done is not None and a is not None and b is not None
        return int(done[0]), int(a[0]), int(b[0])


# --------------------------------------------------------------------------- app vs app


def test_opposite_orders_deadlock_unguarded(db: str) -> None:
    tallies = run_workers(db, {"ab": (update("a", "b"), None, None),
                               "ba": (update("b", "a"), None, None)})
    deadlocks = sum(t.deadlocks for t in tallies.values())
    committed = sum(t.committed for t in tallies.values())
    assert not [e for t in tallies.values() for e in t.other]
    assert deadlocks > 0
    assert committed + deadlocks == 2 * TRANSACTIONS
    assert committed_rows(db) == (committed, committed, committed)


def test_guard_refuses_the_wrong_order_before_it_is_sent(db: str) -> None:
    tallies = run_workers(db, {"ab": (update("a", "b"), REFUSE, None),
                               "ba": (update("b", "a"), REFUSE, None)})
    assert not [e for t in tallies.values() for e in t.other]
    assert tallies["ab"].committed == TRANSACTIONS and tallies["ab"].refused == 0
    assert tallies["ba"].refused == TRANSACTIONS and tallies["ba"].committed == 0
    assert sum(t.deadlocks for t in tallies.values()) == 0
    # only the canonical worker's updates reached the server
    assert committed_rows(db) == (TRANSACTIONS, TRANSACTIONS, TRANSACTIONS)


def test_declared_self_conflicting_transactions_never_deadlock(db: str) -> None:
    tables = {"a": "SHARE ROW EXCLUSIVE", "b": "SHARE ROW EXCLUSIVE"}
    tallies = run_workers(db, {"ab": (update("a", "b"), REFUSE, tables),
                               "ba": (update("b", "a"), REFUSE, tables)})
    assert not [e for t in tallies.values() for e in t.other]
    assert sum(t.deadlocks for t in tallies.values()) == 0
    assert sum(t.refused for t in tallies.values()) == 0  # declared: any order inside
    assert [t.committed for t in tallies.values()] == [TRANSACTIONS, TRANSACTIONS]
    total = 2 * TRANSACTIONS
    assert committed_rows(db) == (total, total, total)  # each committed exactly once


def test_code_fixed_to_the_canonical_order_never_deadlocks(db: str) -> None:
    tallies = run_workers(db, {"ab": (update("a", "b"), REFUSE, None),
                               "ab-too": (update("a", "b"), REFUSE, None)})
    assert not [e for t in tallies.values() for e in t.other]
    assert sum(t.deadlocks for t in tallies.values()) == 0
    assert sum(t.refused for t in tallies.values()) == 0
    total = 2 * TRANSACTIONS
    assert committed_rows(db) == (total, total, total)


# --------------------------------------------------------------------------- migration


MIGRATIONS = 8


def migrate(first: str, second: str) -> Body:
    """A migration that adds a column to both tables in one transaction (ACCESS
    EXCLUSIVE on ``first``, then on ``second``), then drops them again in the same order."""

    def body(conn: psycopg.Connection[Any], n: int) -> None:
        conn.execute(f"ALTER TABLE {first} ADD COLUMN extra_{n} int")
        time.sleep(PAUSE_S)
        conn.execute(f"ALTER TABLE {second} ADD COLUMN extra_{n} int")
        conn.commit()
        conn.execute(f"ALTER TABLE {first} DROP COLUMN extra_{n}")
        conn.execute(f"ALTER TABLE {second} DROP COLUMN extra_{n}")

    return body


def run_migration_vs_traffic(db: str, migration: Body, policy: Policy | None,
                             ) -> dict[str, Tally]:
    """The migration runs MIGRATIONS times while two application workers write a then
    b (the canonical order) as fast as they can, until it is done."""
    finished = threading.Event()
    app_tallies = [Tally(), Tally()]

    def app(tally: Tally) -> None:
        with connect(db, policy) as conn:
            while not finished.is_set():
                try:
                    update("a", "b")(conn, 0)
                    conn.commit()
                    tally.committed += 1
                except psycopg.errors.DeadlockDetected:
                    tally.deadlocks += 1
                    conn.rollback()
                except Exception as exc:  # noqa: BLE001 - reported by the test
                    tally.other.append(exc)
                    conn.rollback()

    threads = [threading.Thread(target=app, args=(t,), daemon=True) for t in app_tallies]
    for thread in threads:
        thread.start()
    try:
        migration_tally = run_workers(db, {"migration": (migration, policy, None)},
                                      transactions=MIGRATIONS)["migration"]
    finally:
        finished.set()
        for thread in threads:
            thread.join(timeout=JOIN_S)
    assert not any(thread.is_alive() for thread in threads)
    return {"migration": migration_tally, "app1": app_tallies[0], "app2": app_tallies[1]}


def test_migration_against_traffic_in_opposite_order_deadlocks_unguarded(db: str) -> None:
    tallies = run_migration_vs_traffic(db, migrate("b", "a"), None)
    assert not [e for t in tallies.values() for e in t.other]
    assert sum(t.deadlocks for t in tallies.values()) > 0


def test_migration_in_the_canonical_order_does_not_deadlock(db: str) -> None:
    tallies = run_migration_vs_traffic(db, migrate("a", "b"), REFUSE)
    assert not [e for t in tallies.values() for e in t.other]
    assert sum(t.deadlocks for t in tallies.values()) == 0
    assert tallies["migration"].committed == MIGRATIONS
    assert tallies["app1"].committed + tallies["app2"].committed > 0


def test_guard_refuses_a_migration_in_the_wrong_order(db: str) -> None:
    tallies = run_migration_vs_traffic(db, migrate("b", "a"), REFUSE)
    assert not [e for t in tallies.values() for e in t.other]
    assert sum(t.deadlocks for t in tallies.values()) == 0
    assert tallies["migration"].refused == MIGRATIONS
