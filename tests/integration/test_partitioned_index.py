"""CREATE INDEX on a partitioned table, rewritten (``ON ONLY`` the parent, each partition
``CONCURRENTLY`` under the name PostgreSQL gives it, then ``ATTACH PARTITION``), against
a real server: the end state equals the original statement's (index names,
definitions, validity, inheritance in ``pg_inherits``) with a sub-partitioned
partition and a default partition; no partition is locked in SHARE mode while its
index is built; a fault at a partition's build or attach resumes on the rerun."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from test_faults import Announcements, Fault, Injector

import safeddl
import safeddl.psycopg
from safeddl import Policy
from safeddl.testing.server import fresh_database

pytestmark = [pytest.mark.timeout(240)]

ROWS = 50_000  # per partition
POLICY = Policy(small_table_rows=0, lock_timeout="5s")

SETUP = f"""
DROP SCHEMA public CASCADE;
CREATE SCHEMA public;
CREATE TABLE m (id int, ts date, v int, note text) PARTITION BY RANGE (ts);
CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')
  PARTITION BY RANGE (ts);
CREATE TABLE m_2025_h1 PARTITION OF m_2025 FOR VALUES FROM ('2025-01-01') TO ('2025-07-01');
CREATE TABLE m_2025_h2 PARTITION OF m_2025 FOR VALUES FROM ('2025-07-01') TO ('2026-01-01');
CREATE TABLE m_default PARTITION OF m DEFAULT;
INSERT INTO m SELECT g, date '2024-01-01' + (g % 730), g % 1000, md5(g::text)
  FROM generate_series(1, {4 * ROWS}) g;
INSERT INTO m SELECT g, date '2030-01-01' + (g % 30), g % 1000, 'd'
  FROM generate_series(1, {ROWS}) g;
ANALYZE m;
"""

STATEMENTS = [
    "CREATE INDEX m_ts ON m (ts)",
    "CREATE INDEX m_v_expr ON m USING btree (v, lower(note)) INCLUDE (id) WHERE v > 10",
    "CREATE UNIQUE INDEX m_id_ts ON m (id, ts)",
    "CREATE INDEX m_exprs ON m ((v + 1), (note::varchar), (CASE WHEN v > 0 THEN 1 END), v)",
]


def tree_state(dsn: str) -> list[tuple[Any, ...]]:
    """Every index in the partition tree of m: name, valid, definition, parent index."""
    with psycopg.connect(dsn) as conn:
        return sorted(conn.execute(
            "SELECT c.relname, i.indisvalid, i.indisready, pg_get_indexdef(i.indexrelid), "
            "(SELECT p.relname FROM pg_inherits h JOIN pg_class p ON p.oid = h.inhparent "
            " WHERE h.inhrelid = c.oid) "
            "FROM pg_partition_tree('m') t JOIN pg_index i ON i.indrelid = t.relid "
            "JOIN pg_class c ON c.oid = i.indexrelid").fetchall())


@pytest.fixture(scope="module")
def parted_db(safeddl_server: Any) -> Iterator[str]:
    with fresh_database(safeddl_server.dsn) as dsn:
        yield dsn


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SETUP)


_EXPECTED: dict[str, list[tuple[Any, ...]]] = {}


def expected(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    if sql not in _EXPECTED:
        reset(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql)
        _EXPECTED[sql] = tree_state(dsn)
    return _EXPECTED[sql]


class ShareSampler:
    """Samples the table locks the guarded backend holds while it builds an index."""

    def __init__(self, dsn: str, pid: int) -> None:
        self.dsn, self.pid = dsn, pid
        self.samples: list[tuple[str, str]] = []  # (query, mode) during CONCURRENTLY
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                for query, mode in conn.execute(
                        "SELECT a.query, l.mode FROM pg_stat_activity a JOIN pg_locks l "
                        "ON l.pid = a.pid AND l.granted AND l.locktype = 'relation' "
                        "JOIN pg_class c ON c.oid = l.relation AND c.relkind IN ('r', 'p') "
                        "WHERE a.pid = %s AND a.state = 'active' "
                        "AND a.query LIKE '%%CONCURRENTLY%%'", [self.pid]).fetchall():
                    self.samples.append((query, mode))

    def __enter__(self) -> ShareSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@pytest.mark.parametrize("sql", STATEMENTS)
def test_the_rewrite_leaves_the_original_end_state(sql: str, parted_db: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    import logging

    want = expected(parted_db, sql)
    assert len(want) == 6 and all(valid for _, valid, *_ in want)  # m, 2 levels, default
    reset(parted_db)
    caplog.set_level(logging.INFO, logger="safeddl")
    with safeddl.psycopg.connect(parted_db, policy=POLICY, autocommit=True) as conn:
        with ShareSampler(parted_db, conn.info.backend_pid) as sampler:
            conn.execute(sql)
    assert "ATTACH PARTITION" in caplog.text and " ON ONLY m " in caplog.text
    assert tree_state(parted_db) == want
    assert sampler.samples, "no concurrent build was observed"
    assert {mode for _, mode in sampler.samples} <= {"ShareUpdateExclusiveLock",
                                                      "AccessShareLock", "RowExclusiveLock"}


def test_a_foreign_index_on_a_partition_is_refused(parted_db: str) -> None:
    reset(parted_db)
    with psycopg.connect(parted_db, autocommit=True) as conn:
        conn.execute("CREATE INDEX mine ON m_2024 (ts)")  # CREATE INDEX would attach it
    with safeddl.psycopg.connect(parted_db, policy=POLICY, autocommit=True) as conn, \
            pytest.raises(safeddl.UnsafeStatement, match="has an index of its own"):
        conn.execute("CREATE INDEX m_ts ON m (ts)")
    assert [row[0] for row in tree_state(parted_db)] == ["mine"]  # nothing was sent


FAULTS = [
    Fault("CREATE INDEX m_ts ON m (ts)", "ON public.m_2025_h2", "running"),
    Fault("CREATE INDEX m_ts ON m (ts)", "ON public.m_default", "waiting"),
    Fault("CREATE INDEX m_ts ON m (ts)", "ATTACH PARTITION public.m_2025_ts_idx", "waiting"),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.step + "|" + f.how for f in FAULTS])
def test_a_fault_at_a_partition_resumes_on_the_rerun(fault: Fault, parted_db: str) -> None:
    want = expected(parted_db, fault.sql)
    for _ in range(3):
        reset(parted_db)
        conn = safeddl.psycopg.connect(parted_db, policy=POLICY, autocommit=True)
        injector = Injector(fault, parted_db, conn.info.backend_pid, table=_table_of(fault))
        try:
            with Announcements(injector), pytest.raises(safeddl.SafeDDLError) as info:
                conn.execute(fault.sql)
            break
        except pytest.fail.Exception:
            continue  # the step was over before the fault struck: again
        finally:
            injector.finish()
            conn.close()
    assert "State left:" in str(info.value), str(info.value)
    assert tree_state(parted_db) != want
    with safeddl.psycopg.connect(parted_db, policy=POLICY, autocommit=True) as again:
        again.execute(fault.sql)
    assert tree_state(parted_db) == want


def _table_of(fault: Fault) -> str:
    """The table whose lock the "waiting" fault takes."""
    if "m_default" in fault.step:
        return "m_default"
    return "m_2025"
