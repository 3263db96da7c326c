"""Runtime defects found under odd settings and odd traffic, each against a real server:
durations beyond what PostgreSQL accepts, internal failures of the guard, the driver's
own error handling under the guard (lock timeouts, a rewrite's failure), the connection
left as it was after a refusal, row-lock blockers, and the helpers' arguments."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.errors
import pytest
from sqlalchemy import create_engine, exc, text

import safeddl
import safeddl.psycopg
from safeddl import Policy
from safeddl.runtime.policy import PG_TIMEOUT_MAX_MS

pytestmark = [pytest.mark.timeout(120)]

BIG_ROWS = 20_000


@pytest.fixture
def db(safeddl_db: str) -> str:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, x int, n int)")
        conn.execute(f"INSERT INTO big SELECT g, g, nullif(g, 7) "
                     f"FROM generate_series(1, {BIG_ROWS}) g")
        conn.execute("CREATE TABLE rows (id int PRIMARY KEY, x int)")
        conn.execute("INSERT INTO rows SELECT g, g FROM generate_series(1, 10) g")
        conn.execute("ANALYZE big")
    return safeddl_db


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize("value", ["30d", "99999999999999999999d", "1" + "0" * 23, 10 ** 24,
                                   float("inf"), "2147483648ms"])
def test_durations_beyond_postgresqls_range_fail_at_start_up(value: object) -> None:
    with pytest.raises(safeddl.ConfigError, match="lock_timeout"):
        Policy(lock_timeout=value)
    with pytest.raises(safeddl.ConfigError, match="statement_timeout.create-index"):
        Policy(statement_timeout={"create-index": value})


@pytest.mark.parametrize("value", ["30d", "1" + "0" * 24])
def test_a_url_key_beyond_the_range_fails_when_the_engine_is_created(safeddl_db_url: str,
                                                                     value: str) -> None:
    glue = "&" if "?" in safeddl_db_url else "?"
    with pytest.raises(safeddl.ConfigError, match="lock_timeout"):
        create_engine(safeddl_db_url + f"{glue}plugin=safeddl&safeddl_lock_timeout={value}")


def test_the_largest_accepted_lock_timeout_works_on_the_server(db: str) -> None:
    """The bound is PostgreSQL's: the largest value accepted at start-up is one every
    guarded DDL can set (one more millisecond is refused up front)."""
    policy = Policy(lock_timeout=f"{PG_TIMEOUT_MAX_MS}ms",
                    statement_timeout={"default": f"{PG_TIMEOUT_MAX_MS}ms"})
    with safeddl.psycopg.connect(db, policy=policy, autocommit=True) as conn:
        conn.execute("ALTER TABLE rows ADD COLUMN note text")
    with safeddl.psycopg.connect(db, policy=policy) as conn:
        conn.execute("ALTER TABLE rows ADD COLUMN other text")
        with psycopg.Cursor(conn) as cursor:
            row = cursor.execute("SHOW lock_timeout").fetchone()
        assert row is not None and row[0] == f"{PG_TIMEOUT_MAX_MS}ms"
        conn.commit()
    with pytest.raises(safeddl.ConfigError, match="2,147,483,647"):
        Policy(lock_timeout=f"{PG_TIMEOUT_MAX_MS + 1}ms")


def test_retry_and_job_lock_timeouts_are_bounded_too(db: str) -> None:
    with pytest.raises(safeddl.ConfigError, match="lock_timeout_cap"):
        safeddl.RetryPolicy(lock_timeout="1s", lock_timeout_cap="30d")
    with psycopg.connect(db, autocommit=True) as conn:
        with pytest.raises(safeddl.ConfigError, match="lock_timeout"):
            safeddl.backfill(conn, "rows", "x = x", "false", lock_timeout="30d")
