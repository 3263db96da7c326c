"""The exceptions safeddl raises, and recognising the driver's lock-timeout error.

Importing this module is cheap: it imports neither psycopg nor SQLAlchemy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from safeddl.model import shorten

if TYPE_CHECKING:
    from safeddl.locks import LockMode
    from safeddl.rules import Finding
    from safeddl.runtime.blockers import Blocker

LOCK_NOT_AVAILABLE = "55P03"
DEADLOCK_DETECTED = "40P01"
SERIALIZATION_FAILURE = "40001"
QUERY_CANCELED = "57014"

RETRY_REASONS = {
    LOCK_NOT_AVAILABLE: "lock timeout",
    DEADLOCK_DETECTED: "deadlock",
    SERIALIZATION_FAILURE: "serialization failure",
}
"""The SQLSTATEs after which running the whole transaction again can succeed."""

_DEADLOCK_PROCESS = re.compile(r"\bProcess (\d+) waits for ")
_BLOCKED_BY = re.compile(r"\bblocked by process (\d+)")


class SafeDDLError(Exception):
    """Base class of every error safeddl raises."""


class ConfigError(SafeDDLError, ValueError):
    """A policy setting has a bad value (the message names the key, the value and where
    it came from)."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems) or (message,)


class UnsafeStatement(SafeDDLError):
    """A statement the policy refuses. It was not sent to the server."""

    def __init__(self, rule: str, statement: str, safe_alternative: str | None, message: str,
                 findings: Sequence[Finding] = ()) -> None:
        super().__init__(message)
        self.rule = rule
        self.statement = statement
        self.safe_alternative = safe_alternative
        self.message = message
        self.findings: tuple[Finding, ...] = tuple(findings)


class LockTimeout(SafeDDLError):
    """A statement gave up waiting for a table lock (SQLSTATE 55P03).

    The driver's exception is kept as ``__cause__`` (and ``orig``). ``blockers`` are the
    sessions that held, or queued ahead for, a conflicting lock when it gave up. Only
    the whole transaction can be retried: the server aborted it.
    """

    sqlstate = LOCK_NOT_AVAILABLE

    def __init__(self, statement: str, relation: str | None, mode: LockMode | None,
                 blockers: Sequence[Blocker] = (), *, lock_timeout_ms: int | None = None,
                 orig: BaseException | None = None, note: str | None = None) -> None:
        self.statement = statement
        self.relation = relation
        self.mode = mode
        self.blockers: list[Blocker] = list(blockers)
        self.lock_timeout_ms = lock_timeout_ms
        self.orig = orig
        self.note = note
        super().__init__(self._compose())

    def _compose(self) -> str:
        lines = [self._headline()]
        if self.blockers:
            lines.append("Sessions holding a conflicting lock:")
            lines.extend("  " + blocker.describe() for blocker in self.blockers)
        else:
            lines.append("No session holding a conflicting lock was found any more "
                         "(it may have finished meanwhile).")
        if self.note:
            lines.append(self.note)
        lines.append("The statement did not run and its transaction is aborted: retry the "
                     "whole transaction later, with backoff.")
        return "\n".join(lines)

    def _headline(self) -> str:
        waited = f" after {self.lock_timeout_ms} ms" if self.lock_timeout_ms else ""
        target = ""
        if self.mode is not None and self.relation is not None:
            target = f" for {self.mode.sql_name} on {self.relation}"
        elif self.relation is not None:
            target = f" for a lock on {self.relation}"
        return (f"safeddl: lock timeout{waited}: `{shorten(self.statement)}` waited{target} "
                "and gave up instead of blocking the queries queued behind it.")


class PreflightBlocked(LockTimeout):
    """The pre-flight check found long-running sessions holding a conflicting lock; the
    statement was not sent (the transaction is not aborted)."""

    def _headline(self) -> str:
        target = f" {self.mode.sql_name} on {self.relation}" if self.mode and self.relation else ""
        return (f"safeddl: pre-flight: `{shorten(self.statement)}` needs{target}, and other "
                "sessions have held a conflicting lock for too long; it was not sent, so it "
                "did not join the lock queue behind them.")


