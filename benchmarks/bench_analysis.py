"""How much does the analysis cost? Prints Markdown tables; asserts nothing.

    python benchmarks/bench_analysis.py [--statements 10000] [--repeat 3]

1. Analysis cost per statement (``analyze_statement``), cold (the read cache
   cleared before every call: tokenize + parse + lock table) and warm (a cache
   hit: the lock table only), median of many calls, in µs.
2. Lint throughput on a generated migration file of N statements with a
   realistic mix: ``safeddl lint`` vs ``squawk`` (the ``squawk-cli`` binary), both
   run as subprocesses on the same file, best of a few runs; process start-up on an
   empty file; and ``lint_script`` in process (no start-up).
"""

from __future__ import annotations

import argparse
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path

from safeddl.analysis import analyze_statement
from safeddl.analysis.analyzer import READINGS
from safeddl.rules import lint_script

STATEMENTS: list[tuple[str, str]] = [
    ("SELECT join", ("SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id "
                     "WHERE o.status = 'open' ORDER BY o.created_at DESC LIMIT 50")),
    ("SELECT FOR UPDATE", ("SELECT * FROM jobs WHERE state = 'ready' ORDER BY id LIMIT 10 "
                           "FOR UPDATE SKIP LOCKED")),
    ("INSERT ... RETURNING", ("INSERT INTO orders (customer_id, status, total) "
                              "VALUES ($1, 'open', 0) RETURNING id")),
    ("UPDATE ... FROM", ("UPDATE orders o SET status = 'shipped' FROM shipments s "
                         "WHERE s.order_id = o.id AND s.shipped_at > now() - interval '1 day'")),
    ("DELETE", "DELETE FROM sessions WHERE expires_at < now()"),
    ("CTE + INSERT", ("WITH moved AS (DELETE FROM cart_items WHERE added_at < now() - "
                      "interval '30 days' RETURNING *) INSERT INTO old_cart_items "
                      "SELECT * FROM moved")),
    ("CREATE TABLE", ("CREATE TABLE shipments (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY "
                      "KEY, order_id bigint NOT NULL REFERENCES orders (id), carrier text NOT "
                      "NULL, shipped_at timestamptz NOT NULL DEFAULT now())")),
    ("CREATE INDEX", "CREATE INDEX orders_customer_id_idx ON orders (customer_id)"),
    ("CREATE INDEX CONCURRENTLY", ("CREATE UNIQUE INDEX CONCURRENTLY orders_ref_idx ON orders "
                                   "(lower(ref)) WHERE deleted_at IS NULL")),
    ("ADD FOREIGN KEY", ("ALTER TABLE orders ADD CONSTRAINT orders_customer_id_fkey FOREIGN KEY "
                         "(customer_id) REFERENCES customers (id)")),
    ("ADD COLUMN volatile default", ("ALTER TABLE orders ADD COLUMN public_id uuid DEFAULT "
                                     "gen_random_uuid()")),
    ("SET NOT NULL", "ALTER TABLE orders ALTER COLUMN status SET NOT NULL"),
    ("ALTER COLUMN TYPE", "ALTER TABLE orders ALTER COLUMN total TYPE numeric(12, 2)"),
    ("VALIDATE CONSTRAINT (Command)", ("ALTER TABLE orders VALIDATE CONSTRAINT "
                                       "orders_customer_id_fkey")),
    ("TRUNCATE", "TRUNCATE daily_sales_report"),
    ("LOCK TABLE (Command)", "LOCK TABLE orders IN SHARE ROW EXCLUSIVE MODE"),
    ("REINDEX (Command)", "REINDEX INDEX CONCURRENTLY orders_ref_idx"),
    ("SET lock_timeout", "SET lock_timeout = '2s'"),
]


# -- 1. per statement ----------------------------------------------------------------


def median_us(samples: Sequence[int]) -> float:
    return statistics.median(samples) / 1000


def cold_ns(sql: str, repeat: int) -> list[int]:
    out = []
    for _ in range(repeat):
        READINGS.forget()
        start = time.perf_counter_ns()
        analyze_statement(sql)
        out.append(time.perf_counter_ns() - start)
    return out


def warm_ns(sql: str, repeat: int) -> list[int]:
    analyze_statement(sql)  # fill the cache
    out = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        analyze_statement(sql)
        out.append(time.perf_counter_ns() - start)
    return out


