"""What does the runtime guard cost on ordinary traffic? Prints Markdown; asserts nothing.

    python benchmarks/bench_hot_path.py [--seconds 100] [--block 40] [--profile] [--one-process]

What it measures: the throughput of one realistic unit of work (one transaction: a
point SELECT by key, an INSERT, an UPDATE by key, a two-table join, a DELETE by key of
the row inserted, COMMIT) with safeddl's default policy (the lock ledger on: every
write is checked for table and row-lock order, long-held locks are timed) against the
same unit on an unguarded twin, for three stacks:

- SQLAlchemy Core: ``engine.begin()`` and Core statements (``safeddl.install(engine)``);
- SQLAlchemy ORM: a ``Session`` doing the same unit (``session.add`` + flush, an
  ORM-enabled UPDATE, ``session.delete``);
- raw psycopg 3: ``safeddl.psycopg.connect`` vs ``psycopg.connect``.

Method. A throwaway PostgreSQL (``safeddl.testing.start_server()``), one connection per
twin, warm caches (a warm-up round first). Each twin runs in a process of its own,
driven in lockstep by this one (a unit is timed in its twin's process; the pipe is not
timed): twins in one interpreter share its specialized bytecode, and each twin's
objects (another cursor class, another connection layout) keep turning the other's
call sites back to generic code. Measured with callgrind, alternating the two psycopg
twins unit by unit in one process added 39,000 instructions to the unguarded unit
(534,000 alone) and 67,000 to the guarded one (581,000 alone). ``--one-process``: the
old way, both twins here. Every round starts both twins on fresh
server sessions (and warms them): two identical unguarded psycopg connections measured
side by side here differed by 12% in client CPU per unit, consistently, by where their
backends happened to run, and a twin kept for the whole run carries such a bias into
every round. Each round then runs, for every stack in turn, ``--block`` units of each
twin alternated unit by unit (ABBA, BAAB every other round), so that drift and the cost
of going first cancel out and a burst of load on a shared machine hits both twins
alike (an earlier version timed blocks of 40 units per twin, one stack after the
other: one twin could meet a burst the other missed). The unit deletes the row it
inserts, so the tables do not grow during the run. Rounds go on until ``--seconds``
have passed (at least 20).

Reported per stack: units/s of each twin (median round); the guarded/unguarded
throughput ratio per round, median [quartiles] (the goal: >= 0.98); the time added per
statement in wall time and in client CPU time (``time.thread_time``), median
[quartiles]. Then the guard's own work per unit timed with the server out of the
picture (the statements of a unit through the guarded entry point over a cursor that
sends nothing, best of 25 batches): the least noisy figure on a loaded machine, and
the ratio it implies for each stack's measured unguarded unit time. With
``--profile``, what is left of the guard: safeddl's own functions in a profile of
guarded units (the profiler inflates small functions: read the shares).

The guard runs with ``safeddl.Policy.from_sources()``: the defaults, or what
``SAFEDDL_*`` variables set. To measure the guard with the ledger off::

    SAFEDDL_LONG_LOCK_THRESHOLD=0 \\
    SAFEDDL_ACTIONS=lock-order=allow,row-lock-order=allow,statements-after-access-exclusive=allow \\
    python benchmarks/bench_hot_path.py
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import psycopg
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session

import safeddl
import safeddl.psycopg
from safeddl.testing import start_server

CUSTOMERS = 10_000
ORDERS = 50_000
STATEMENTS_PER_UNIT = 5  # and a COMMIT
MIN_ROUNDS = 20
WARM_UNITS = 6  # after a reconnect: psycopg prepares a statement at its 5th execution
BATCHES = 25  # timing the guard's own work: best of this many batches

metadata = MetaData()
customers = Table("customers", metadata, Column("id", Integer, primary_key=True),
                  Column("name", String(60), nullable=False))
orders = Table("orders", metadata, Column("id", Integer, primary_key=True),
               Column("customer_id", Integer, ForeignKey("customers.id"), nullable=False),
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
DELETE_ORDER = delete(orders).where(orders.c.id == bindparam("oid"))

RAW_POINT_SELECT = "SELECT name FROM customers WHERE id = %s"
RAW_INSERT = "INSERT INTO orders (id, customer_id, status, total) VALUES (%s, %s, 'open', 0)"
RAW_UPDATE = "UPDATE orders SET total = total + 1 WHERE id = %s"
RAW_JOIN = ("SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id "
            "WHERE o.customer_id = %s LIMIT 5")
RAW_DELETE = "DELETE FROM orders WHERE id = %s"


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __table__ = customers


class Order(Base):
    __table__ = orders


class Keys:
    """Fresh order ids for INSERTs (a range of its own per variant); random existing
    keys for the rest."""

    def __init__(self, seed: int, offset: int) -> None:
        self.random = random.Random(seed)
        self.next_order = ORDERS + 1 + offset

    def new_order(self) -> int:
        self.next_order += 1
        return self.next_order

    def customer(self) -> int:
        return self.random.randint(1, CUSTOMERS)

    def order(self) -> int:
        return self.random.randint(1, ORDERS)


def core_unit(engine: Engine, keys: Keys) -> None:
    with engine.begin() as conn:
        cid, oid = keys.customer(), keys.new_order()
        conn.execute(POINT_SELECT, {"cid": cid}).scalar()
        conn.execute(INSERT_ORDER, {"oid": oid, "cid": cid})
        conn.execute(UPDATE_ORDER, {"key": keys.order()})
        conn.execute(JOIN, {"cid": cid}).all()
        conn.execute(DELETE_ORDER, {"oid": oid})


ORM_UPDATE = (update(Order).where(Order.id == bindparam("key")).values(total=Order.total + 1)
              .execution_options(synchronize_session=False))
ORM_POINT_SELECT = select(Customer.name).where(Customer.id == bindparam("cid"))
ORM_JOIN = (select(Order.id, Customer.name).join(Customer, Order.customer_id == Customer.id)
            .where(Order.customer_id == bindparam("cid")).limit(5))


def orm_unit(engine: Engine, keys: Keys) -> None:
    with Session(engine) as session, session.begin():
        cid = keys.customer()
        session.scalar(ORM_POINT_SELECT, {"cid": cid})
        order = Order(id=keys.new_order(), customer_id=cid, status="open", total=0)
        session.add(order)
        session.flush()  # INSERT
        session.execute(ORM_UPDATE, {"key": keys.order()})
        session.execute(ORM_JOIN, {"cid": cid}).all()
        session.delete(order)  # DELETE, flushed at COMMIT


def psycopg_unit(conn: psycopg.Connection[Any], keys: Keys) -> None:
    cid, oid = keys.customer(), keys.new_order()
    conn.execute(RAW_POINT_SELECT, (cid,)).fetchone()
    conn.execute(RAW_INSERT, (oid, cid))
    conn.execute(RAW_UPDATE, (keys.order(),))
    conn.execute(RAW_JOIN, (cid,)).fetchall()
    conn.execute(RAW_DELETE, (oid,))
    conn.commit()


def setup_schema(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS orders, customers")
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name varchar(60) NOT NULL)")
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL "
                     "REFERENCES customers (id), status varchar(20) NOT NULL, "
                     "total int NOT NULL)")
        conn.execute("CREATE INDEX orders_customer_id ON orders (customer_id)")
        conn.execute(f"INSERT INTO customers SELECT g, 'customer ' || g "
                     f"FROM generate_series(1, {CUSTOMERS}) g")
        conn.execute(f"INSERT INTO orders SELECT g, 1 + g % {CUSTOMERS}, 'open', 0 "
                     f"FROM generate_series(1, {ORDERS}) g")
        conn.execute("VACUUM ANALYZE customers")
        conn.execute("VACUUM ANALYZE orders")


@dataclass
class Stack:
    """A stack measured as twins: unguarded and guarded."""

    name: str
    plain: Callable[[], tuple[float, float]]  # one unit: its (wall, client CPU) seconds
    guarded: Callable[[], tuple[float, float]]
    reconnect: Callable[[], None]  # fresh server sessions for both twins
    ratios: list[float] = field(default_factory=list)  # per round: plain time / guarded time
    plain_units: list[float] = field(default_factory=list)  # per round: units/s
    guarded_units: list[float] = field(default_factory=list)
    added_wall: list[float] = field(default_factory=list)  # per round: µs per statement
    added_cpu: list[float] = field(default_factory=list)
    plain_wall: list[float] = field(default_factory=list)
    plain_cpu: list[float] = field(default_factory=list)
    profile: Callable[[int], list[tuple[str, float]]] = lambda units: []  # of guarded units

    def round(self, block: int, number: int) -> None:
        """``block`` units of each twin, alternated unit by unit in ABBA order (BAAB
        every other round): both twins meet the same load, moment by moment."""
        self.reconnect()
        for _unit in range(WARM_UNITS):  # the new sessions' prepared statements
            self.plain()
            self.guarded()
        wall = {True: 0.0, False: 0.0}
        cpu = {True: 0.0, False: 0.0}
        first = number % 2 == 0  # True: the guarded twin first
        for index in range(block):
            pair = (first, not first) if index % 2 == 0 else (not first, first)
            for guarded in pair:
                unit_wall, unit_cpu = (self.guarded if guarded else self.plain)()
                wall[guarded] += unit_wall
                cpu[guarded] += unit_cpu
        units, statements = block, block * STATEMENTS_PER_UNIT
        self.ratios.append(wall[False] / wall[True])
        self.plain_units.append(units / wall[False])
        self.guarded_units.append(units / wall[True])
        self.added_wall.append((wall[True] - wall[False]) / statements * 1e6)
        self.added_cpu.append((cpu[True] - cpu[False]) / statements * 1e6)
        self.plain_wall.append(wall[False] / statements * 1e6)
        self.plain_cpu.append(cpu[False] / statements * 1e6)

    def clear(self) -> None:
        for values in (self.ratios, self.plain_units, self.guarded_units, self.added_wall,
                       self.added_cpu, self.plain_wall, self.plain_cpu):
            values.clear()


def timed(unit: Callable[[], None]) -> Callable[[], tuple[float, float]]:
    """The unit, returning its wall and client CPU (``time.thread_time``) seconds."""
    clock, cpu_clock = time.perf_counter, time.thread_time

    def run() -> tuple[float, float]:
        started, cpu_started = clock(), cpu_clock()
        unit()
        cpu_ended, ended = cpu_clock(), clock()
        return ended - started, cpu_ended - cpu_started
    return run


def twin(stack: str, guarded: bool, dsn: str, url: str, keys: Keys,
         ) -> tuple[Callable[[], None], Callable[[], None], Callable[[], None]]:
    """One twin of a stack, built where it runs: (unit, reconnect, close)."""
    policy = safeddl.Policy.from_sources()
    if stack == "psycopg":
        conns: list[psycopg.Connection[Any]] = []

        def reconnect() -> None:
            for conn in conns:
                conn.close()
            conns[:] = [safeddl.psycopg.connect(dsn, policy=policy) if guarded
                        else psycopg.connect(dsn)]
        reconnect()
        return (lambda: psycopg_unit(conns[0], keys)), reconnect, (lambda: conns[0].close())
    engine = create_engine(url, pool_size=1)
    if guarded:
        safeddl.install(engine, policy)
    unit = core_unit if stack == "core" else orm_unit
    # reconnect: the pool opens a fresh session at the next unit
    return (lambda: unit(engine, keys)), engine.dispose, engine.dispose


def serve(pipe: Any, stack: str, guarded: bool, dsn: str, url: str, keys: Keys) -> None:
    """A twin in a process of its own: runs what the parent asks, one unit at a time."""
    unit, reconnect, close = twin(stack, guarded, dsn, url, keys)
    run = timed(unit)
    while True:
        command, argument = pipe.recv()
        if command == "unit":
            pipe.send(run())
        elif command == "reconnect":
            reconnect()
            pipe.send(None)
        elif command == "profile":
            pipe.send(profile_units(unit, argument))
        else:
            close()
            pipe.send(None)
            return


class Remote:
    """The parent's end of a twin running in its own process."""

    def __init__(self, stack: str, guarded: bool, dsn: str, url: str, keys: Keys) -> None:
        context = multiprocessing.get_context("fork")
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, stack, guarded, dsn, url,
                                                           keys), daemon=True)
        self.process.start()

    def ask(self, command: str, argument: Any = None) -> Any:
        self.pipe.send((command, argument))
        return self.pipe.recv()

    def unit(self) -> tuple[float, float]:
        result: tuple[float, float] = self.ask("unit")
        return result

    def stop(self) -> None:
        self.ask("stop")
        self.process.join(10)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4)
    return q1, median, q3


