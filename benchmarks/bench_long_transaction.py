"""Does a statement cost more the longer its transaction? Prints Markdown; asserts nothing.

    python benchmarks/bench_long_transaction.py [--statements 100000] [--literal]

A data migration shape: one transaction takes ACCESS EXCLUSIVE (``ALTER TABLE ... ADD
COLUMN``) and then runs many statements (an UPDATE by key, ascending keys: bound
parameters, or with ``--literal`` a distinct text per statement, as code that inlines
values sends). Guarded (default policy: lock ledger on, ``statements-after-access-
exclusive`` warns) and unguarded, on a throwaway PostgreSQL; reported per block of
statements: µs per statement (wall), and the process's resident memory after it. A
guard whose per-transaction state grows with the transaction shows rising numbers (the
literal texts also fill the guard's caches, up to their bounds: see the README).
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from typing import Any

import psycopg

import safeddl
import safeddl.psycopg
from safeddl.testing import start_server


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * 4096 / 2**20


def block(conn: psycopg.Connection[Any], table: str, first: int, count: int,
          literal: bool) -> float:
    """µs per statement of ``count`` UPDATEs by ascending key from ``first``."""
    started = time.perf_counter()
    for i in range(first, first + count):
        if literal:
            conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = {i + 1}")
        else:
            conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s", (i + 1,))
    return (time.perf_counter() - started) / count * 1e6


def run(plain: psycopg.Connection[Any], guarded: psycopg.Connection[Any], statements: int,
        literal: bool, blocks: int) -> list[tuple[int, float, float, float]]:
    """Both transactions open side by side (each on its own table), blocks alternated so
    that load on the machine hits both alike."""
    out = []
    plain.execute("ALTER TABLE items_plain ADD COLUMN note text")
    guarded.execute("ALTER TABLE items_guarded ADD COLUMN note text")
    per_block = statements // blocks
    for number in range(blocks):
        first = number * per_block
        if number % 2 == 0:
            plain_us = block(plain, "items_plain", first, per_block, literal)
            guarded_us = block(guarded, "items_guarded", first, per_block, literal)
        else:
            guarded_us = block(guarded, "items_guarded", first, per_block, literal)
            plain_us = block(plain, "items_plain", first, per_block, literal)
        out.append((first + per_block, plain_us, guarded_us, rss_mib()))
    plain.rollback()
    guarded.rollback()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--statements", type=int, default=100_000)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--literal", action="store_true",
                        help="a distinct statement text each time (values inlined)")
    args = parser.parse_args(argv)
    logging.getLogger("safeddl").setLevel(logging.ERROR)  # the one warning is expected
    server = start_server()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as setup:
            for table in ("items_plain", "items_guarded"):
                setup.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL)")
                setup.execute(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(1, "
                              f"{args.statements}) g")
                setup.execute(f"VACUUM ANALYZE {table}")
        rss_before = rss_mib()
        with psycopg.connect(server.dsn) as plain, \
                safeddl.psycopg.connect(server.dsn, policy=safeddl.Policy()) as guarded:
            results = run(plain, guarded, args.statements, args.literal, args.blocks)
    finally:
        server.stop()
    kind = "a distinct literal text each" if args.literal else "bound parameters"
    print(f"# {args.statements:,} statements in one transaction after ACCESS EXCLUSIVE "
          f"({kind}; PostgreSQL {server.version}, Python {platform.python_version()})\n")
    print(f"Both transactions open side by side, blocks alternated; resident memory of the "
          f"process (both connections) before: {rss_before:.0f} MiB.\n")
    print("| statements so far | µs/statement unguarded | µs/statement guarded "
          "| resident MiB after the block |")
    print("|---:|---:|---:|---:|")
    for done, plain_us, guarded_us, mib in results:
        print(f"| {done:,} | {plain_us:.0f} | {guarded_us:.0f} | {mib:.0f} |")


if __name__ == "__main__":
    main()
