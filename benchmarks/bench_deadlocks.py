"""Deadlocks and throughput: two workers update the same row of two tables in opposite
orders. Prints Markdown; asserts nothing.

    python benchmarks/bench_deadlocks.py [--transactions 100] [--deadlock-timeout 200ms]
                                         [--pause-ms 1] [--rounds 3]

A throwaway PostgreSQL (``safeddl.testing.start_server()``). Each worker must commit
``--transactions`` transactions; a transaction killed by a deadlock (40P01) is run again
until it commits (what an application's retry does), so every mode does the same work
and throughput (committed transactions per second) includes the cost of the deadlocks:
each one waits ``deadlock_timeout`` before PostgreSQL breaks it. Modes, in one run:

- unguarded, opposite orders (the bug);
- safeddl, declared transactions: ``safeddl.transaction(conn, tables={"a": "SHARE ROW
  EXCLUSIVE", "b": "SHARE ROW EXCLUSIVE"})`` around the same bodies (serializes them);
- safeddl, canonical order: the code fixed as the lock-order finding says (both workers
  update a, then b), guard in refuse mode;
- for reference, unguarded, canonical order (the guard's own cost).

Each mode runs ``--rounds`` times, interleaved; the table shows the median throughput
and the total deadlocks.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import threading
import time
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import psycopg

import safeddl
import safeddl.psycopg
from safeddl import Policy
from safeddl.testing import start_server

REFUSE = Policy(actions={"lock-order": "refuse"})
DECLARED = {"a": "SHARE ROW EXCLUSIVE", "b": "SHARE ROW EXCLUSIVE"}


@dataclass(frozen=True)
class Mode:
    name: str
    orders: tuple[tuple[str, str], tuple[str, str]]  # each worker's table order
    policy: Policy | None
    declared: dict[str, str] | None = None


MODES = [
    Mode("unguarded, opposite orders", (("a", "b"), ("b", "a")), None),
    Mode("safeddl, declared tables (SHARE ROW EXCLUSIVE)", (("a", "b"), ("b", "a")), REFUSE,
         DECLARED),
    Mode("safeddl, canonical order (code fixed)", (("a", "b"), ("a", "b")), REFUSE),
    Mode("unguarded, canonical order (reference)", (("a", "b"), ("a", "b")), None),
]


@dataclass
class Result:
    seconds: float
    committed: int
    deadlocks: int
    refused: int


def run(dsn: str, mode: Mode, transactions: int, pause: float, options: str) -> Result:
    deadlocks = [0, 0]
    refused = [0, 0]
    committed = [0, 0]
    barrier = threading.Barrier(3, timeout=60)

    def worker(index: int) -> None:
        first, second = mode.orders[index]
        conn: psycopg.Connection[Any]
        if mode.policy is None:
            conn = psycopg.connect(dsn, options=options)
        else:
            conn = safeddl.psycopg.connect(dsn, policy=mode.policy, options=options)

        def body(tx: psycopg.Connection[Any]) -> None:
            tx.execute(f"UPDATE {first} SET v = v + 1 WHERE id = 1")
            if pause:
                time.sleep(pause)
            tx.execute(f"UPDATE {second} SET v = v + 1 WHERE id = 1")

        with conn:
            barrier.wait()
            while committed[index] < transactions:
                try:
                    if mode.declared is not None:
                        with safeddl.transaction(conn, tables=mode.declared,
                                                 policy=mode.policy) as tx:
                            body(tx)
                    else:
                        body(conn)
                        conn.commit()
                    committed[index] += 1
                except psycopg.errors.DeadlockDetected:
                    deadlocks[index] += 1
                    conn.rollback()
                except safeddl.UnsafeStatement:
                    refused[index] += 1
                    conn.rollback()
                    return

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in (0, 1)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join(timeout=600)
    seconds = time.perf_counter() - started
    return Result(seconds, sum(committed), sum(deadlocks), sum(refused))


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS a, b")
        for table in ("a", "b"):
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)")
            conn.execute(f"INSERT INTO {table} (id) VALUES (1), (2)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=100, help="per worker")
    parser.add_argument("--deadlock-timeout", default="200ms")
    parser.add_argument("--pause-ms", type=float, default=1.0,
                        help="between the two updates of a transaction")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    options = f"-c deadlock_timeout={args.deadlock_timeout} -c statement_timeout=60s"
    server = start_server()
    try:
        results: dict[str, list[Result]] = {mode.name: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                reset(server.dsn)
                results[mode.name].append(
                    run(server.dsn, mode, args.transactions, args.pause_ms / 1000, options))
        report(results, args, server.version)
    finally:
        server.stop()


def report(results: dict[str, list[Result]], args: argparse.Namespace,
           server_version: int) -> None:
    print(f"## Deadlock scenario: 2 workers x {args.transactions} transactions, "
          f"same row of two tables\n")
    print(f"PostgreSQL {server_version}, deadlock_timeout {args.deadlock_timeout}, "
          f"{args.pause_ms:g} ms between the two updates, {args.rounds} rounds; "
          f"Python {platform.python_version()}, psycopg {version('psycopg')}, "
          f"safeddl {safeddl.__version__}.\n")
    print("| mode | transactions/s (median) | deadlocks (all rounds) | "
          "committed per round | refused |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        rates = [r.committed / r.seconds for r in runs if r.seconds > 0]
        print(f"| {name} | {statistics.median(rates):.0f} | "
              f"{sum(r.deadlocks for r in runs)} | "
              f"{statistics.median(r.committed for r in runs):.0f} | "
              f"{sum(r.refused for r in runs)} |")
    print("\nA deadlocked transaction is run again until it commits; `refused` counts "
          "transactions the guard stopped before sending their out-of-order statement.")


if __name__ == "__main__":
    main()
