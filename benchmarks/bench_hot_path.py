"""What does the runtime guard cost on ordinary traffic? Prints Markdown; asserts nothing.

    python benchmarks/bench_hot_path.py [--block 40] [--rounds 60]

A throwaway PostgreSQL (``safeddl.testing.start_server()``) serves a realistic DML mix,
one transaction per unit of work: a point SELECT by key, an INSERT, an UPDATE by key
and a two-table join. Measured in one run, as pairs:

- SQLAlchemy engine, unguarded vs guarded (``safeddl.install(engine)``);
- raw psycopg connection, unguarded vs guarded (``safeddl.psycopg.connect``);
- for reference, SQLAlchemy unguarded vs an engine with one empty
  ``before_cursor_execute`` listener: what any hook on SQLAlchemy's connection events
  costs.

Each round runs a pair as ABBA blocks (unguarded, guarded, guarded, unguarded; BAAB
every other round) so that drift within a round and the cost of going first cancel out
and bursts of load on a shared machine hit both sides alike. Reported per pair:
throughput (units/s, median round), the guarded/unguarded throughput ratio (goal >=
0.98) as the trimmed geometric mean and the median [quartiles] of the per-round ratios,
and the added cost per statement on a cache hit in wall time and in client CPU time
(``time.thread_time``: the guard runs in the client); then the guard itself timed in a
tight loop on an already-seen statement.

The guard runs with ``safeddl.Policy.from_sources()``: the defaults, or what
``SAFEDDL_*`` variables set. The defaults keep a lock ledger of every transaction
(writes are checked for lock order); to measure the guard without it::

    SAFEDDL_LONG_LOCK_THRESHOLD=0 \
    SAFEDDL_ACTIONS=lock-order=allow,row-lock-order=allow,statements-after-access-exclusive=allow \
    python benchmarks/bench_hot_path.py
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import psycopg
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

import safeddl
import safeddl.psycopg
from safeddl.testing import start_server

CUSTOMERS = 10_000
ORDERS = 50_000
STATEMENTS_PER_UNIT = 4

metadata = MetaData()
customers = Table("customers", metadata, Column("id", Integer, primary_key=True),
                  Column("name", String(60), nullable=False))
orders = Table("orders", metadata, Column("id", Integer, primary_key=True),
               Column("customer_id", Integer, nullable=False),
               Column("status", String(20), nullable=False),
               Column("total", Integer, nullable=False))

POINT_SELECT = select(customers.c.name).where(customers.c.id == bindparam("cid"))
INSERT_ORDER = insert(orders).values(id=bindparam("oid"), customer_id=bindparam("cid"),
                                     status="open", total=0)
UPDATE_ORDER = (update(orders).where(orders.c.id == bindparam("key"))
                .values(total=orders.c.total + 1))
JOIN = (select(orders.c.id, customers.c.name)
        .join_from(orders, customers, orders.c.customer_id == customers.c.id)
        .where(orders.c.customer_id == bindparam("cid")).limit(5))

RAW_POINT_SELECT = "SELECT name FROM customers WHERE id = %s"
RAW_INSERT = "INSERT INTO orders (id, customer_id, status, total) VALUES (%s, %s, 'open', 0)"
RAW_UPDATE = "UPDATE orders SET total = total + 1 WHERE id = %s"
RAW_JOIN = ("SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id "
            "WHERE o.customer_id = %s LIMIT 5")


class Keys:
    """Fresh order ids for INSERTs; random existing keys for the rest."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.next_order = ORDERS + 1

    def new_order(self) -> int:
        self.next_order += 1
        return self.next_order

    def customer(self) -> int:
        return self.random.randint(1, CUSTOMERS)

    def order(self) -> int:
        return self.random.randint(1, ORDERS)


def sqlalchemy_unit(engine: Engine, keys: Keys) -> None:
    with engine.begin() as conn:
        cid = keys.customer()
        conn.execute(POINT_SELECT, {"cid": cid}).scalar()
        conn.execute(INSERT_ORDER, {"oid": keys.new_order(), "cid": cid})
        conn.execute(UPDATE_ORDER, {"key": keys.order()})
        conn.execute(JOIN, {"cid": cid}).all()


def psycopg_unit(conn: psycopg.Connection[Any], keys: Keys) -> None:
    cid = keys.customer()
    conn.execute(RAW_POINT_SELECT, (cid,)).fetchone()
    conn.execute(RAW_INSERT, (keys.new_order(), cid))
    conn.execute(RAW_UPDATE, (keys.order(),))
    conn.execute(RAW_JOIN, (cid,)).fetchall()
    conn.commit()


@dataclass
class Variant:
    name: str
    unit: Callable[[Keys], None]
    keys: Keys
    seconds: list[float]
    cpu_seconds: list[float]


