""" "scan" is real: what the analysis holds for a scan takes time that grows with the table.

The same statement runs against a table of 2,000 rows and one of 400,000 rows (in
a transaction that is rolled back, best of a few runs). Statements the analysis
marks as holding their lock for a scan (an index build, a validation) must get
clearly slower on the big table; brief ones (catalog changes only) must not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from safeddl.locks import Holds
from safeddl.testing import fresh_database

SMALL_ROWS = 2_000
BIG_ROWS = 400_000
SCAN_MIN_RATIO = 5.0  # big / small, for statements that scan
BRIEF_MAX_RATIO = 3.0  # big / small, for statements that only change the catalog
# ... or at most this much slower in absolute terms: sub-millisecond catalog changes are
# noisy on a loaded machine, while reading 400,000 rows takes tens of milliseconds
BRIEF_MAX_EXTRA_S = 0.005

SETUP = """
CREATE TABLE scan_ref (id integer PRIMARY KEY);
INSERT INTO scan_ref SELECT generate_series(1, {big});
"""
TABLE = """
CREATE TABLE {t} (id integer NOT NULL, ref_id integer, val integer, label text);
INSERT INTO {t} SELECT g, g, g % 1000, 'label ' || g FROM generate_series(1, {rows}) AS g;
ALTER TABLE {t} ADD CONSTRAINT {t}_val_check CHECK (val >= 0) NOT VALID;
ALTER TABLE {t} ADD CONSTRAINT {t}_ref_fk FOREIGN KEY (ref_id) REFERENCES scan_ref (id) NOT VALID;
CREATE UNIQUE INDEX {t}_id_key ON {t} (id);
CREATE UNIQUE INDEX {t}_label_key ON {t} (label);
"""


@dataclass(frozen=True)
class Case:
    sql: str  # "{t}" stands for the table
    holds: Holds  # what the analysis must say
    runs: int

    @property
    def id(self) -> str:
        return self.sql.replace("{t}", "t")


SCANS = [
    Case("CREATE INDEX {t}_label_idx ON {t} (label)", Holds.SCAN, 2),
    Case("ALTER TABLE {t} ADD CONSTRAINT {t}_val_pos CHECK (val > -1)", Holds.SCAN, 2),
    Case("ALTER TABLE {t} ALTER COLUMN val SET NOT NULL", Holds.SCAN, 2),
    Case(
        "ALTER TABLE {t} ADD CONSTRAINT {t}_ref_fk2 FOREIGN KEY (ref_id) REFERENCES scan_ref (id)",
        Holds.SCAN,
        2,
    ),
    Case("ALTER TABLE {t} VALIDATE CONSTRAINT {t}_val_check", Holds.SCAN, 2),
    Case("ALTER TABLE {t} VALIDATE CONSTRAINT {t}_ref_fk", Holds.SCAN, 2),
    # label is nullable: the primary key sets NOT NULL, which reads every row
    Case("ALTER TABLE {t} ADD PRIMARY KEY USING INDEX {t}_label_key", Holds.SCAN, 2),
]
BRIEF = [
    Case("ALTER TABLE {t} ADD COLUMN extra text", Holds.BRIEF, 7),
    Case("ALTER TABLE {t} ALTER COLUMN val SET DEFAULT 0", Holds.BRIEF, 7),
    Case("ALTER TABLE {t} ADD CONSTRAINT {t}_val_pos CHECK (val > -1) NOT VALID", Holds.BRIEF, 7),
    # a new foreign-key column is all NULL: nothing to validate
    Case("ALTER TABLE {t} ADD COLUMN ref2_id bigint REFERENCES scan_ref (id)", Holds.BRIEF, 7),
    # id is NOT NULL already
    Case("ALTER TABLE {t} ADD PRIMARY KEY USING INDEX {t}_id_key", Holds.BRIEF, 7),
]


@dataclass
class ScanDatabase:
    conn: psycopg.Connection[Any]
    version: int

    def best_time(self, sql: str, runs: int) -> float:
        """The fastest of ``runs`` executions, each in a transaction rolled back."""
        best = float("inf")
        for _ in range(runs):
            with self.conn.cursor() as cur:
                cur.execute("BEGIN")
                try:
                    cur.execute("SET LOCAL statement_timeout = '60s'")
                    start = time.perf_counter()
                    cur.execute(sql)
                    best = min(best, time.perf_counter() - start)
                finally:
                    cur.execute("ROLLBACK")
        return best


@pytest.fixture(scope="session")
def scan_db(safeddl_server_each: Any) -> Iterator[ScanDatabase]:
    with (
        fresh_database(safeddl_server_each.dsn, prefix="safeddl_scan_") as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        conn.execute(SETUP.format(big=BIG_ROWS))
        conn.execute(TABLE.format(t="small", rows=SMALL_ROWS))
        conn.execute(TABLE.format(t="big", rows=BIG_ROWS))
        conn.execute("VACUUM ANALYZE")
        conn.execute("SET lock_timeout = '10s'")
        yield ScanDatabase(conn, safeddl_server_each.version)


def _analysis_holds(sql: str, version: int) -> Holds:
    from safeddl.analysis import analyze_script, catalog_from_script

    schema = SETUP.format(big=0) + TABLE.format(t="small", rows=0) + TABLE.format(t="big", rows=0)
    [stmt] = analyze_script(sql, version=version, catalog=catalog_from_script(schema, version))
    return stmt.holds


def _measure(scan_db: ScanDatabase, case: Case) -> tuple[float, float, str]:
    small = scan_db.best_time(case.sql.format(t="small"), case.runs)
    big = scan_db.best_time(case.sql.format(t="big"), case.runs)
    report = (
        f"PostgreSQL {scan_db.version}: {case.sql.format(t='t')}\n"
        f"  {SMALL_ROWS:,} rows: {small * 1000:.2f} ms, {BIG_ROWS:,} rows: {big * 1000:.2f} ms,"
        f" ratio {big / small:.1f}"
    )
    return small, big, report


@pytest.mark.parametrize("case", SCANS, ids=[case.id for case in SCANS])
def test_scan_time_grows_with_the_table(scan_db: ScanDatabase, case: Case) -> None:
    small, big, report = _measure(scan_db, case)
    assert big / small > SCAN_MIN_RATIO, report
    holds = _analysis_holds(case.sql.format(t="big"), scan_db.version)
    assert holds == Holds.SCAN, f"{report}\n  the analysis says {holds.value}, not scan"


@pytest.mark.parametrize("case", BRIEF, ids=[case.id for case in BRIEF])
def test_brief_time_does_not_grow(scan_db: ScanDatabase, case: Case) -> None:
    small, big, report = _measure(scan_db, case)
    assert big / small < BRIEF_MAX_RATIO or big - small < BRIEF_MAX_EXTRA_S, report
    holds = _analysis_holds(case.sql.format(t="big"), scan_db.version)
    assert holds == Holds.BRIEF, f"{report}\n  the analysis says {holds.value}, not brief"
