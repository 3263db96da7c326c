"""What holds behind PgBouncer and on Citus: lock-timeout latency, blockers named, leaked
settings. Prints Markdown; asserts nothing.

    python benchmarks/bench_topologies.py [--rounds 5] [--leak-seconds 10]

Needs the ``pgbouncer`` program and the Citus extension (``.ci/run`` installs both);
a topology that is missing is skipped with a note. Servers are throwaway ones
(``safeddl.testing``): PgBouncer 1.18 in transaction and session pooling with a pool of
3 in front of a PostgreSQL server, and a Citus coordinator with two workers.

- **Full pool**: a holder (ACCESS SHARE on ``orders``, in an open transaction) and a
  filler keep two of the three server connections; a guarded ``ALTER TABLE orders ADD
  COLUMN`` (lock_timeout 300 ms) gets the last one, in autocommit and in a transaction:
  how long until ``LockTimeout``, and whether it named the holder.
- **Leaks**: two guarded clients run autocommit DDL (ALTER TABLE, concurrent index
  builds) in a loop while two other clients of the same transaction pool read their
  ``lock_timeout`` / ``statement_timeout``; then the same with the session-level
  ``SET`` / ``RESET`` bound safeddl used to send.
- **Citus**: a reader holds ACCESS SHARE on one shard, on a worker; the guarded ALTER
  of the 200,000-row distributed table, in autocommit and in a transaction.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import psycopg

import safeddl
import safeddl.psycopg
from safeddl import Policy
from safeddl.testing import (
    CitusCluster,
    PgBouncer,
    citus_available,
    fresh_database,
    pgbouncer_available,
    start_server,
)

POLICY = Policy(lock_timeout="300ms", statement_timeout={"default": "20s"})
Conn = psycopg.Connection[tuple[Any, ...]]


def _client(dsn: str, **options: Any) -> Conn:
    return psycopg.connect(dsn, prepare_threshold=None, **options)


def _timeout(connect: Callable[[], Conn], sql: str, holder_pid: int,
             autocommit: bool) -> tuple[float, bool]:
    with connect() as conn:
        start = time.monotonic()
        try:
            conn.execute(sql)
        except safeddl.LockTimeout as error:
            seconds = time.monotonic() - start
            named = holder_pid in [b.pid for b in error.blockers]
            if not autocommit:
                conn.rollback()
            return seconds, named
        raise AssertionError("no lock timeout")


def _row(label: str, samples: list[tuple[float, bool]]) -> str:
    times = [s for s, _ in samples]
    named = sum(1 for _, n in samples if n)
    return (f"| {label} | {statistics.median(times) * 1000:.0f} ms | "
            f"{max(times) * 1000:.0f} ms | {named} of {len(samples)} |")


def full_pool(bouncer: PgBouncer, dsn: str, rounds: int) -> list[str]:
    rows = []
    for autocommit in (True, False):
        samples = []
        for _ in range(rounds):
            with ExitStack() as stack:
                holder = stack.enter_context(_client(dsn, application_name="holder"))
                holder.execute("LOCK TABLE orders IN ACCESS SHARE MODE")
                pid = int(holder.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
                filler = stack.enter_context(_client(dsn))
                filler.execute("SELECT 1")
                samples.append(_timeout(
                    lambda: safeddl.psycopg.connect(dsn, policy=POLICY, prepare_threshold=None,
                                                    autocommit=autocommit),
                    "ALTER TABLE orders ADD COLUMN note text", pid, autocommit))
                holder.rollback()
                filler.rollback()
        mode = "autocommit" if autocommit else "in a transaction"
        rows.append(_row(f"PgBouncer {bouncer.pool_mode}, full pool, {mode}", samples))
    return rows


def leaks(dsn: str, guarded: bool, seconds: float) -> tuple[int, int, int]:
    with _client(dsn, autocommit=True) as setup:
        for table in ("a_orders", "b_orders"):
            setup.execute(f"CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY, total int)")
    stop = threading.Event()
    counts = {"observations": 0, "leaks": 0, "statements": 0}
    lock = threading.Lock()

    def observe() -> None:
        with _client(dsn, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute("SELECT current_setting('lock_timeout'), "
                                   "current_setting('statement_timeout')").fetchone()
                assert row is not None
                with lock:
                    counts["observations"] += 2
                    counts["leaks"] += sum(1 for value in row if value != "0")

    def ddl(table: str) -> None:
        loop = (f"ALTER TABLE {table} ADD COLUMN note text",
                f"CREATE INDEX CONCURRENTLY {table}_total_idx ON {table} (total)",
                f"ALTER TABLE {table} DROP COLUMN note",
                f"DROP INDEX CONCURRENTLY {table}_total_idx")
        connect = ((lambda: safeddl.psycopg.connect(dsn, policy=POLICY, autocommit=True,
                                                    prepare_threshold=None))
                   if guarded else (lambda: _client(dsn, autocommit=True)))
        with connect() as conn:
            while not stop.is_set():
                for sql in loop:
                    if not guarded:
                        conn.execute("SET lock_timeout = '1s'")
                        conn.execute("SET statement_timeout = '4s'")
                    conn.execute(sql)
                    if not guarded:
                        conn.execute("RESET lock_timeout")
                        conn.execute("RESET statement_timeout")
                    with lock:
                        counts["statements"] += 1

    threads = [threading.Thread(target=observe, daemon=True) for _ in range(2)]
    threads += [threading.Thread(target=ddl, args=(t,), daemon=True)
                for t in ("a_orders", "b_orders")]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(30)
    return counts["leaks"], counts["observations"], counts["statements"]


def _orders(dsn: str, distributed: bool = False) -> None:
    with _client(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (account_id bigint NOT NULL, id bigint NOT NULL, "
                     "total int, PRIMARY KEY (account_id, id))")
        if distributed:
            conn.execute("SELECT create_distributed_table('orders', 'account_id')")
        conn.execute("INSERT INTO orders SELECT g % 64, g, g FROM generate_series(1, 200000) g")
        conn.execute("ANALYZE orders")


def citus(rounds: int) -> list[str]:
    rows = []
    with CitusCluster(workers=2) as cluster:
        _orders(cluster.dsn, distributed=True)
        worker = cluster.worker_servers[0]
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            shard = conn.execute("SELECT shard_name FROM citus_shards WHERE table_name = "
                                 "'orders'::regclass AND nodeport = %s LIMIT 1",
                                 [worker.port]).fetchone()[0]  # type: ignore[index]
        for autocommit in (True, False):
            samples = []
            for _ in range(rounds):
                with psycopg.connect(worker.dsn) as holder:
                    holder.execute(f"SELECT count(*) FROM {shard}")
                    pid = int(holder.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
                    samples.append(_timeout(
                        lambda: safeddl.psycopg.connect(cluster.dsn, policy=POLICY,
                                                        autocommit=autocommit),
                        "ALTER TABLE orders ADD COLUMN note text", pid, autocommit))
                    holder.rollback()
            mode = "autocommit" if autocommit else "in a transaction"
            rows.append(_row(f"Citus, blocker on a worker, {mode}", samples))
        # what a session-level bound did there: not forwarded, the wait ran to the
        # coordinator's statement_timeout
        with psycopg.connect(worker.dsn) as holder, \
                psycopg.connect(cluster.dsn, autocommit=True) as conn:
            holder.execute(f"SELECT count(*) FROM {shard}")
            conn.execute("SET lock_timeout = '300ms'")
            conn.execute("SET statement_timeout = '3s'")
            start = time.monotonic()
            try:
                conn.execute("ALTER TABLE orders ADD COLUMN note text")
            except psycopg.Error as error:
                rows.append(f"| Citus, session-level SET lock_timeout (before) | "
                            f"{(time.monotonic() - start) * 1000:.0f} ms "
                            f"({type(error).__name__}: the 3 s statement_timeout) | | no |")
            holder.rollback()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--leak-seconds", type=float, default=10.0)
    args = parser.parse_args()
    latency = ["| topology | LockTimeout after (median) | max | holder named |",
               "|---|---:|---:|---:|"]
    leak_rows = ["| clients of a transaction pool of 3 | leaked observations | "
                 "DDL statements |", "|---|---:|---:|"]
    if pgbouncer_available():
        server = start_server()
        try:
            for mode in ("transaction", "session"):
                with PgBouncer(server, pool_mode=mode, pool_size=3) as bouncer, \
                        fresh_database(server.dsn) as database:
                    name = psycopg.conninfo.conninfo_to_dict(database)["dbname"]
                    dsn = bouncer.dsn_for(str(name))
                    _orders(dsn)
                    latency += full_pool(bouncer, dsn, args.rounds)
                    if mode == "transaction":
                        for guarded in (True, False):
                            with fresh_database(server.dsn) as other:
                                other_dsn = bouncer.dsn_for(str(
                                    psycopg.conninfo.conninfo_to_dict(other)["dbname"]))
                                leaked, seen, statements = leaks(other_dsn, guarded,
                                                                 args.leak_seconds)
                            label = ("safeddl (SET LOCAL in a transaction of its own)"
                                     if guarded else "session-level SET / RESET (before)")
                            leak_rows.append(f"| {label} | {leaked:,} of {seen:,} | "
                                             f"{statements:,} |")
        finally:
            server.stop()
    else:
        latency.append("| PgBouncer | not installed | | |")
    if citus_available():
        latency += citus(args.rounds)
    else:
        latency.append("| Citus | not installed | | |")
    print("\n".join(latency))
    print()
    print("\n".join(leak_rows))


if __name__ == "__main__":
    main()
