"""``safeddl demo``: the seed scenario (a TRUNCATE + reload pipeline, dashboards, reports in
REPEATABLE READ, a slow analytical query) against a real server, shortened.

What it reliably shows, measured here before writing the assertions (7 s runs, PG 18):
without safeddl, reads stall for seconds (the TRUNCATE queues behind the slow query and
every read queues behind it) and reports whose snapshot predates a refresh find the
table empty; with safeddl (TRUNCATE rewritten to DELETE) no read waits for the refresh
and none finds the table empty. Plain dashboard reads (READ COMMITTED) never saw an
empty table in either run: they wait, then read the reloaded rows.
"""

from __future__ import annotations

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine

from safeddl.cli.demo import (
    DemoSettings,
    demo_schema,
    guarded_policy,
    percentile,
    run_demo,
    run_phase,
    sqlalchemy_url,
)
from safeddl.cli.main import main
from safeddl.integrations.sqlalchemy import install

pytestmark = [pytest.mark.timeout(120)]

SETTINGS = DemoSettings(seconds=6, refresh_every=1.0, slow_query_first=0.5,
                        slow_query_seconds=3.0, slow_query_every=4.0, lock_timeout=0.3,
                        give_up_after=2.5)


def test_scenario_without_and_with_safeddl(safeddl_db: str) -> None:
    result = run_demo(safeddl_db, SETTINGS)
    plain, guarded = result.unguarded, result.guarded

    assert result.notes == ()  # TRUNCATE was rewritten (the probe saw ROW EXCLUSIVE)
    assert plain.slow_queries >= 1 and guarded.slow_queries >= 1
    assert plain.reader_queries > 0 and guarded.reader_queries > 0

    # without safeddl: reads queued behind the TRUNCATE, which queued behind the slow query
    assert plain.reader_max_stall_ms > 1000
    # ...and reports on an older snapshot found the table empty (TRUNCATE is not MVCC-safe)
    assert plain.empty_reads >= 1
    assert plain.min_rows_seen == 0

    # with safeddl: never an empty table, and no read waited for anything like a lock wait
    assert guarded.empty_reads == 0
    assert guarded.min_rows_seen == SETTINGS.rows
    assert guarded.report_reads >= 1
    assert guarded.reader_max_stall_ms < SETTINGS.lock_timeout * 1000 + 700
    assert guarded.refreshes_abandoned == guarded.refreshes_failed == 0
    assert guarded.refreshes_completed >= 4
    assert guarded.errors == ()


def test_without_the_rewrite_lock_waits_are_bounded_and_the_refresh_retried(
        safeddl_db: str) -> None:
    """TRUNCATE kept: it gives up after lock_timeout behind the slow query (so reads wait
    at most that, plus the reload under its lock) and the refresh runs again."""
    settings = DemoSettings(seconds=5, refresh_every=1.0, slow_query_first=0.3,
                            slow_query_seconds=3.0, lock_timeout=0.3, give_up_after=4.0,
                            rewrite_truncate=False, reports=0)
    engine = create_engine(sqlalchemy_url(safeddl_db), pool_size=1, max_overflow=0)
    try:
        install(engine, guarded_policy(settings))
        with demo_schema(safeddl_db, settings):
            phase = run_phase(engine, safeddl_db, settings, guarded=True)
    finally:
        engine.dispose()

    assert phase.slow_queries == 1
    assert phase.lock_timeouts_retried >= 1
    assert phase.refreshes_completed >= 2
    assert phase.refreshes_abandoned == phase.refreshes_failed == 0
    # lock_timeout (300 ms) + the reload holding ACCESS EXCLUSIVE (~350 ms) + margin,
    # far below the 3 s the slow query lasts
    assert phase.reader_max_stall_ms < 1500
    assert phase.min_rows_seen == settings.rows  # dashboards in READ COMMITTED only


def test_cli_demo_on_a_given_server(safeddl_db: str) -> None:
    result = CliRunner().invoke(main, ["demo", "--dsn", safeddl_db, "--seconds", "3"])
    assert result.exit_code == 0, result.output
    for text in ("without safeddl: TRUNCATE + reload, no lock_timeout",
                 "with safeddl:    TRUNCATE rewritten to DELETE",
                 "read max stall", "reads of an empty table", "lock timeouts retried"):
        assert text in result.output


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.5) == 50.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.99) == 0.0


def test_an_existing_schema_of_the_same_name_is_left_alone(safeddl_db: str) -> None:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA safeddl_demo")
        conn.execute("CREATE TABLE safeddl_demo.mine (x int)")
    result = CliRunner().invoke(main, ["demo", "--dsn", safeddl_db, "--seconds", "3"])
    assert result.exit_code == 1
    assert "schema safeddl_demo already exists" in result.output
    with psycopg.connect(safeddl_db) as conn:
        assert conn.execute("SELECT to_regclass('safeddl_demo.mine') IS NOT NULL").fetchone() == (
            True,)
