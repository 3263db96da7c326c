"""Retry without a server: which errors are retryable (psycopg's own exception classes,
as SQLAlchemy and safeddl wrap them), the lock_timeout schedule, settings checks, and
what the give-up error says. The retry behaviour itself is tested against a real server
in tests/integration/test_retry.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy.exc

import safeddl
from safeddl.locks import LockMode
from safeddl.recovery.retry import RetryPolicy
from safeddl.runtime.blockers import Blocker
from safeddl.runtime.errors import (
    AttemptFailure,
    ConfigError,
    LockTimeout,
    PreflightBlocked,
    RetriesExhausted,
    deadlock_pids,
    is_retryable,
    retry_reason,
    server_detail,
    sqlstate_of,
)

DEADLOCK_DETAIL = ("Process 4242 waits for ShareLock on transaction 771; blocked by process 4343.\n"
                   "Process 4343 waits for ShareLock on transaction 770; blocked by process 4242.")


def wrapped(orig: BaseException) -> sqlalchemy.exc.DBAPIError:
    """What SQLAlchemy raises for a driver error."""
    return sqlalchemy.exc.DBAPIError.instance("UPDATE t SET x = 1", {}, orig, psycopg.Error)


def holder(pid: int = 4343) -> Blocker:
    return Blocker(pid, "app", "nightly job", "idle in transaction", "accounts",
                   "AccessExclusiveLock", True, timedelta(seconds=3), timedelta(seconds=3),
                   "Client", "ClientRead", "LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")


def lock_timeout(pid: int = 4343) -> LockTimeout:
    driver = psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")
    error = LockTimeout("UPDATE accounts SET balance = 0", "accounts", LockMode.ROW_EXCLUSIVE,
                        [holder(pid)], lock_timeout_ms=200, orig=driver)
    error.__cause__ = driver
    return error


class Psycopg2Like(Exception):
    """psycopg2 names the SQLSTATE ``pgcode``."""

    pgcode = "40P01"


class WithDetail(Exception):
    """A driver error as the server sends it, with a DETAIL (``diag.message_detail``)."""

    sqlstate = "40P01"

    class diag:  # psycopg's attribute name
        message_detail = DEADLOCK_DETAIL


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(("error", "reason"), [
    (psycopg.errors.LockNotAvailable("lock timeout"), "lock timeout"),
    (psycopg.errors.DeadlockDetected("deadlock detected"), "deadlock"),
    (psycopg.errors.SerializationFailure("could not serialize access"), "serialization failure"),
    (wrapped(psycopg.errors.LockNotAvailable("lock timeout")), "lock timeout"),
    (wrapped(psycopg.errors.DeadlockDetected("deadlock detected")), "deadlock"),
    (wrapped(psycopg.errors.SerializationFailure("x")), "serialization failure"),
    (lock_timeout(), "lock timeout"),
    (PreflightBlocked("ALTER TABLE accounts ADD c int", "accounts", LockMode.ACCESS_EXCLUSIVE,
                      [holder()]), "lock timeout"),
    (Psycopg2Like("deadlock detected"), "deadlock"),
])
def test_retryable_errors(error: BaseException, reason: str) -> None:
    assert retry_reason(error) == reason
    assert is_retryable(error)


@pytest.mark.parametrize("error", [
    psycopg.errors.UniqueViolation("duplicate key value violates unique constraint"),
    wrapped(psycopg.errors.UniqueViolation("duplicate key")),
    psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
    wrapped(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")),
    psycopg.errors.ActiveSqlTransaction("CREATE INDEX CONCURRENTLY cannot run inside a "
                                        "transaction block"),
    psycopg.OperationalError("connection is lost"),
    safeddl.UnsafeStatement("create-index", "CREATE INDEX i ON t (x)", None, "refused"),
    ValueError("not a database error"),
])
def test_everything_else_is_not_retried(error: BaseException) -> None:
    assert retry_reason(error) is None
    assert not is_retryable(error)


def test_sqlstate_is_read_through_every_wrapper() -> None:
    driver = psycopg.errors.DeadlockDetected("deadlock detected")
    assert sqlstate_of(wrapped(driver)) == "40P01"
    assert sqlstate_of(None) is None
    assert server_detail(WithDetail()) == DEADLOCK_DETAIL
    assert server_detail(wrapped(psycopg.errors.DeadlockDetected("x"))) is None


def test_deadlock_detail_names_the_other_processes() -> None:
    assert deadlock_pids(DEADLOCK_DETAIL) == (4343,)
    three = ("Process 1 waits for ShareLock on transaction 7; blocked by process 2.\n"
             "Process 2 waits for ShareLock on transaction 8; blocked by process 3.\n"
             "Process 3 waits for ShareLock on transaction 9; blocked by process 1.")
    assert deadlock_pids(three) == (2, 3)
    assert deadlock_pids(None) == ()
    assert deadlock_pids("something else") == ()


# --------------------------------------------------------------------------- failures


def test_a_lock_timeout_failure_keeps_the_blockers() -> None:
    failure = AttemptFailure.of(2, lock_timeout(), 0.21, 200)
    assert (failure.reason, failure.sqlstate) == ("lock timeout", "55P03")
    assert failure.blocking_pids == (4343,)
    text = failure.describe()
    assert text.startswith("attempt 2 (0.21 s, lock_timeout 200ms): lock timeout (55P03)")
    assert "`UPDATE accounts SET balance = 0` waited 200 ms for ROW EXCLUSIVE on accounts" in text
    assert "pid 4343 (holds AccessExclusiveLock on accounts)" in text


def test_a_deadlock_failure_names_the_other_process() -> None:
    failure = AttemptFailure.of(1, WithDetail("deadlock detected"), 0.1)
    assert failure.reason == "deadlock" and failure.blocking_pids == (4343,)
    assert "in the way: pid 4343" in failure.summary()
    assert "blocked by process 4242" in failure.summary()


def test_an_unguarded_lock_timeout_says_why_there_are_no_blockers() -> None:
    failure = AttemptFailure.of(1, wrapped(psycopg.errors.LockNotAvailable("x")), 0.1)
    assert failure.blocking_pids == ()
    assert "not guarded by safeddl" in failure.summary()


def test_giving_up_names_every_attempt_and_the_sessions_in_the_way() -> None:
    failures = [AttemptFailure.of(1, lock_timeout(), 0.2, 100),
                AttemptFailure.of(2, lock_timeout(), 0.4, 200),
                AttemptFailure.of(3, WithDetail("deadlock detected"), 0.1, 400)]
    error = RetriesExhausted("transfer()", failures, 1.3, "the limit is 3 attempts")
    assert isinstance(error, safeddl.SafeDDLError)
    assert error.last_error is failures[-1].error
    assert error.errors == [f.error for f in failures]
    assert [b.pid for b in error.blockers] == [4343]
    assert error.blocking_pids == [4343]
    message = str(error)
    lines = message.splitlines()
    assert lines[0].startswith("safeddl: gave up on transfer() after 3 attempts in 1.3 s "
                               "(the limit is 3 attempts)")
    assert "lock timeout, deadlock" in lines[0] and "rolled back" in lines[0]
    assert [line.split(" (")[0].strip() for line in lines[1:4]] == [
        "attempt 1", "attempt 2", "attempt 3"]
    assert "pid 4343 (application 'nightly job'" in message
    assert "pg_stat_activity" in message and "attempts=..." in message
    autocommit = RetriesExhausted("`CREATE INDEX ...`", failures[:1], 0.2, "limit",
                                  transactional=False)
    assert "autocommit" in str(autocommit) and "rolled back" not in str(autocommit)


# --------------------------------------------------------------------------- policy


def test_lock_timeout_grows_up_to_the_cap() -> None:
    policy = RetryPolicy(lock_timeout="100ms", lock_timeout_cap="1s", lock_timeout_growth=3)
    assert [policy.lock_timeout_ms_for(n) for n in range(1, 5)] == [100, 300, 900, 1000]
    assert policy.lock_timeout_ms_for(4, seconds_left=0.25) == 250  # never past max_time
    assert policy.lock_timeout_ms_for(9, seconds_left=0.0) == 1
    steady = RetryPolicy(lock_timeout=timedelta(milliseconds=150))
    assert [steady.lock_timeout_ms_for(n) for n in (1, 2, 5)] == [150, 150, 150]
    assert RetryPolicy().lock_timeout_ms_for(3) is None


def test_durations_are_read_like_the_guard_policy() -> None:
    policy = RetryPolicy(max_time="2min", backoff=0, max_backoff=750)
    assert policy.max_seconds == 120
    assert policy.backoff == timedelta(0) and policy.max_backoff == timedelta(milliseconds=750)


@pytest.mark.parametrize(("settings", "named"), [
    ({"attempts": 0}, "attempts = 0"),
    ({"attempts": True}, "attempts = True"),
    ({"max_time": "soon"}, "max_time"),
    ({"lock_timeout_cap": "1s"}, "lock_timeout_cap needs lock_timeout"),
    ({"lock_timeout": "2s", "lock_timeout_cap": "1s"}, "must not be below"),
    ({"lock_timeout_growth": 0.5}, "lock_timeout_growth = 0.5"),
])
def test_bad_settings_are_named(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        RetryPolicy(**settings)


def test_unknown_settings_are_refused_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match="unknown setting.*retries.*known: attempts"):
        safeddl.attempts("host=nowhere", retries=3)
    with pytest.raises(ConfigError, match="timeout"):
        safeddl.retrying(timeout="1s")


def test_targets_that_cannot_be_retried_are_refused() -> None:
    with pytest.raises(TypeError, match="cannot run a unit of work on a int"):
        safeddl.run_transaction(42, lambda conn: None)


def test_an_attempt_must_be_entered() -> None:
    """Nothing connects until an attempt is entered; skipping one is a mistake."""
    made: list[int] = []
    loop = safeddl.attempts(lambda: made.append(1))
    next(loop)
    with pytest.raises(TypeError, match="with attempt as conn"):
        next(loop)
    assert made == []
