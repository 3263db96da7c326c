"""Run a unit of work again, as a whole, after a lock timeout, a deadlock or a
serialization failure.

After any of those errors (SQLSTATE 55P03, 40P01, 40001) the server has aborted the
transaction: only the whole transaction can run again, never the one statement that
failed. Three forms, the same behaviour::

    @safeddl.retrying(attempts=5, max_time="30s")
    def transfer(conn, source, target, amount): ...

    transfer(engine, 1, 2, 100)  # the target in place of the connection

    total = safeddl.run_transaction(engine, lambda conn: conn.execute(...).scalar())

    for attempt in safeddl.attempts(engine):
        with attempt as conn:
            conn.execute(...)

Each attempt is a fresh transaction (``engine.begin()`` and the like) committed when
the unit ends normally and rolled back when it raises. Only the three SQLSTATEs are
retried, recognised on the driver's error also when SQLAlchemy wraps it (``.orig``) or
safeddl reports it as :class:`safeddl.LockTimeout`; every other error propagates at
once. Between attempts: exponential backoff with full jitter (tenacity's
``wait_random_exponential``); the loop stops after ``attempts`` tries or when the next
one would start after ``max_time``, and raises :class:`safeddl.runtime.errors.RetriesExhausted`
(``__cause__``: the last error) with every attempt's error and the sessions in the way.
Each retry is logged (logger ``safeddl``, WARNING) with the reason and those sessions:
the blockers that :class:`safeddl.LockTimeout` names on a guarded connection, the
processes that the server's DETAIL names for a deadlock.

Targets (what gives each attempt its connection):

- an SQLAlchemy ``Engine`` (psycopg or any other driver): ``engine.begin()`` per attempt,
  or a connection in ``AUTOCOMMIT`` with ``autocommit=True``;
- an SQLAlchemy ``Connection`` outside a transaction (``conn.begin()`` per attempt), or
  one in ``AUTOCOMMIT`` with ``autocommit=True``;
- a psycopg ``Connection`` outside a transaction (``conn.transaction()`` per attempt);
- a DSN string: a new connection per attempt from :func:`safeddl.psycopg.connect`
  (guarded by the default policy), closed afterwards;
- a callable returning a psycopg connection, or a context manager that yields one
  (``psycopg_pool.ConnectionPool.connection``): entered per attempt.

A connection that is already inside a transaction block cannot start a fresh one: the
unit then runs once, inside that transaction, and its error propagates, so that the
enclosing unit of work is the one that retries (a statement in an open transaction is
never retried on its own). Async engines and connections are not supported.

Single statements in autocommit (a migration's DDL, ``CREATE INDEX CONCURRENTLY``) can
be retried on their own: ``autocommit=True`` or :func:`retry_statement`. In autocommit
mode a failed attempt does not roll back what earlier statements of the unit did.

``lock_timeout`` (optional) sets the lock wait of each attempt (``SET LOCAL`` in the
transaction; in autocommit a session setting put back afterwards); with
``lock_timeout_cap`` it grows by ``lock_timeout_growth`` per attempt up to the cap,
and never beyond what is left of ``max_time``. On a connection guarded by safeddl the
guard's own bound for the attempt's statements becomes that value too.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from tenacity import (
    AttemptManager,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from safeddl.model import shorten
from safeddl.runtime.errors import (
    AttemptFailure,
    ConfigError,
    RetriesExhausted,
    carry_driver_error,
    is_retryable,
)
from safeddl.runtime.policy import Duration, milliseconds, parse_duration, parse_timeout

if TYPE_CHECKING:
    from safeddl.runtime.guard import Guard

logger = logging.getLogger("safeddl")

P = ParamSpec("P")
R = TypeVar("R")

_SETTING_VALUE = re.compile(r"^[0-9]+(?:\.[0-9]+)?\s*[a-z]*$")


# =========================================================================== policy


@dataclass(frozen=True)
class RetryPolicy:
    """How a unit of work is retried. Durations as in :class:`safeddl.Policy`: a
    timedelta, text such as ``"200ms"`` / ``"30s"``, or a number of milliseconds.

    ``attempts``: tries in all (1 = no retry). ``max_time``: no attempt starts after
    this much time since the first one. ``backoff`` / ``max_backoff``: the wait before
    retry n is random in [0, min(backoff * 2^(n-1), max_backoff)]. ``lock_timeout``:
    the lock wait of the first attempt (None: leave it to the session and the guard);
    with ``lock_timeout_cap`` it is multiplied by ``lock_timeout_growth`` per attempt,
    up to the cap.
    """

    attempts: int = 5
    max_time: Duration = timedelta(seconds=30)
    backoff: Duration = timedelta(milliseconds=50)
    max_backoff: Duration = timedelta(seconds=2)
    lock_timeout: Duration | None = None
    lock_timeout_cap: Duration | None = None
    lock_timeout_growth: float = 2.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("max_time", "backoff", "max_backoff", "lock_timeout", "lock_timeout_cap"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                parse = parse_timeout if name.startswith("lock_timeout") else parse_duration
                object.__setattr__(self, name, parse(value, name, allow_zero=name == "backoff"))
            except ConfigError as exc:
                problems.extend(exc.problems)
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) \
                or self.attempts < 1:
            problems.append(f"attempts = {self.attempts!r}: must be a whole number, 1 or more")
        if not isinstance(self.lock_timeout_growth, (int, float)) \
                or self.lock_timeout_growth < 1:
            problems.append(f"lock_timeout_growth = {self.lock_timeout_growth!r}: must be a "
                            "number, 1 or more")
        if self.lock_timeout_cap is not None and not problems:
            if self.lock_timeout is None:
                problems.append("lock_timeout_cap needs lock_timeout (the first attempt's "
                                "lock wait), e.g. lock_timeout='200ms', lock_timeout_cap='5s'")
            elif self.lock_timeout_cap < self.lock_timeout:  # type: ignore[operator]
                problems.append(f"lock_timeout_cap = {self.lock_timeout_cap}: must not be "
                                f"below lock_timeout = {self.lock_timeout}")
        if problems:
            lead = problems[0] if len(problems) == 1 else "\n  ".join(["", *problems])
            raise ConfigError(f"safeddl retry: invalid setting {lead}", problems)

    @property
    def max_seconds(self) -> float:
        return _delta(self.max_time).total_seconds()

    def lock_timeout_ms_for(self, number: int, seconds_left: float | None = None) -> int | None:
        """The lock wait of attempt ``number`` (1-based), in ms; None: not set."""
        if self.lock_timeout is None:
            return None
        wait = milliseconds(_delta(self.lock_timeout))
        if self.lock_timeout_cap is not None:
            cap = milliseconds(_delta(self.lock_timeout_cap))
            wait = min(cap, round(wait * self.lock_timeout_growth ** (number - 1)))
        if seconds_left is not None:
            wait = min(wait, max(1, int(seconds_left * 1000)))
        return wait

    def with_settings(self, settings: dict[str, Any]) -> RetryPolicy:
        """A copy with these fields replaced; an unknown key raises ConfigError."""
        if not settings:
            return self
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"safeddl retry: unknown setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **settings)


def _delta(value: Duration | None) -> timedelta:
    assert isinstance(value, timedelta)  # normalised in __post_init__
    return value


# =========================================================================== targets


class _Target:
    """What gives each attempt its connection, for one kind of target."""

    description = "connection"

    def nested(self) -> bool:
        """Already inside a transaction block: the unit runs once, as part of it."""
        return False

    def open(self, stack: ExitStack, autocommit: bool) -> Any:
        """The attempt's connection, in a fresh transaction (or autocommit); when
        :meth:`nested`, the connection as it is."""
        raise NotImplementedError

    def execute(self, conn: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def read(self, conn: Any, sql: str) -> list[tuple[Any, ...]]:
        """A query on the attempt's connection that no guard sees (a guard bounding
        every statement would change the very setting being read)."""
        raise NotImplementedError

    def guard_of(self, conn: Any) -> Guard | None:
        """The safeddl guard in force on the attempt's connection, if any."""
        return None

    def client_key(self, conn: Any) -> int | None:
        """What the driver calls the backend pid (a pooler's key behind a pooler)."""
        return None

    def pinned(self, conn: Any) -> bool:
        """The connection runs every statement on one server session (a direct
        connection, or the policy's ``pool_mode = "session"``): only then may a session
        setting be made, since behind a transaction-pooling pooler the SET and its
        RESET can land on different server connections and stay there for others."""
        guard = self.guard_of(conn)
        mode = guard.policy.pool_mode if guard is not None else "auto"
        if mode != "auto":
            return mode == "session"
        key = self.client_key(conn)
        if key is None:
            return True  # a driver that does not say: as before
        rows = self.read(conn, "SELECT pg_backend_pid()")
        return bool(rows) and rows[0][0] == key

    def bound_lock_waits(self, conn: Any, stack: ExitStack, wait_ms: int,
                         autocommit: bool) -> None:
        """``lock_timeout`` for this attempt: SET LOCAL in a transaction; in autocommit
        a session setting put back when the attempt ends, on a pinned connection only
        (behind a pooler the guard's own per-statement bound is all there is). A guard on
        the connection bounds the attempt's statements by the same value."""
        if autocommit and not self.pinned(conn):
            logger.info("safeddl: the attempt runs in autocommit behind a pooler: no "
                        "session-level lock_timeout (it could reach other clients); %s",
                        "the guard bounds each statement in a transaction of its own"
                        if self.guard_of(conn) is not None else
                        "the connection is not guarded, so its statements wait unbounded")
        elif autocommit:
            rows = self.read(conn, "SELECT current_setting('lock_timeout'), source "
                                   "FROM pg_settings WHERE name = 'lock_timeout'")
            before, source = rows[0] if rows else ("0", "default")
            if source == "session" and _SETTING_VALUE.match(str(before)):
                stack.callback(self.execute, conn, f"SET lock_timeout = '{before}'")
            else:
                stack.callback(self.execute, conn, "RESET lock_timeout")
            self.execute(conn, f"SET lock_timeout = '{int(wait_ms)}ms'")
        else:
            self.execute(conn, f"SET LOCAL lock_timeout = '{int(wait_ms)}ms'")
        guard = self.guard_of(conn)
        if guard is not None and guard.policy.lock_timeout_ms != wait_ms:
            from safeddl.integrations import guard as guard_block

            policy = dataclasses.replace(guard.policy, lock_timeout=timedelta(milliseconds=wait_ms))
            stack.enter_context(guard_block(conn, policy))