def per_statement_table(cold_repeat: int, warm_repeat: int) -> str:
    rows = ["| statement | cold µs (median) | warm µs (median) | cold / warm |",
            "|---|---:|---:|---:|"]
    colds, warms = [], []
    for label, sql in STATEMENTS:
        cold = median_us(cold_ns(sql, cold_repeat))
        warm = median_us(warm_ns(sql, warm_repeat))
        colds.append(cold)
        warms.append(warm)
        rows.append(f"| {label} | {cold:,.0f} | {warm:,.1f} | {cold / warm:,.0f}× |")
    rows.append(f"| **mean of the mix** | **{statistics.mean(colds):,.0f}** | "
                f"**{statistics.mean(warms):,.1f}** | |")
    return "\n".join(rows)


# -- 2. a generated migration file ---------------------------------------------------

TABLES = ["orders", "order_items", "customers", "payments", "shipments", "invoices",
          "products", "stock_levels", "carts", "cart_items", "refunds", "audit.events"]


def _templates(i: int, rng: random.Random) -> list[tuple[int, str]]:
    """(weight, statement) with names unique to ``i``, so no two statements repeat."""
    t, u = rng.choice(TABLES), rng.choice(TABLES)
    col = f"col_{i}"
    return [
        (10, f"SET lock_timeout = '{rng.randint(1, 5)}s'"),
        (8, (f"CREATE TABLE IF NOT EXISTS feature_{i} (id bigint GENERATED ALWAYS AS IDENTITY "
             f"PRIMARY KEY, {t.split('.')[-1]}_id bigint NOT NULL, note text, created_at "
             "timestamptz NOT NULL DEFAULT now())")),
        (12, f"ALTER TABLE {t} ADD COLUMN {col} text"),
        (4, f"ALTER TABLE {t} ADD COLUMN {col} boolean NOT NULL DEFAULT false"),
        (3, f"ALTER TABLE {t} ADD COLUMN {col} uuid DEFAULT gen_random_uuid()"),
        (8, (f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {t.split('.')[-1]}_{col}_idx "
             f"ON {t} ({col})")),
        (4, f"CREATE INDEX {t.split('.')[-1]}_{col}_idx ON {t} ({col}, created_at)"),
        (4, (f"ALTER TABLE {t} ADD CONSTRAINT {t.split('.')[-1]}_{col}_fkey FOREIGN KEY "
             f"({col}) REFERENCES {u} (id) NOT VALID")),
        (4, f"ALTER TABLE {t} VALIDATE CONSTRAINT {t.split('.')[-1]}_{col}_fkey"),
        (3, f"ALTER TABLE {t} ALTER COLUMN {col} SET NOT NULL"),
        (2, f"ALTER TABLE {t} ALTER COLUMN {col} TYPE bigint"),
        (3, f"ALTER TABLE {t} RENAME COLUMN {col} TO {col}_old"),
        (3, f"ALTER TABLE {t} DROP COLUMN IF EXISTS {col}_old"),
        (10, (f"UPDATE {t} SET {col} = 'x' WHERE id >= {i * 1000} AND id < {i * 1000 + 1000} "
              f"AND {col} IS NULL")),
        (6, f"INSERT INTO {t} (id, {col}) SELECT id, {col} FROM {u} WHERE id > {i}"),
        (4, f"DELETE FROM {t} WHERE created_at < now() - interval '{i % 90 + 1} days'"),
        (2, f"TRUNCATE report_{i}"),
        (2, f"DROP INDEX CONCURRENTLY IF EXISTS old_idx_{i}"),
        (2, f"COMMENT ON COLUMN {t}.{col} IS 'added by migration {i}'"),
        (2, f"LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE"),
    ]


def generate_migration(count: int, seed: int = 42) -> str:
    rng = random.Random(seed)
    out = [f"-- generated by benchmarks/bench_analysis.py: {count} statements\n"]
    for i in range(count):
        weights, texts = zip(*_templates(i, rng))
        out.append(rng.choices(texts, weights=weights)[0] + ";\n")
    return "".join(out)


# -- 2. subprocess and in-process throughput -----------------------------------------


@dataclass(frozen=True)
class Timing:
    wall: float  # best wall-clock seconds
    cpu: float  # best user + system CPU seconds (robust when the machine is busy)
    exit_code: int


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def best_of(argv: list[str], repeat: int) -> Timing:
    wall, cpu, code = float("inf"), float("inf"), 0
    for _ in range(repeat):
        cpu_before, start = _children_cpu(), time.perf_counter()
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              check=False)
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, _children_cpu() - cpu_before)
        code = done.returncode
    return Timing(wall, cpu, code)


def best_in_process(action: Callable[[], object], repeat: int) -> Timing:
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeat):
        READINGS.forget()
        cpu_before, start = time.process_time(), time.perf_counter()
        action()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - cpu_before)
    return Timing(wall, cpu, 0)