def profile(stacks: list[Stack], units: int) -> list[tuple[str, list[tuple[str, float]]]]:
    """safeddl's own functions in a profile of ``units`` guarded units per stack: the
    time spent in each (its own frames, not what it calls), µs per unit. (The profiler
    inflates small functions: read the shares, not the absolute numbers.)"""
    return [(stack.name, stack.profile(units)) for stack in stacks]


def profile_units(unit: Callable[[], None], units: int) -> list[tuple[str, float]]:
    """safeddl's own functions in a profile of ``units`` runs of ``unit``."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _unit in range(units):
        unit()
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = []
    for (path, line, function), row in stats.stats.items():  # type: ignore[attr-defined]
        if "/safeddl/" in path and "/benchmarks/" not in path:
            module = path.split("/safeddl/", 1)[1].removesuffix(".py").replace("/", ".")
            rows.append((f"{module}.{function} (line {line})", row[2] / units * 1e6))
    rows.sort(key=lambda item: -item[1])
    return rows[:8] + [("all of safeddl's own code", sum(t for _n, t in rows))]


def time_best(call: Callable[[], object], repeat: int, batches: int = BATCHES) -> float:
    """µs per call, best of many short batches: the least disturbed by other processes."""
    best = float("inf")
    for _ in range(batches):
        started = time.perf_counter()
        for _i in range(repeat):
            call()
        best = min(best, (time.perf_counter() - started) / repeat)
    return best * 1e6


class NoopCursor:
    """A psycopg cursor whose execute sends nothing (``_conn``/``connection`` as
    psycopg's): what is left of a unit is the guard's own work."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._conn = connection

    @property
    def connection(self) -> psycopg.Connection[Any]:
        return self._conn

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        return self


def own_cost(guarded_engine: Engine, guarded_conn: psycopg.Connection[Any],
             repeat: int = 1_000) -> list[tuple[str, float, float]]:
    """The guard's own work per unit, with the server out of the picture: each statement
    of the unit (texts and parameters as the stack sends them, inside an open
    transaction, every guard cache warm) through the guarded entry point over a cursor
    that sends nothing, then the COMMIT as the ledger follows it; against the same
    calls unguarded. (µs per unit, best of BATCHES.)"""
    from safeddl.integrations.psycopg import GuardedCursorMixin
    from safeddl.integrations.sqlalchemy import hook_for
    from safeddl.runtime.guard import state_of

    class GuardedNoopCursor(GuardedCursorMixin, NoopCursor):
        pass

    out = []
    guarded_conn.execute("SELECT 1")  # an open transaction, as the unit's statements see it
    state = state_of(guarded_conn)
    keys = Keys(99, 90_000_000)
    raw = [(RAW_POINT_SELECT, (1,)), (RAW_INSERT, (2, 1)), (RAW_UPDATE, (3,)),
           (RAW_JOIN, (1,)), (RAW_DELETE, (2,))]
    plain_cursor, guarded_cursor = NoopCursor(guarded_conn), GuardedNoopCursor(guarded_conn)

    def raw_unit(cursor: Any) -> Callable[[], None]:
        def unit() -> None:
            for text, params in raw:
                cursor.execute(text, (keys.new_order(),) + params[1:])
            state.ledger.end(0.0, "commit")
        return unit

    out.append(("psycopg 3", time_best(raw_unit(guarded_cursor), repeat),
                time_best(raw_unit(plain_cursor), repeat)))

    hook = hook_for(guarded_engine)
    with guarded_engine.connect() as conn:  # the texts SQLAlchemy compiles, and their params
        compiled = [(str(statement.compile(guarded_engine)), params) for statement, params in (
            (POINT_SELECT, {"cid": 1}), (INSERT_ORDER, {"oid": 2, "cid": 1}),
            (UPDATE_ORDER, {"key": 3}), (JOIN, {"cid": 1, "param_1": 5}),
            (DELETE_ORDER, {"oid": 2}))]
        conn.rollback()
    driver_cursor = NoopCursor(guarded_conn)

    def sqlalchemy_unit(execute: Callable[..., None]) -> Callable[[], None]:
        def unit() -> None:
            for text, params in compiled:
                execute(driver_cursor, text, dict(params, key=keys.new_order()), None)
            state.ledger.end(0.0, "commit")
        return unit

    out.append(("SQLAlchemy (the engine hook, Core and ORM alike)",
                time_best(sqlalchemy_unit(hook.do_execute), repeat),
                time_best(sqlalchemy_unit(lambda cursor, text, params, context:
                                          cursor.execute(text, params)), repeat)))
    guarded_conn.rollback()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=100.0,
                        help="measure for about this long (at least 20 rounds)")
    parser.add_argument("--block", type=int, default=40,
                        help="units of each twin per round and stack")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", action="store_true",
                        help="also profile guarded units: what is left of the guard")
    parser.add_argument("--one-process", action="store_true",
                        help="both twins in this process (they then share the "
                             "interpreter's specialized code paths)")
    args = parser.parse_args(argv)

    server = start_server()
    try:
        report(server.dsn, server.sqlalchemy_url, server.version, args)
    finally:
        server.stop()


