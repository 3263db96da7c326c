"""What does the guard cost on a very large statement? Prints a Markdown table; asserts
nothing.

    python benchmarks/bench_large_statements.py [--megabytes 10] [--repeat 3]

A throwaway PostgreSQL (``safeddl.testing.start_server()``). Each statement is sent
through psycopg 3 unguarded and through ``safeddl.psycopg.connect`` (a new text each
time, so that no cached decision helps), in a transaction that is rolled back; best of
``--repeat`` runs each:

- an ``INSERT ... VALUES`` of about N MB (integers and strings, some holding ``;``),
- the same with a syntax error at its end,
- a ``DELETE ... WHERE id IN (...)`` of about N MB.

The two connections take turns going first (the server's own time varies from one
statement to the next); the last column is safeddl's decision alone (``decide()`` on
the text, no server), best of the runs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import psycopg

import safeddl.psycopg
from safeddl.runtime.decision import decide
from safeddl.runtime.plan import SessionFacts
from safeddl.runtime.policy import Policy
from safeddl.testing import start_server


def values(megabytes: float, salt: int) -> str:
    rows, size, i = [], 0, 0
    while size < megabytes * 1_000_000:
        row = f"({i}, 'row {i}; {salt}')"
        rows.append(row)
        size += len(row) + 1
        i += 1
    return "INSERT INTO t (id, note) VALUES " + ",".join(rows)


def in_list(megabytes: float, salt: int) -> str:
    count = int(megabytes * 1_000_000 / 8)
    ids = ",".join(str(10_000_000 + i) for i in range(count))
    return f"DELETE FROM t WHERE id IN ({ids}) AND note <> '{salt}'"


CASES: dict[str, Callable[[float, int], str]] = {
    "INSERT ... VALUES": values,
    "INSERT ... VALUES with a syntax error at the end": lambda mb, s: values(mb, s) + " ((",
    "DELETE ... WHERE id IN (...)": in_list,
}


def timed(conn: psycopg.Connection[Any], text: str) -> float:
    started = time.perf_counter()
    try:
        conn.execute(text.encode())
    except psycopg.errors.SyntaxError:
        pass
    elapsed = time.perf_counter() - started
    conn.rollback()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=float, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    server = start_server()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            admin.execute("CREATE TABLE t (id bigint, note text)")
        plain = psycopg.connect(server.dsn)
        guarded = safeddl.psycopg.connect(server.dsn)
        print(f"| statement ({args.megabytes:g} MB) | unguarded | guarded | ratio "
              "| safeddl's decision |")
        print("|---|---:|---:|---:|---:|")
        salt = 0
        for label, make in CASES.items():
            best = {"plain": float("inf"), "guarded": float("inf"), "decide": float("inf")}
            for run in range(args.repeat):
                pair = [("plain", plain), ("guarded", guarded)]
                for which, conn in pair if run % 2 == 0 else pair[::-1]:
                    salt += 1
                    text = make(args.megabytes, salt)
                    best[which] = min(best[which], timed(conn, text))
                text = make(args.megabytes, salt + 1000)
                started = time.perf_counter()
                decide(text, SessionFacts(18, True), Policy())
                best["decide"] = min(best["decide"], time.perf_counter() - started)
            print(f"| {label} | {best['plain']:.2f} s | {best['guarded']:.2f} s | "
                  f"{best['guarded'] / best['plain']:.2f} | {best['decide']:.3f} s |")
        plain.close()
        guarded.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