def setup_schema(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS orders, customers")
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name varchar(60) NOT NULL)")
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL, "
                     "status varchar(20) NOT NULL, total int NOT NULL)")
        conn.execute("CREATE INDEX orders_customer_id ON orders (customer_id)")
        conn.execute(f"INSERT INTO customers SELECT g, 'customer ' || g "
                     f"FROM generate_series(1, {CUSTOMERS}) g")
        conn.execute(f"INSERT INTO orders SELECT g, 1 + g % {CUSTOMERS}, 'open', 0 "
                     f"FROM generate_series(1, {ORDERS}) g")
        conn.execute("VACUUM ANALYZE customers")
        conn.execute("VACUUM ANALYZE orders")


@dataclass
class Pair:
    """An unguarded and a guarded variant measured against each other."""

    plain: Variant
    guarded: Variant
    ratios: list[float]  # per round: plain time / guarded time
    added_wall: list[float]  # per round: µs per statement
    added_cpu: list[float]


def measure(pair: Pair, block: int, rounds: int) -> None:
    """ABBA then BAAB blocks of ``block`` units: drift within a round and the cost of
    coming first (colder caches) cancel out; caches stay warm within a block, as in an
    application running one stack."""
    statements = 2 * block * STATEMENTS_PER_UNIT
    for number in range(rounds):
        wall = {id(pair.plain): 0.0, id(pair.guarded): 0.0}
        cpu = dict(wall)
        a, b = (pair.plain, pair.guarded) if number % 2 == 0 else (pair.guarded, pair.plain)
        for variant in (a, b, b, a):
            started, cpu_started = time.perf_counter(), time.thread_time()
            for _unit in range(block):
                variant.unit(variant.keys)
            wall[id(variant)] += time.perf_counter() - started
            cpu[id(variant)] += time.thread_time() - cpu_started
        plain_s, guarded_s = wall[id(pair.plain)], wall[id(pair.guarded)]
        pair.plain.seconds.append(plain_s / (2 * block))
        pair.guarded.seconds.append(guarded_s / (2 * block))
        pair.plain.cpu_seconds.append(cpu[id(pair.plain)] / (2 * block))
        pair.ratios.append(plain_s / guarded_s)
        pair.added_wall.append((guarded_s - plain_s) / statements * 1e6)
        pair.added_cpu.append((cpu[id(pair.guarded)] - cpu[id(pair.plain)]) / statements * 1e6)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4)
    return q1, median, q3


def trimmed_geometric_mean(ratios: list[float], trim: float = 0.1) -> float:
    """The typical ratio: geometric mean without the 10% most extreme at each end."""
    ordered = sorted(ratios)
    cut = int(len(ordered) * trim)
    kept = ordered[cut: len(ordered) - cut] or ordered
    return statistics.geometric_mean(kept)


def time_calls(call: Callable[[], object], repeat: int = 200_000) -> float:
    """µs per call, best of 5 batches."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _i in range(repeat):
            call()
        best = min(best, (time.perf_counter() - started) / repeat)
    return best * 1e6


def sqlalchemy_check_cost(engine: Engine) -> tuple[float, float]:
    """µs per call of the engine hook's ``do_execute`` on a seen statement, and of the
    dialect's own ``do_execute`` it stands in for, both with a no-op cursor."""
    from safeddl.integrations.sqlalchemy import hook_for

    hook = hook_for(engine)
    compiled = str(POINT_SELECT.compile(engine))
    with engine.connect() as conn:
        conn.execute(POINT_SELECT, {"cid": 1})  # now a known plain statement
    assert hook.guard is not None and hook.guard.passes(compiled, hook.server_version or 0)

    class NoopCursor:
        def execute(self, statement: str, parameters: object = None) -> None:
            return None

    cursor, params, context = NoopCursor(), {"cid": 1}, object()
    guarded = time_calls(lambda: hook.do_execute(cursor, compiled, params, context))
    own = time_calls(lambda: engine.dialect.do_execute(cursor, compiled, params,  # type: ignore[arg-type]
                                                       None))
    return guarded, own


