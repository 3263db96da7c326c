"""Smaller guard defects, against a real server: a lock that was never granted is not
reported as held; an interrupt during a guarded statement on raw psycopg still restores
the session's lock_timeout; what an ``allow()`` block gives a task or thread it starts."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import safeddl
import safeddl.psycopg
from safeddl import LongHeldLock, Policy
from safeddl.runtime.scope import ALLOWANCES

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
def db(safeddl_db: str) -> Iterator[str]:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id int)")
    yield safeddl_db


def test_a_lock_that_timed_out_is_not_reported_as_held(db: str) -> None:
    """The ALTER waits 300 ms for ACCESS EXCLUSIVE and gives up: it never held it, so
    the rollback 0.3 s later reports nothing; a lock that was granted still is."""
    seen: list[LongHeldLock] = []
    stop = safeddl.on_long_held_lock(seen.append)
    policy = Policy(small_table_rows=0, lock_timeout="300ms", long_lock_threshold="100ms")
    try:
        with psycopg.connect(db) as holder:
            holder.execute("SELECT * FROM t")  # ACCESS SHARE, transaction left open
            with safeddl.psycopg.connect(db, policy=policy) as conn:
                with pytest.raises(safeddl.LockTimeout):
                    conn.execute("ALTER TABLE t ADD COLUMN note text")
                time.sleep(0.3)
                conn.rollback()
            holder.rollback()
        assert seen == []
        with safeddl.psycopg.connect(db, policy=policy) as conn:  # granted: reported
            conn.execute("ALTER TABLE t ADD COLUMN note text")
            time.sleep(0.3)
            conn.rollback()
    finally:
        stop()
    assert [(r.relation, r.mode.sql_name) for r in seen] == [("t", "ACCESS EXCLUSIVE")]


def test_an_interrupt_during_a_guarded_statement_restores_lock_timeout(db: str) -> None:
    """In autocommit the guard sets lock_timeout for the session and puts it back
    afterwards; a KeyboardInterrupt while the statement waits must not skip that."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, interrupt)
    policy = Policy(small_table_rows=0, lock_timeout="5s")
    try:
        with psycopg.connect(db) as holder:
            holder.execute("SELECT * FROM t")  # the ALTER below waits behind it
            with safeddl.psycopg.connect(db, policy=policy, autocommit=True) as conn:
                timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
                timer.start()
                with pytest.raises(KeyboardInterrupt):
                    conn.execute("ALTER TABLE t ADD COLUMN other text")
                timer.join()
                holder.rollback()
                if not conn.closed:  # the restore may close it instead: never left changed
                    assert conn.execute("SHOW lock_timeout").fetchone() == ("0",)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_allow_reaches_tasks_created_inside_the_block_not_threads() -> None:
    """The README's rule: an ``allow()`` block covers its own thread or task, and every
    asyncio task created inside it, for that task's whole life (a task copies the
    context when it is created); a thread started inside it gets nothing (threads start
    with an empty context) unless run with ``contextvars.copy_context().run``."""
    seen: dict[str, Any] = {}

    async def main() -> None:
        released = asyncio.Event()

        async def later() -> None:
            await released.wait()
            seen["task after the block"] = ALLOWANCES.get()

        with safeddl.allow("create-index", reason="test"):
            task = asyncio.create_task(later())
            thread = threading.Thread(target=lambda: seen.update(thread=ALLOWANCES.get()))
            thread.start()
            thread.join()
        seen["block after it ended"] = ALLOWANCES.get()
        released.set()
        await task

    asyncio.run(main())
    assert seen["task after the block"] == (("create-index", "test"),)
    assert seen["thread"] == ()
    assert seen["block after it ended"] == ()


def test_a_setting_changed_with_set_config_is_restored_to_its_new_value(db: str) -> None:
    """The guard puts back the session's lock_timeout after a statement in autocommit;
    a change made meanwhile by set_config() (invisible to the guard) is what it puts
    back next time, not the value it saw first."""
    policy = Policy(small_table_rows=0, lock_timeout="2s")
    with safeddl.psycopg.connect(db, policy=policy, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '7s'")
        conn.execute("ALTER TABLE t ADD COLUMN IF NOT EXISTS a int")
        assert conn.execute("SHOW lock_timeout").fetchone() == ("7s",)
        conn.execute("SELECT set_config('lock_timeout', '9s', false)")
        conn.execute("ALTER TABLE t ADD COLUMN IF NOT EXISTS b int")
        assert conn.execute("SHOW lock_timeout").fetchone() == ("9s",)