def report(dsn: str, url: str, server_version: int, args: argparse.Namespace) -> None:
    setup_schema(dsn)
    keys = [Keys(args.seed + i, i * 10_000_000) for i in range(6)]
    names = (("core", "SQLAlchemy Core"), ("orm", "SQLAlchemy ORM (Session)"),
             ("psycopg", "psycopg 3"))
    stacks = []
    remotes: list[Remote] = []
    closers: list[Callable[[], None]] = []
    for index, (kind, title) in enumerate(names):
        if args.one_process:  # both twins here: they share the interpreter's state
            plain_unit, plain_reconnect, plain_close = twin(kind, False, dsn, url,
                                                            keys[2 * index])
            guarded_unit, guarded_reconnect, guarded_close = twin(kind, True, dsn, url,
                                                                  keys[2 * index + 1])
            closers += [plain_close, guarded_close]

            def reconnect(first: Callable[[], None] = plain_reconnect,
                          second: Callable[[], None] = guarded_reconnect) -> None:
                first()
                second()
            stacks.append(Stack(title, timed(plain_unit), timed(guarded_unit), reconnect,
                                profile=lambda units, unit=guarded_unit: profile_units(unit,
                                                                                       units)))
            continue
        plain, guarded = (Remote(kind, False, dsn, url, keys[2 * index]),
                          Remote(kind, True, dsn, url, keys[2 * index + 1]))
        remotes += [plain, guarded]

        def reconnect_both(first: Remote = plain, second: Remote = guarded) -> None:
            first.ask("reconnect")
            second.ask("reconnect")
        stacks.append(Stack(title, plain.unit, guarded.unit, reconnect_both,
                            profile=lambda units, remote=guarded: remote.ask("profile",
                                                                             units)))
    for stack in stacks:  # warm-up: caches, prepared statements, pools
        stack.round(args.block, 0)
        stack.round(args.block, 1)
        stack.clear()
    started = time.monotonic()
    rounds = 0
    while rounds < MIN_ROUNDS or time.monotonic() - started < args.seconds:
        for stack in stacks:
            stack.round(args.block, rounds)
        rounds += 1
    elapsed = time.monotonic() - started
    profiled = profile(stacks, 500) if args.profile else []
    for remote in remotes:
        remote.stop()
    for close in closers:
        close()
    policy = safeddl.Policy.from_sources()
    own_engine = create_engine(url, pool_size=1)
    safeddl.install(own_engine, policy)
    own_conn = safeddl.psycopg.connect(dsn, policy=policy)
    for _unit in range(WARM_UNITS):  # the guard's caches, as the measured twins had them
        core_unit(own_engine, keys[1])
        psycopg_unit(own_conn, keys[5])
    own = own_cost(own_engine, own_conn)
    where = ("both twins in this one process" if args.one_process else
             "each twin in a process of its own, run in lockstep")

    print(f"# Hot path: guarded vs unguarded twins (PostgreSQL {server_version}, Python "
          f"{platform.python_version()}, SQLAlchemy {version('sqlalchemy')}, psycopg "
          f"{version('psycopg')}, safeddl default policy: lock ledger on)\n")
    print(f"{rounds} rounds in {elapsed:.0f} s ({where}); each round: every stack in turn, "
          f"{args.block} units of each twin alternated unit by unit (ABBA / BAAB); one unit = "
          "one transaction of "
          f"{STATEMENTS_PER_UNIT} statements (point SELECT, INSERT, UPDATE by key, join, "
          "DELETE by key) and COMMIT. Per round ratios; median [quartiles] over rounds.\n")
    print("| stack | units/s unguarded | units/s guarded | throughput ratio guarded / "
          "unguarded | µs/statement unguarded (wall / client CPU) "
          "| added µs/statement, wall | added µs/statement, client CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for stack in stacks:
        q1, ratio, q3 = quartiles(stack.ratios)
        w1, wall, w3 = quartiles(stack.added_wall)
        c1, cpu, c3 = quartiles(stack.added_cpu)
        print(f"| {stack.name} | {statistics.median(stack.plain_units):,.0f} | "
              f"{statistics.median(stack.guarded_units):,.0f} | "
              f"{ratio:.3f} [{q1:.3f}, {q3:.3f}] | "
              f"{statistics.median(stack.plain_wall):.1f} / "
              f"{statistics.median(stack.plain_cpu):.1f} | "
              f"{wall:+.2f} [{w1:+.2f}, {w3:+.2f}] | {cpu:+.2f} [{c1:+.2f}, {c3:+.2f}] |")
    print("\nThe guard's own work per unit, the server out of the picture (each statement "
          "of the unit through the guarded entry point over a cursor that sends nothing, in an "
          f"open transaction, then COMMIT as the ledger follows it; best of {BATCHES} batches):\n")
    print("| entry point | µs per unit, guarded | µs per unit, the same calls unguarded "
          "| guard's own µs per statement |")
    print("|---|---:|---:|---:|")
    for name, guarded_us, plain_us in own:
        print(f"| {name} | {guarded_us:.2f} | {plain_us:.2f} | "
              f"{(guarded_us - plain_us) / STATEMENTS_PER_UNIT:.2f} |")
    print("\nThe throughput ratio that the guard's own work implies, for the unguarded unit "
          "time measured above (unit / (unit + the guard's own µs per unit)):\n")
    print("| stack | µs per unguarded unit (median) | implied ratio |")
    print("|---|---:|---:|")
    for stack, (_name, guarded_us, plain_us) in zip(stacks, [own[1], own[1], own[0]]):
        unit_us = 1e6 / statistics.median(stack.plain_units)
        print(f"| {stack.name} | {unit_us:,.0f} | "
              f"{unit_us / (unit_us + guarded_us - plain_us):.4f} |")
    for name, rows in profiled:
        print(f"\nWhat is left of the guard, {name} (cProfile of 500 guarded units, "
              "safeddl's own frames, µs per unit):\n")
        print("| function | µs per unit |")
        print("|---|---:|")
        for function, micros in rows:
            print(f"| {function} | {micros:.2f} |")
    own_engine.dispose()
    own_conn.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
