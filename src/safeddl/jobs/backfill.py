"""Batched backfill: fill a new column of a big table without holding row locks for
long and without one huge transaction.

``UPDATE t SET col = expr`` over the whole table locks every row it changes until
COMMIT (writers of those rows wait for the whole update), creates all its dead rows
at once and can run for minutes. :func:`backfill` updates ``batch_size`` rows at a
time, each batch its own transaction bounded by ``lock_timeout``::

    UPDATE t SET <assignments>
    WHERE ctid = ANY (ARRAY(SELECT ctid FROM t WHERE <pending> LIMIT <batch_size>))

until a batch updates no row. ``pending`` must become false for an updated row
(e.g. ``col IS NULL`` while the assignment sets it non-NULL), otherwise the same rows
would be picked again: ``max_batches`` bounds the loop for safety. A row a concurrent
writer changes between the two halves of a batch is skipped by that batch (its ctid
moved) and picked up by a later one. A batch that times out waiting for a lock is
retried (tenacity, exponential backoff, ``attempts`` times).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from safeddl.jobs.arguments import relation_name, sql_text, whole_number
from safeddl.runtime.errors import SafeDDLError, is_lock_timeout
from safeddl.runtime.policy import Duration, milliseconds, parse_duration, parse_timeout
from safeddl.runtime.topology import bound_statement

logger = logging.getLogger("safeddl")


@dataclass(frozen=True)
class BackfillResult:
    """What :func:`backfill` did."""

    table: str  # quoted and schema qualified
    rows: int  # rows updated
    batches: int  # batches that updated at least one row
    retries: int  # batches run again after a lock timeout
    seconds: float
    longest_batch_seconds: float


def backfill(conn: psycopg.Connection[Any], table: str, assignments: str, pending: str, *,
             batch_size: int = 1000, pause: Duration = timedelta(0),
             lock_timeout: Duration = timedelta(seconds=2), attempts: int = 5,
             max_batches: int | None = None) -> BackfillResult:
    """Run ``UPDATE table SET assignments`` in batches over the rows where ``pending``
    holds, committing each batch.

    ``table`` is written as in SQL (``"app.orders"``); ``assignments`` (``"total =
    price * quantity"``) and ``pending`` (``"total IS NULL"``) are SQL from the caller,
    run as given (they are meant to be: the caller's own SQL, never built from untrusted
    input). ``pause`` sleeps between batches (lets replicas and vacuum keep
    up). ``conn`` must be outside a transaction block; its statements run unguarded.
    """
    helper = "safeddl.backfill"
    relation_name(helper, "table", table)
    sql_text(helper, "assignments", assignments)
    sql_text(helper, "pending", pending)
    whole_number(helper, "batch_size", batch_size, minimum=1)
    whole_number(helper, "attempts", attempts, minimum=1, maximum=1000)
    if max_batches is not None:
        whole_number(helper, "max_batches", max_batches, minimum=0)
    wait = parse_timeout(lock_timeout, "lock_timeout")
    sleep_s = parse_duration(pause, "pause", allow_zero=True).total_seconds()
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise SafeDDLError("safeddl.backfill needs a connection outside a transaction block "
                           "(each batch commits)")
    target = _resolve(conn, table)
    update = sql.SQL(
        "UPDATE {table} SET {assignments} WHERE ctid = ANY (ARRAY("
        "SELECT ctid FROM {table} WHERE {pending} LIMIT {limit}))").format(
            table=target, assignments=sql.SQL(assignments),
            pending=sql.SQL(pending), limit=sql.Literal(batch_size))
    bound: bytes | None = None  # read in the first batch's transaction (Citus or not)
    rows = batches = retries = 0
    longest = 0.0
    started = time.monotonic()
    while max_batches is None or batches < max_batches:
        if batches and sleep_s:
            time.sleep(sleep_s)
        batch_started = time.monotonic()
        for attempt in Retrying(retry=retry_if_exception(is_lock_timeout),
                                wait=wait_exponential(multiplier=0.05, max=2.0),
                                stop=stop_after_attempt(attempts), reraise=True):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    retries += 1
                with conn.transaction(), psycopg.Cursor(conn) as cursor:
                    if bound is None:
                        bound = _bound(conn, milliseconds(wait))
                    cursor.execute(bound)
                    cursor.execute(update)
                    changed = cursor.rowcount
        longest = max(longest, time.monotonic() - batch_started)
        if changed <= 0:
            break
        rows += changed
        batches += 1
        logger.debug("safeddl: backfill %s: batch %d, %d rows", table, batches, changed)
    return BackfillResult(target.as_string(conn), rows, batches, retries,
                          time.monotonic() - started, longest)


def _resolve(conn: psycopg.Connection[Any], table: str) -> sql.Composed:
    with psycopg.Cursor(conn) as cursor:
        cursor.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
                       "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)", [table])
        row = cursor.fetchone()
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.commit()
    if row is None:
        raise SafeDDLError(f"safeddl.backfill: no table {table}")
    return sql.SQL(".").join([sql.Identifier(row[0]), sql.Identifier(row[1])])




def _bound(conn: psycopg.Connection[Any], lock_timeout_ms: int) -> bytes:
    """``SET LOCAL lock_timeout`` for each batch's transaction, as literal statements
    (Citus forwards only those to the shards)."""
    def run(query: str, params: Any) -> list[tuple[Any, ...]]:
        with psycopg.Cursor(conn) as cursor:
            cursor.execute(query.encode(), params)
            return list(cursor.fetchall())

    return bound_statement(run, lock_timeout_ms).encode()

__all__ = ["BackfillResult", "backfill"]