def psycopg_check_cost(conn: psycopg.Connection[Any]) -> tuple[float, float]:
    """µs per ``execute`` of a guarded cursor class and of its unguarded base, both over
    a no-op base cursor (so only the guard's own work differs), on a seen statement."""
    from safeddl.integrations.psycopg import GuardedCursorMixin

    conn.execute(RAW_POINT_SELECT, (1,))  # now a known plain statement
    conn.commit()

    class NoopCursor:
        def __init__(self, connection: psycopg.Connection[Any]) -> None:
            self._conn = connection  # as psycopg's BaseCursor

        @property
        def connection(self) -> psycopg.Connection[Any]:
            return self._conn

        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            return self

    class GuardedNoopCursor(GuardedCursorMixin, NoopCursor):
        pass

    plain, guarded = NoopCursor(conn), GuardedNoopCursor(conn)
    params = (1,)
    return (time_calls(lambda: guarded.execute(RAW_POINT_SELECT, params)),
            time_calls(lambda: plain.execute(RAW_POINT_SELECT, params)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--block", type=int, default=40, help="units of work per block")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    server = start_server()
    try:
        report(server.dsn, server.sqlalchemy_url, server.version, args.block, args.rounds,
               args.seed)
    finally:
        server.stop()


def report(dsn: str, url: str, server_version: int, block: int, rounds: int, seed: int) -> None:
    setup_schema(dsn)
    policy = safeddl.Policy.from_sources()
    plain_engine = create_engine(url, pool_size=1)
    guarded_engine = create_engine(url, pool_size=1)
    safeddl.install(guarded_engine, policy)
    listener_engine = create_engine(url, pool_size=1)
    event.listen(listener_engine, "before_cursor_execute", lambda *args: None)
    plain_conn = psycopg.connect(dsn)
    guarded_conn = safeddl.psycopg.connect(dsn, policy=policy)
    keys = [Keys(seed + i) for i in range(5)]
    for i, k in enumerate(keys):
        k.next_order = ORDERS + 1 + i * 10_000_000

    def variant(name: str, unit: Callable[[Keys], None], key: Keys) -> Variant:
        return Variant(name, unit, key, [], [])

    sqlalchemy_plain = variant("SQLAlchemy", lambda k: sqlalchemy_unit(plain_engine, k), keys[0])
    pairs = [
        Pair(sqlalchemy_plain, variant("SQLAlchemy + safeddl",
                                       lambda k: sqlalchemy_unit(guarded_engine, k), keys[1]),
             [], [], []),
        Pair(variant("psycopg", lambda k: psycopg_unit(plain_conn, k), keys[2]),
             variant("psycopg + safeddl", lambda k: psycopg_unit(guarded_conn, k), keys[3]),
             [], [], []),
        Pair(sqlalchemy_plain,
             variant("SQLAlchemy + one empty event listener (reference)",
                     lambda k: sqlalchemy_unit(listener_engine, k), keys[4]), [], [], []),
    ]
    for pair in pairs:  # warm-up: caches, prepared statements, pools
        measure(pair, block, 2)
    for pair in pairs:
        pair.plain.seconds.clear()
        pair.plain.cpu_seconds.clear()
        pair.guarded.seconds.clear()
        pair.ratios.clear()
        pair.added_wall.clear()
        pair.added_cpu.clear()
    for pair in pairs:
        measure(pair, block, rounds)
    sqlalchemy_hook_us, dialect_us = sqlalchemy_check_cost(guarded_engine)
    psycopg_guarded_us, psycopg_plain_us = psycopg_check_cost(guarded_conn)

    print(f"# Hot path: guarded vs unguarded (PostgreSQL {server_version}, Python "
          f"{platform.python_version()}, SQLAlchemy {version('sqlalchemy')}, psycopg "
          f"{version('psycopg')})\n")
    print(f"{rounds} rounds of ABBA / BAAB blocks of {block} units per pair; one unit = one "
          f"transaction of {STATEMENTS_PER_UNIT} statements (point SELECT, INSERT, UPDATE by "
          "key, join). Median over rounds, [quartiles].\n")
    print("| stack | units/s unguarded | units/s guarded | throughput ratio guarded/unguarded "
          "(trimmed geometric mean) | ratio: median [quartiles] "
          "| µs/statement unguarded (wall / client CPU) "
          "| added µs/statement (wall) | added µs/statement (client CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for pair in pairs:
        q1, ratio, q3 = quartiles(pair.ratios)
        typical = trimmed_geometric_mean(pair.ratios)
        w1, wall, w3 = quartiles(pair.added_wall)
        c1, cpu, c3 = quartiles(pair.added_cpu)
        plain_s = statistics.median(pair.plain.seconds)
        guarded_s = statistics.median(pair.guarded.seconds)
        print(f"| {pair.guarded.name} | {1 / plain_s:,.0f} | {1 / guarded_s:,.0f} | "
              f"{typical:.3f} | {ratio:.3f} [{q1:.3f}, {q3:.3f}] | "
              f"{plain_s / STATEMENTS_PER_UNIT * 1e6:.1f} / "
              f"{statistics.median(pair.plain.cpu_seconds) / STATEMENTS_PER_UNIT * 1e6:.1f} | "
              f"{wall:+.2f} [{w1:+.2f}, {w3:+.2f}] | {cpu:+.2f} [{c1:+.2f}, {c3:+.2f}] |")
    print("\nThe guard itself on a cache hit (tight loop, no-op cursor, best of 5):\n")
    print("| check | µs per statement |")
    print("|---|---:|")
    print(f"| SQLAlchemy: safeddl's do_execute (in place of the dialect's) | "
          f"{sqlalchemy_hook_us:.2f} |")
    print(f"| SQLAlchemy: the dialect's own do_execute | {dialect_us:.2f} |")
    print(f"| psycopg: guarded cursor's execute | {psycopg_guarded_us:.2f} |")
    print(f"| psycopg: the same cursor unguarded | {psycopg_plain_us:.2f} |")
    plain_engine.dispose()
    guarded_engine.dispose()
    listener_engine.dispose()
    plain_conn.close()
    guarded_conn.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