def driver_errors(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and the errors it wraps through ``.orig`` (SQLAlchemy's DBAPIError,
    safeddl.LockTimeout), outermost first."""
    chain: list[BaseException] = []
    while exc is not None and len(chain) < 4 and all(exc is not seen for seen in chain):
        chain.append(exc)
        inner = getattr(exc, "orig", None)
        exc = inner if isinstance(inner, BaseException) else None
    return chain


def sqlstate_of(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a driver error (psycopg's ``sqlstate``, psycopg2's ``pgcode``),
    also when SQLAlchemy or safeddl wraps it (``.orig``)."""
    for error in driver_errors(exc):
        for attribute in ("sqlstate", "pgcode"):
            state = getattr(error, attribute, None)
            if isinstance(state, str):
                return state
    return None


def is_lock_timeout(exc: BaseException | None) -> bool:
    """``LockTimeout``, psycopg's ``LockNotAvailable``, or SQLAlchemy wrapping it."""
    return sqlstate_of(exc) == LOCK_NOT_AVAILABLE


def retry_reason(exc: BaseException | None) -> str | None:
    """"lock timeout", "deadlock" or "serialization failure" when running the whole
    transaction again can succeed; None for every other error."""
    state = sqlstate_of(exc)
    return RETRY_REASONS.get(state) if state is not None else None


def is_retryable(exc: BaseException | None) -> bool:
    """A lock timeout (55P03), deadlock (40P01) or serialization failure (40001)."""
    return retry_reason(exc) is not None


def server_detail(exc: BaseException | None) -> str | None:
    """The DETAIL the server sent with the error (a deadlock's names the processes)."""
    for error in driver_errors(exc):
        detail = getattr(getattr(error, "diag", None), "message_detail", None)
        if isinstance(detail, str) and detail:
            return detail
    return None


def deadlock_pids(detail: str | None) -> tuple[int, ...]:
    """The other processes of a deadlock cycle, from the server's DETAIL ("Process 1
    waits for ShareLock on transaction 9; blocked by process 2. ..."): every process
    named except the first, which is the one that detected the deadlock and was
    cancelled."""
    if not detail:
        return ()
    first = _DEADLOCK_PROCESS.search(detail)
    victim = int(first.group(1)) if first else None
    pids: list[int] = []
    for match in [*_DEADLOCK_PROCESS.finditer(detail), *_BLOCKED_BY.finditer(detail)]:
        pid = int(match.group(1))
        if pid != victim and pid not in pids:
            pids.append(pid)
    return tuple(pids)


def is_distributed_deadlock(exc: BaseException | None) -> bool:
    """A deadlock Citus found across nodes ("... involved in a distributed deadlock"):
    SQLSTATE 40P01 without the DETAIL a local deadlock carries."""
    if sqlstate_of(exc) != DEADLOCK_DETECTED or server_detail(exc):
        return False
    return any("distributed deadlock" in str(error) for error in driver_errors(exc))


def _first_line(error: BaseException) -> str:
    """The error's own message: the driver's for an SQLAlchemy wrapper (whose text
    repeats the statement and adds a link)."""
    chain = driver_errors(error)
    own = chain[0] if isinstance(chain[0], SafeDDLError) else chain[-1]
    lines = str(own).strip().splitlines()
    return lines[0] if lines else type(own).__name__


@dataclass(frozen=True)
class AttemptFailure:
    """One attempt of a retried unit of work that failed with a retryable error."""

    number: int
    error: BaseException = field(compare=False)
    reason: str  # "lock timeout", "deadlock" or "serialization failure"
    sqlstate: str
    seconds: float  # how long the attempt ran
    lock_timeout_ms: int | None = None  # what retrying set for this attempt, if anything
    blockers: tuple[Blocker, ...] = ()  # from safeddl.LockTimeout
    detail: str | None = None  # the server's DETAIL

    @classmethod
    def of(cls, number: int, error: BaseException, seconds: float,
           lock_timeout_ms: int | None = None) -> AttemptFailure:
        state = sqlstate_of(error) or "?"
        blockers: tuple[Blocker, ...] = ()
        for wrapped in driver_errors(error):
            if isinstance(wrapped, LockTimeout):
                blockers = tuple(wrapped.blockers)
                break
        return cls(number, error, RETRY_REASONS.get(state, "error"), state, seconds,
                   lock_timeout_ms, blockers, server_detail(error))

    @property
    def blocking_pids(self) -> tuple[int, ...]:
        """The sessions in the way: the lock holders, or the rest of a deadlock cycle."""
        if self.blockers:
            return tuple(dict.fromkeys(b.pid for b in self.blockers))
        return deadlock_pids(self.detail) if self.sqlstate == DEADLOCK_DETECTED else ()

    def summary(self) -> str:
        """What went wrong, in one line: the reason, the statement and who was in the way."""
        text = f"{self.reason} ({self.sqlstate}): "
        timeout = next((e for e in driver_errors(self.error) if isinstance(e, LockTimeout)), None)
        if timeout is not None:
            waited = f" {timeout.lock_timeout_ms} ms" if timeout.lock_timeout_ms else ""
            target = f" for {timeout.mode.sql_name}" if timeout.mode is not None else ""
            target += f" on {timeout.relation}" if timeout.relation else ""
            text += f"`{shorten(timeout.statement, 120)}` waited{waited}{target}"
        else:
            text += _first_line(self.error)
        if self.blockers:
            text += "; in the way: " + ", ".join(
                f"pid {b.pid} ({'holds' if b.granted else 'queued for'} {b.mode} on "
                f"{b.relation})" for b in self.blockers)
        elif self.detail:
            pids = self.blocking_pids
            if pids:
                text += "; in the way: " + ", ".join(f"pid {pid}" for pid in pids)
            text += " (" + " ".join(self.detail.split()) + ")"
        elif self.sqlstate == LOCK_NOT_AVAILABLE:
            text += " (no report of the blocking sessions: the connection is not guarded by safeddl)"
        elif self.distributed_deadlock:
            text += (" (a distributed deadlock: Citus cancelled this transaction to break a "
                     "cycle of lock waits across nodes, and names no processes; see "
                     "citus_lock_waits on the coordinator while it happens)")
        return text

    @property
    def distributed_deadlock(self) -> bool:
        """Citus broke a lock cycle across nodes (40P01, no DETAIL, "distributed
        deadlock" in the message)."""
        return (self.sqlstate == DEADLOCK_DETECTED and not self.detail
                and is_distributed_deadlock(self.error))

    def describe(self) -> str:
        waited = f", lock_timeout {self.lock_timeout_ms}ms" if self.lock_timeout_ms else ""
        return f"attempt {self.number} ({self.seconds:.2f} s{waited}): {self.summary()}"


class RetriesExhausted(SafeDDLError):
    """A unit of work failed with a lock timeout, deadlock or serialization failure on
    every attempt it was allowed. ``__cause__`` is the last attempt's error;
    ``failures`` has every attempt's error and the sessions that were in the way."""

    def __init__(self, unit: str, failures: Sequence[AttemptFailure], seconds: float,
                 limit: str, *, transactional: bool = True) -> None:
        self.unit = unit
        self.transactional = transactional
        self.failures: tuple[AttemptFailure, ...] = tuple(failures)
        self.seconds = seconds
        self.limit = limit
        super().__init__(self._compose())

    @property
    def errors(self) -> list[BaseException]:
        return [failure.error for failure in self.failures]

    @property
    def last_error(self) -> BaseException | None:
        return self.failures[-1].error if self.failures else None

    @property
    def blockers(self) -> list[Blocker]:
        """Every session reported holding a conflicting lock, once per pid and relation."""
        seen: dict[tuple[int, str], Blocker] = {}
        for failure in self.failures:
            for blocker in failure.blockers:  # the latest report of each session
                seen[(blocker.pid, blocker.relation)] = blocker
        return list(seen.values())

    @property
    def blocking_pids(self) -> list[int]:
        return list(dict.fromkeys(pid for f in self.failures for pid in f.blocking_pids))

    def _compose(self) -> str:
        count = len(self.failures)
        reasons = ", ".join(dict.fromkeys(f.reason for f in self.failures)) or "retryable errors"
        kept = ("and was rolled back, so none of its work was kept" if self.transactional
                else "(in autocommit: statements that succeeded before the failing one stay)")
        headline = (f"safeddl: gave up on {self.unit} after {count} "
                    f"attempt{'s' * (count != 1)} in {self.seconds:.1f} s ({self.limit}); "
                    f"every attempt failed ({reasons}) {kept}.")
        lines = [headline]
        lines.extend("  " + failure.describe() for failure in self.failures)
        blockers = self.blockers
        if blockers:
            lines.append("Sessions holding a conflicting lock:")
            lines.extend("  " + blocker.describe() for blocker in blockers)
        pids = self.blocking_pids
        if pids:
            listed = ", ".join(str(pid) for pid in pids)
            lines.append(f"What to do: see what pid {listed} is doing (pg_stat_activity) and "
                         "let it finish, or end it if it is stuck (pg_cancel_backend / "
                         "pg_terminate_backend); then run the unit of work again.")
        lines.append("To wait longer, give it more room: attempts=..., max_time=..., or a "
                     "growing lock_timeout (lock_timeout=..., lock_timeout_cap=...).")
        return "\n".join(lines)


__all__ = [
    "DEADLOCK_DETECTED",
    "LOCK_NOT_AVAILABLE",
    "QUERY_CANCELED",
    "RETRY_REASONS",
    "SERIALIZATION_FAILURE",
    "AttemptFailure",
    "ConfigError",
    "LockTimeout",
    "PreflightBlocked",
    "RetriesExhausted",
    "SafeDDLError",
    "UnsafeStatement",
    "deadlock_pids",
    "driver_errors",
    "is_distributed_deadlock",
    "is_lock_timeout",
    "is_retryable",
    "retry_reason",
    "server_detail",
    "sqlstate_of",
]
