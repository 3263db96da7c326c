"""What does the guard cost on a very large statement? Prints Markdown; asserts nothing.

    python benchmarks/bench_large_statements.py [--megabytes 10] [--rounds 7]
        [--paths psycopg,text,driver-sql] [--forms values,syntax-error,delete-in,select-in]

What it measures: the time one statement of about N MB takes end to end (the client
builds nothing: the text is made before the clock starts; the clock covers the driver
call until it returns or raises), sent unguarded and through the guard with its
default policy, in a transaction that is rolled back afterwards, for each of

- ``values``: ``INSERT INTO t (id, note) VALUES (0, 'row 0; 17'), ...`` (every string
  holds a ``;``, so where the statement ends cannot be read without its quotes),
- ``syntax-error``: the same with `` ((`` at its end (the server refuses it; the
  guard sends it: an INSERT on ``t`` by its head, the server says where it stopped),
- ``delete-in``: ``DELETE FROM t WHERE id IN (10000000, ...) AND note <> '17'``,
- ``select-in``: ``SELECT id FROM t WHERE id IN (...)`` (a query of that size is not
  read by safeddl: "not understood", which ``unparsed_dml = "allow"`` lets through),

and through each of three entry points (``--paths``): raw psycopg 3
(``psycopg.connect`` vs ``safeddl.psycopg.connect``, ``conn.execute(sql)``), SQLAlchemy
``conn.execute(text(sql))`` and SQLAlchemy ``conn.exec_driver_sql(sql)`` (an engine
with ``safeddl.install`` vs a plain twin). Each execution gets a new text (a salt in
it), so no cache helps; caches keep no text that large anyway.

Method. A throwaway PostgreSQL (``safeddl.testing.start_server()``), table ``t``
empty. Every round opens fresh connections (fresh engines) for both twins, so that
a twin does not keep a server backend that happens to run slower for the whole run,
then runs, for each path and form, the unguarded and the guarded statement one after
the other, unguarded first in even rounds and guarded first in odd ones (ABBA), so
that drift and the cost of going first cancel out. A control row sends the psycopg
statements through two unguarded connections the same way: its ratio is what the
machine's noise alone gives. Per execution: wall time (``time.perf_counter``) and the
client's CPU time (``time.process_time``: this process, all threads; psycopg's own
sending included). Then safeddl's decision alone: ``decide()`` on a fresh text of
each form, no server, CPU time.

Reported per path and form, over the rounds: the unguarded and guarded wall time
(median); the guarded/unguarded wall ratio of each round, median [quartiles]; the
client CPU of each twin (median) and the CPU the guard adds as a share of the
unguarded wall time, median [quartiles]: on a loaded machine the least noisy figure
of what the guard costs next to the server (the wall ratio also carries the server's
own variation from one statement to the next); and ``decide()``'s CPU time, median
[quartiles].
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import psycopg
import sqlalchemy
from sqlalchemy import text as sql_text

import safeddl
import safeddl.psycopg
from safeddl.runtime.decision import decide
from safeddl.runtime.plan import SessionFacts
from safeddl.runtime.policy import Policy
from safeddl.testing import start_server
from safeddl.testing.server import sqlalchemy_url_from_dsn


def values(megabytes: float, salt: int) -> str:
    rows, size, i = [], 0, 0
    while size < megabytes * 1_000_000:
        row = f"({i}, 'row {i}; {salt}')"
        rows.append(row)
        size += len(row) + 1
        i += 1
    return "INSERT INTO t (id, note) VALUES " + ",".join(rows)


def in_list(megabytes: float) -> str:
    count = int(megabytes * 1_000_000 / 9)
    return ",".join(str(10_000_000 + i) for i in range(count))


FORMS: dict[str, Callable[[float, int], str]] = {
    "values": values,
    "syntax-error": lambda mb, salt: values(mb, salt) + " ((",
    "delete-in": lambda mb, salt: f"DELETE FROM t WHERE id IN ({in_list(mb)}) "
                                  f"AND note <> '{salt}'",
    "select-in": lambda mb, salt: f"SELECT id FROM t WHERE id IN ({in_list(mb)}) "
                                  f"AND note <> '{salt}'",
}
LABELS = {
    "values": "INSERT ... VALUES",
    "syntax-error": "INSERT ... VALUES, syntax error at the end",
    "delete-in": "DELETE ... WHERE id IN (...)",
    "select-in": "SELECT ... WHERE id IN (...)",
}
PATHS = {"psycopg": "raw psycopg 3", "text": "SQLAlchemy text()",
         "driver-sql": "SQLAlchemy exec_driver_sql()", "control": "control: psycopg, "
         "two unguarded connections"}


@dataclass
class Runs:
    wall: dict[str, list[float]] = field(default_factory=lambda: {"a": [], "b": []})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {"a": [], "b": []})
    ratio: list[float] = field(default_factory=list)
    added_cpu: list[float] = field(default_factory=list)  # share of the unguarded wall


Send = Callable[[str], None]


def timed(send: Send, sql: str) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        send(sql)
    except (psycopg.errors.SyntaxError, sqlalchemy.exc.ProgrammingError):
        pass  # the syntax-error form: the server's refusal is part of the time
    return time.perf_counter() - wall, time.process_time() - cpu


class Twins:
    """One round's connections: ``a`` unguarded, ``b`` guarded (or unguarded too, for
    the control), per path; each send ends with a rollback."""

    def __init__(self, dsn: str, paths: list[str]) -> None:
        self.closers: list[Callable[[], None]] = []
        self.sends: dict[str, tuple[Send, Send]] = {}
        url = sqlalchemy_url_from_dsn(dsn)
        for path in paths:
            if path in ("psycopg", "control"):
                plain = psycopg.connect(dsn)
                other = psycopg.connect(dsn) if path == "control" \
                    else safeddl.psycopg.connect(dsn)
                self.closers += [plain.close, other.close]
                self.sends[path] = (self._psycopg(plain), self._psycopg(other))
            else:
                engines = (sqlalchemy.create_engine(url), sqlalchemy.create_engine(url))
                safeddl.install(engines[1])
                connections = [engine.connect() for engine in engines]
                for engine, connection in zip(engines, connections):
                    self.closers += [connection.close, engine.dispose]
                make = self._text if path == "text" else self._driver_sql
                self.sends[path] = (make(connections[0]), make(connections[1]))

    @staticmethod
    def _psycopg(conn: psycopg.Connection[Any]) -> Send:
        return _rolled_back(conn.execute, conn.rollback)

    @staticmethod
    def _text(conn: sqlalchemy.Connection) -> Send:
        return _rolled_back(lambda sql: conn.execute(sql_text(sql)), conn.rollback)

    @staticmethod
    def _driver_sql(conn: sqlalchemy.Connection) -> Send:
        return _rolled_back(conn.exec_driver_sql, conn.rollback)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


def _rolled_back(execute: Callable[[str], object], rollback: Callable[[], None]) -> Send:
    """Send one statement, then roll back (also when it raised)."""
    def send(sql: str) -> None:
        try:
            execute(sql)
        finally:
            rollback()
    return send


def quartiles(data: list[float]) -> tuple[float, float, float]:
    if len(data) < 2:
        return data[0], data[0], data[0]
    q1, q2, q3 = statistics.quantiles(data, n=4, method="inclusive")
    return q1, q2, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--paths", default="psycopg,text,driver-sql,control")
    parser.add_argument("--forms", default=",".join(FORMS))
    args = parser.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    forms = [f for f in args.forms.split(",") if f]
    unknown = (set(paths) - set(PATHS)) | (set(forms) - set(FORMS))
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    server = start_server()
    runs = {(path, form): Runs() for path in paths for form in forms}
    decisions: dict[str, list[float]] = {form: [] for form in forms}
    salt = 0
    try:
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            admin.execute("CREATE TABLE t (id bigint, note text)")
            server_version = admin.info.server_version // 10000
        started = time.perf_counter()
        for round_number in range(args.rounds):
            twins = Twins(server.dsn, paths)
            try:
                for path in paths:
                    unguarded, guarded = twins.sends[path]
                    for form in forms:
                        salt += 1
                        texts = {"a": FORMS[form](args.megabytes, salt),
                                 "b": FORMS[form](args.megabytes, salt + 500_000)}
                        order = ["a", "b"] if round_number % 2 == 0 else ["b", "a"]
                        measured: dict[str, tuple[float, float]] = {}
                        for which in order:
                            send = unguarded if which == "a" else guarded
                            measured[which] = timed(send, texts[which])
                        del texts
                        run = runs[(path, form)]
                        for which, (wall, cpu) in measured.items():
                            run.wall[which].append(wall)
                            run.cpu[which].append(cpu)
                        (wall_a, cpu_a), (wall_b, cpu_b) = measured["a"], measured["b"]
                        run.ratio.append(wall_b / wall_a)
                        run.added_cpu.append((cpu_b - cpu_a) / wall_a)
            finally:
                twins.close()
            for form in forms:
                salt += 1
                fresh = FORMS[form](args.megabytes, salt)
                cpu = time.process_time()
                decide(fresh, SessionFacts(server_version, True), Policy())
                decisions[form].append(time.process_time() - cpu)
        elapsed = time.perf_counter() - started
    finally:
        server.stop()

    print(f"Python {platform.python_version()}, psycopg {version('psycopg')}, SQLAlchemy "
          f"{version('sqlalchemy')}, sqlglot {version('sqlglot')}, PostgreSQL "
          f"{server_version}; {args.rounds} rounds of {args.megabytes:g} MB statements "
          f"({elapsed:.0f} s).\n")
    print("| path | statement | unguarded | guarded | wall ratio, median [quartiles] "
          "| client CPU unguarded / guarded | CPU added / unguarded wall | decide() CPU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (path, form), run in runs.items():
        q1, ratio, q3 = quartiles(run.ratio)
        c1, added, c3 = quartiles(run.added_cpu)
        d1, decided, d3 = quartiles(decisions[form])
        cpu_a, cpu_b = statistics.median(run.cpu["a"]), statistics.median(run.cpu["b"])
        print(f"| {PATHS[path]} | {LABELS[form]} | {statistics.median(run.wall['a']):.2f} s "
              f"| {statistics.median(run.wall['b']):.2f} s | {ratio:.3f} [{q1:.3f}, {q3:.3f}] "
              f"| {cpu_a * 1000:.0f} / {cpu_b * 1000:.0f} ms "
              f"| {added:+.1%} [{c1:+.1%}, {c3:+.1%}] "
              f"| {decided * 1000:.0f} ms [{d1 * 1000:.0f}, {d3 * 1000:.0f}] |")


if __name__ == "__main__":
    main()