def find_binary(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


@dataclass(frozen=True)
class Tool:
    label: str
    argv: list[str]  # without the file


def tools() -> list[Tool]:
    """Comparable pairs: text for people (squawk's default tty renders source
    snippets and is much slower than its one-line gcc form), and JSON."""
    out = []
    safeddl, squawk = find_binary("safeddl"), find_binary("squawk")
    if safeddl:
        out += [Tool("safeddl lint", [safeddl, "lint"]),
                Tool("safeddl lint --format json", [safeddl, "lint", "--format", "json"])]
    if squawk:
        base = [squawk, "--pg-version=18.0"]
        out += [Tool("squawk (default tty reporter)", base),
                Tool("squawk --reporter gcc", [*base, "--reporter", "gcc"]),
                Tool("squawk --reporter json", [*base, "--reporter", "json"])]
    return out


def throughput_table(count: int, repeat: int, workdir: Path) -> str:
    script = generate_migration(count)
    path = workdir / "generated_migration.sql"
    path.write_text(script)
    empty = workdir / "empty.sql"
    empty.write_text("")
    header = (f"| run | wall s (best of {repeat}) | statements/s (wall) | CPU s (best) "
              "| statements/s (CPU) | exit |")
    rows = [header, "|---|---:|---:|---:|---:|---:|"]
    best: dict[str, Timing] = {}
    for tool in tools():
        best[tool.label] = timing = best_of([*tool.argv, str(path)], repeat)
        rows.append(_row(f"`{tool.label}`", count, timing, str(timing.exit_code)))
    startup: dict[str, Tool] = {}
    for tool in tools():
        startup.setdefault(tool.argv[0], tool)  # the first form of each binary
    for tool in startup.values():
        timing = best_of([*tool.argv, str(empty)], repeat)
        rows.append(_row(f"`{tool.label}`, empty file (start-up)", 0, timing,
                         str(timing.exit_code)))
    for size in (count // 10, count):
        timing = best_in_process(partial(lint_script, generate_migration(size)), repeat)
        rows.append(_row(f"`lint_script` in process, {size:,} statements, cache cleared",
                         size, timing, ""))
    return "\n".join(rows) + ratios(best)


def _row(label: str, count: int, timing: Timing, exit_code: str) -> str:
    def rate(seconds: float) -> str:
        return f"{count / seconds:,.0f}" if count else ""

    return (f"| {label} | {timing.wall:.3f} | {rate(timing.wall)} | {timing.cpu:.3f} | "
            f"{rate(timing.cpu)} | {exit_code} |")


def ratios(best: dict[str, Timing]) -> str:
    pairs = [("safeddl lint", "squawk --reporter gcc"),
             ("safeddl lint", "squawk (default tty reporter)"),
             ("safeddl lint --format json", "squawk --reporter json")]
    lines = [f"- `{ours}` / `{theirs}`: **{best[ours].wall / best[theirs].wall:,.1f}×** wall, "
             f"**{best[ours].cpu / best[theirs].cpu:,.1f}×** CPU"
             for ours, theirs in pairs if ours in best and theirs in best]
    return "\n\nRatios (> 1: safeddl is slower):\n\n" + "\n".join(lines) if lines else ""


# -- main ----------------------------------------------------------------------------


def environment() -> str:
    squawk = find_binary("squawk")
    squawk_version = "not installed"
    if squawk:
        squawk_version = subprocess.run([squawk, "--version"], capture_output=True, text=True,
                                        check=False).stdout.strip()
    return (f"Python {platform.python_version()} ({platform.python_implementation()}), "
            f"sqlglot {version('sqlglot')}, {squawk_version}, {platform.machine()}, "
            f"{platform.system()}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per subprocess timing")
    parser.add_argument("--cold", type=int, default=200, help="cold calls per statement")
    parser.add_argument("--warm", type=int, default=2000, help="warm calls per statement")
    args = parser.parse_args(argv)
    print("# safeddl analysis benchmark\n")
    print(environment() + "\n")
    print("## Analysis cost per statement (`analyze_statement`, PostgreSQL 18)\n")
    print("cold: read cache cleared before each call (tokenize, parse, lock table); "
          "warm: read cache hit (lock table only).\n")
    print(per_statement_table(args.cold, args.warm))
    print(f"\n## Lint throughput, generated {args.statements:,}-statement migration\n")
    with tempfile.TemporaryDirectory(prefix="safeddl-bench-") as tmp:
        print(throughput_table(args.statements, args.repeat, Path(tmp)))


if __name__ == "__main__":
    main()