class _SqlaTarget(_Target):
    """What the SQLAlchemy targets share: statements through ``exec_driver_sql``."""

    def execute(self, conn: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        return _sqla_execute(conn, sql, params)

    def read(self, conn: Any, sql: str) -> list[tuple[Any, ...]]:
        return _sqla_read(conn, sql)

    def guard_of(self, conn: Any) -> Guard | None:
        return _sqla_guard(conn)

    def client_key(self, conn: Any) -> int | None:
        driver = getattr(getattr(conn, "connection", None), "driver_connection", None)
        key = getattr(getattr(driver, "info", None), "backend_pid", None)
        return key if isinstance(key, int) else None


class _SqlaEngine(_SqlaTarget):
    description = "SQLAlchemy engine"

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def open(self, stack: ExitStack, autocommit: bool) -> Any:
        if not autocommit:
            return stack.enter_context(self.engine.begin())
        conn = stack.enter_context(self.engine.connect())
        return conn.execution_options(isolation_level="AUTOCOMMIT")


class _SqlaConnection(_SqlaTarget):
    description = "SQLAlchemy connection"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def _autocommit_mode(self) -> bool:
        if self.conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            return True
        driver = self.conn.connection.driver_connection
        return getattr(driver, "autocommit", False) is True

    def nested(self) -> bool:
        if self._autocommit_mode():
            driver = self.conn.connection.driver_connection
            status = getattr(getattr(driver, "info", None), "transaction_status", None)
            return status is not None and int(status) != 0  # 0: IDLE
        return bool(self.conn.in_transaction())

    def open(self, stack: ExitStack, autocommit: bool) -> Any:
        if self.nested():  # run once, inside the caller's transaction
            return self.conn
        if self._autocommit_mode() != autocommit:
            raise ConfigError(
                "safeddl retry: this SQLAlchemy connection is "
                + ("in AUTOCOMMIT: pass autocommit=True, or an Engine for transactions"
                   if not autocommit else
                   "not in AUTOCOMMIT: pass the Engine, or "
                   "conn.execution_options(isolation_level='AUTOCOMMIT')"))
        if not autocommit:
            stack.enter_context(self.conn.begin())
        return self.conn


def _sqla_execute(conn: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    result = conn.exec_driver_sql(sql, params) if params is not None else conn.exec_driver_sql(sql)
    return [tuple(row) for row in result] if result.returns_rows else []


def _sqla_read(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    cursor = conn.connection.cursor()  # the DBAPI cursor: the guard hooks the dialect
    try:
        cursor.execute(sql)
        return [tuple(row) for row in cursor.fetchall()]
    finally:
        cursor.close()


def _sqla_guard(conn: Any) -> Guard | None:
    from safeddl.integrations.sqlalchemy import engine_driver, hook_for
    from safeddl.runtime.scope import scoped_guard

    engine = conn.engine
    if engine_driver(engine) != "psycopg":
        return None
    return scoped_guard((conn, engine)) or hook_for(engine).guard


class _PsycopgConnection(_Target):
    description = "psycopg connection"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def nested(self) -> bool:
        return int(self.conn.info.transaction_status) != 0  # 0: IDLE

    def open(self, stack: ExitStack, autocommit: bool) -> Any:
        if self.nested():  # run once, inside the caller's transaction
            return self.conn
        return _psycopg_unit(self.conn, stack, autocommit)

    def execute(self, conn: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        return _psycopg_execute(conn, sql, params)

    def read(self, conn: Any, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.Cursor(conn) as cursor:  # not the connection's (maybe guarded) factory
            return list(cursor.execute(sql).fetchall())

    def guard_of(self, conn: Any) -> Guard | None:
        return _psycopg_guard(conn)

    def client_key(self, conn: Any) -> int | None:
        key = getattr(getattr(conn, "info", None), "backend_pid", None)
        return key if isinstance(key, int) else None


class _PsycopgFactory(_PsycopgConnection):
    description = "psycopg connection factory"

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory

    def nested(self) -> bool:
        return False

    def open(self, stack: ExitStack, autocommit: bool) -> Any:
        conn = stack.enter_context(_entered(self.factory()))
        return _psycopg_unit(conn, stack, autocommit)


def _entered(made: Any) -> Any:
    """A psycopg connection is its own context manager (closed at exit); anything else
    the factory returns must be one that yields a connection."""
    if not hasattr(made, "__enter__"):
        raise TypeError("safeddl retry: the connection factory must return a psycopg "
                        f"Connection or a context manager yielding one, not {type(made).__name__}")
    return made


def _psycopg_unit(conn: Any, stack: ExitStack, autocommit: bool) -> Any:
    if autocommit:
        if not conn.autocommit:  # idle here: switching is allowed, and undone afterwards
            conn.autocommit = True
            stack.callback(setattr, conn, "autocommit", False)
        return conn
    stack.enter_context(conn.transaction())
    return conn


def _psycopg_execute(conn: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    cursor = conn.execute(sql, params)
    return list(cursor.fetchall()) if cursor.description else []


def _psycopg_guard(conn: Any) -> Guard | None:
    from safeddl.integrations.psycopg import slot_of
    from safeddl.runtime.scope import scoped_guard

    scoped = scoped_guard((conn,))
    if scoped is not None:
        return scoped
    slot = slot_of(conn)
    if slot is not None and slot.guard is not None:
        guard: Guard = slot.guard
        return guard
    class_guard: Guard | None = getattr(conn.cursor_factory, "_class_guard", None)
    return class_guard


def _dsn_factory(dsn: str) -> Callable[[], Any]:
    def connect() -> Any:
        from safeddl.integrations.psycopg import connect as guarded_connect

        return guarded_connect(dsn)

    return connect


def target_for(target: Any) -> _Target:
    """The adapter for an Engine, Connection, DSN or connection factory."""
    if isinstance(target, str):
        return _PsycopgFactory(_dsn_factory(target))
    sqlalchemy_engine = sys.modules.get("sqlalchemy.engine")
    if sqlalchemy_engine is not None:
        if isinstance(target, sqlalchemy_engine.Engine):
            return _SqlaEngine(target)
        if isinstance(target, sqlalchemy_engine.Connection):
            return _SqlaConnection(target)
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(target, psycopg.Connection):
        return _PsycopgConnection(target)
    library = (type(target).__module__ or "").split(".", 1)[0]
    if library not in ("sqlalchemy", "psycopg") and callable(target):
        return _PsycopgFactory(target)
    raise TypeError(f"safeddl retry cannot run a unit of work on a {type(target).__name__}: "
                    "expected an SQLAlchemy Engine or Connection (sync), a psycopg Connection, "
                    "a DSN, or a callable returning a psycopg connection")


# =========================================================================== attempts


class Attempt:
    """One try of the unit of work. ``with attempt as conn:`` opens a fresh transaction
    (or an autocommit connection), committed when the block ends normally and rolled
    back when it raises; a retryable error is kept for the loop, which then waits and
    hands out the next attempt (or raises RetriesExhausted)."""

    def __init__(self, run: _Run, number: int, manager: AttemptManager | None,
                 lock_timeout_ms: int | None) -> None:
        self.number = number
        self.lock_timeout_ms = lock_timeout_ms
        self.seconds = 0.0
        self.finished = False
        self._run = run
        self._manager = manager
        self._stack: ExitStack | None = None
        self._started = 0.0

    def __enter__(self) -> Any:
        if self._stack is not None:
            raise RuntimeError("safeddl retry: an attempt can be entered once")
        run = self._run
        stack = ExitStack()
        self._stack = stack
        self._started = time.monotonic()
        run.current = self
        try:
            conn = run.target.open(stack, run.autocommit)
            if self.lock_timeout_ms is not None:
                run.target.bound_lock_waits(conn, stack, self.lock_timeout_ms, run.autocommit)
        except BaseException:
            self.finished = True
            stack.__exit__(*sys.exc_info())
            raise
        return conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        assert self._stack is not None, "an attempt is used as `with attempt as conn:`"
        error = exc
        try:
            if self._stack.__exit__(exc_type, exc, tb):
                error = None
        except BaseException as closing:  # noqa: BLE001 - e.g. COMMIT failing with 40001
            error = closing
        self.seconds = time.monotonic() - self._started
        self.finished = True
        if self._manager is None:  # inside the caller's transaction: no retry here
            if error is not None and error is not exc:
                raise error
            return error is None and exc is not None
        if error is None:
            self._manager.__exit__(None, None, None)
        else:
            self._manager.__exit__(type(error), error, error.__traceback__)
        return True


class _Run:
    """One retried unit of work: the tenacity loop and what every attempt reported."""

    def __init__(self, target: Any, policy: RetryPolicy, autocommit: bool, unit: str) -> None:
        self.target = target_for(target)
        self.policy = policy
        self.autocommit = autocommit
        self.unit = unit
        self.failures: list[AttemptFailure] = []
        self.current: Attempt | None = None
        self.started = 0.0

    def attempts(self) -> Iterator[Attempt]:
        if self.target.nested():
            logger.debug("safeddl: %s runs once, inside the transaction already open on "
                         "its %s; an error propagates so that the enclosing unit of work "
                         "retries", self.unit, self.target.description)
            attempt = Attempt(self, 1, None, None)
            yield attempt
            self._check_used(attempt)
            return
        policy = self.policy
        retrying = Retrying(
            retry=retry_if_exception(is_retryable),
            stop=stop_after_attempt(policy.attempts) | stop_before_delay(policy.max_seconds),
            wait=wait_random_exponential(multiplier=_delta(policy.backoff).total_seconds(),
                                         max=_delta(policy.max_backoff).total_seconds()),
            after=self._record,
            before_sleep=self._log_retry,
            retry_error_callback=self._give_up,
        )
        self.started = time.monotonic()
        for manager in retrying:
            number = manager.retry_state.attempt_number
            left = policy.max_seconds - (time.monotonic() - self.started)
            attempt = Attempt(self, number, manager, policy.lock_timeout_ms_for(number, left))
            yield attempt
            self._check_used(attempt)

    @staticmethod
    def _check_used(attempt: Attempt) -> None:
        if not attempt.finished:
            raise TypeError("safeddl retry: use each attempt as `with attempt as conn:`")

    # -- tenacity callbacks ------------------------------------------------------------
    def _record(self, state: RetryCallState) -> None:
        """After a failed attempt that is retryable (retried or not)."""
        error = state.outcome.exception() if state.outcome is not None else None
        attempt = self.current
        if error is None or attempt is None:
            return
        self.failures.append(AttemptFailure.of(state.attempt_number, error, attempt.seconds,
                                               attempt.lock_timeout_ms))

    def _log_retry(self, state: RetryCallState) -> None:
        failure = self.failures[-1]
        number = state.attempt_number
        next_wait = self.policy.lock_timeout_ms_for(number + 1)
        then = f" with lock_timeout {next_wait}ms" if next_wait is not None else ""
        logger.warning("safeddl: %s: attempt %d of %d failed after %.2f s with a %s; "
                       "running it again in %.2f s%s.", self.unit, number, self.policy.attempts,
                       failure.seconds, failure.summary(), state.upcoming_sleep, then)
        for blocker in failure.blockers:
            logger.warning("safeddl:   %s", blocker.describe())

    def _give_up(self, state: RetryCallState) -> None:
        seconds = time.monotonic() - self.started
        if state.attempt_number >= self.policy.attempts:
            limit = f"the limit is {self.policy.attempts} attempts"
        else:
            limit = (f"the next attempt would start after max_time "
                     f"{self.policy.max_seconds:g} s")
        error = RetriesExhausted(self.unit, self.failures, seconds, limit,
                                 transactional=not self.autocommit)
        last = self.failures[-1].error if self.failures else None
        if last is not None:  # still caught by handlers for the last attempt's error
            carry_driver_error(error, RetriesExhausted, last)
        raise error from last


def attempts(target: Any, *, autocommit: bool = False, name: str | None = None,
             policy: RetryPolicy | None = None, **settings: Any) -> Iterator[Attempt]:
    """``for attempt in safeddl.attempts(engine): with attempt as conn: ...``: each
    attempt a fresh transaction on ``target``, retried as described in the module; the
    settings are the fields of :class:`RetryPolicy`."""
    chosen = (policy or RetryPolicy()).with_settings(settings)
    return _Run(target, chosen, autocommit, name or "the unit of work").attempts()


def run_transaction(target: Any, fn: Callable[[Any], R], *, autocommit: bool = False,
                    name: str | None = None, policy: RetryPolicy | None = None,
                    **settings: Any) -> R:
    """``fn(conn)`` in a fresh transaction on ``target``, run again on lock timeout,
    deadlock or serialization failure; returns what the successful attempt returned.
    ``name`` (default: the function's) is how logs and errors call the unit."""
    outcome: list[R] = []
    for attempt in attempts(target, autocommit=autocommit, name=name or _name_of(fn),
                            policy=policy, **settings):
        with attempt as conn:
            outcome[:] = [fn(conn)]
    return outcome[0]


def retrying(*, autocommit: bool = False, policy: RetryPolicy | None = None,
             **settings: Any) -> Callable[[Callable[Concatenate[Any, P], R]],
                                          Callable[Concatenate[Any, P], R]]:
    """Decorate a function whose first argument is a connection: call it with a target
    (Engine, DSN, ...) in that place, and every call runs as a retried unit of work."""
    chosen = (policy or RetryPolicy()).with_settings(settings)

    def decorate(fn: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[Any, P], R]:
        @functools.wraps(fn)
        def run(target: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
            outcome: list[R] = []
            for attempt in attempts(target, autocommit=autocommit, name=_name_of(fn),
                                    policy=chosen):
                with attempt as conn:
                    outcome[:] = [fn(conn, *args, **kwargs)]
            return outcome[0]

        return run

    return decorate


def retry_statement(target: Any, statement: str, params: Any = None, *,
                    policy: RetryPolicy | None = None, **settings: Any) -> None:
    """One statement on its own in autocommit (a migration's DDL, a concurrent index
    build), run again on lock timeout, deadlock or serialization failure. On a
    connection inside a transaction block it runs once and its error propagates: the
    transaction is aborted, so only the enclosing unit of work can retry."""
    adapter = target_for(target)

    def run(conn: Any) -> None:
        adapter.execute(conn, statement, params)

    run_transaction(target, run, autocommit=True, name=f"`{shorten(statement, 80)}`",
                    policy=policy, **settings)


def _name_of(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not isinstance(name, str) or name.endswith("<lambda>"):
        return "the unit of work"
    name = name.rsplit("<locals>.", 1)[-1]
    return f"{name}()"


__all__ = ["Attempt", "RetryPolicy", "attempts", "retry_statement", "retrying",
           "run_transaction", "target_for"]
