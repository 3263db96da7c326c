"""The exceptions safeddl raises, and recognising the driver's lock-timeout error.

Importing this module is cheap: it imports neither psycopg nor SQLAlchemy.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from safeddl.model import shorten

if TYPE_CHECKING:
    from safeddl.locks import LockMode
    from safeddl.rules import Finding
    from safeddl.runtime.blockers import Blocker

LOCK_NOT_AVAILABLE = "55P03"
DEADLOCK_DETECTED = "40P01"
SERIALIZATION_FAILURE = "40001"
QUERY_CANCELED = "57014"
NOT_NULL_VIOLATION = "23502"
CHECK_VIOLATION = "23514"

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

    # Also when a driver's class comes later in the MRO (see as_driver_error): the
    # message is safeddl's own, not SQLAlchemy's rendering of a statement error.
    __str__ = BaseException.__str__


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
                 orig: BaseException | None = None, note: str | None = None,
                 row: str | None = None) -> None:
        self.statement = statement
        self.relation = relation
        self.mode = mode
        self.row = row  # the ctid of the row it waited for; None: a table lock
        self.blockers: list[Blocker] = list(blockers)
        self.lock_timeout_ms = lock_timeout_ms
        self.orig = orig
        self.note = note
        super().__init__(self._compose())

    def _compose(self) -> str:
        lines = [self._headline()]
        if self.blockers:
            if all(b.row is None and not b.certain for b in self.blockers):
                lines.append("It waited for a row (another transaction's uncommitted row "
                             "with the same key, or a row version no longer there) whose "
                             "holder could not be read; sessions writing the table in an "
                             "open transaction:")
            elif all(b.row is not None for b in self.blockers):
                lines.append("Sessions holding the row it waited for, or queued ahead for it:")
            else:
                lines.append("Sessions holding a conflicting lock:")
            lines.extend("  " + blocker.describe() for blocker in self.blockers)
        else:
            held = "the row" if self.row is not None else "a conflicting lock"
            lines.append(f"No session holding {held} was found any more "
                         "(it may have finished meanwhile).")
        if self.note:
            lines.append(self.note)
        lines.append("The statement did not run and its transaction is aborted: retry the "
                     "whole transaction later, with backoff.")
        return "\n".join(lines)

    def _headline(self) -> str:
        waited = f" after {self.lock_timeout_ms} ms" if self.lock_timeout_ms else ""
        target = ""
        if self.row is not None:
            target = f" for a lock on row {self.row} of {self.relation or 'a table'}"
        elif self.mode is not None and self.relation is not None:
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


E = TypeVar("E", bound=SafeDDLError)
_FLAVOURS: dict[tuple[type[Any], tuple[type[Any], ...]], type[Any]] = {}
_FLAVOURS_LOCK = threading.Lock()


def flavoured_class(base: type[E], driver_classes: tuple[type[Any], ...]) -> type[E]:
    """A subclass of safeddl's ``base`` and of ``driver_classes`` (named like ``base``),
    made once per combination."""
    base = getattr(base, "_safeddl_base", base)
    key = (base, driver_classes)
    flavoured = _FLAVOURS.get(key)
    if flavoured is None:
        with _FLAVOURS_LOCK:
            flavoured = _FLAVOURS.get(key)
            if flavoured is None:
                flavoured = type(base.__name__, (base, *driver_classes), {
                    "__module__": base.__module__, "__qualname__": base.__qualname__,
                    "__doc__": base.__doc__, "_safeddl_base": base})
                _FLAVOURS[key] = flavoured
    return flavoured


def as_driver_error(error: Any, base: type[E], driver_classes: tuple[type[Any], ...],
                    attributes: Mapping[str, object]) -> E:
    """Make ``error`` (in place) an instance of safeddl's ``base`` and of the driver's
    ``driver_classes`` at once, with ``attributes`` set: raised instead of a driver's
    error, it is still caught by ``except`` clauses written for that error
    (``psycopg.errors.LockNotAvailable``, SQLAlchemy's ``OperationalError``) and by
    those written for safeddl's."""
    try:
        error.__class__ = flavoured_class(base, driver_classes)
    except TypeError:  # a driver class that cannot be combined (a C layout): leave it be
        return error  # type: ignore[no-any-return]
    for name, value in attributes.items():
        setattr(error, name, value)
    return error  # type: ignore[no-any-return]


def driver_state(error: BaseException) -> dict[str, object]:
    """The instance attributes of a driver's error (psycopg: its diagnostics), to carry
    over onto the safeddl error raised instead of it."""
    return dict(getattr(error, "__dict__", {}))


_SAFEDDL_FIELDS = frozenset({"relation", "mode", "row", "blockers", "lock_timeout_ms", "note",
                             "step", "rule", "safe_alternative", "message", "findings"})


def driver_classes_of(error: BaseException) -> tuple[type[Any], ...]:
    """The driver's classes an error is an instance of: its own class for a driver's
    error, the driver's bases of a safeddl error made one by :func:`as_driver_error`,
    none for any other safeddl error."""
    cls = type(error)
    if "_safeddl_base" in cls.__dict__:
        return cls.__bases__[1:]
    return () if isinstance(error, SafeDDLError) else (cls,)


def carry_driver_error(error: E, base: type[E], last: BaseException) -> E:
    """``error`` (raised because of the driver's error ``last``, e.g. after the last
    retry) made an instance of ``last``'s driver classes too, with the state those
    classes read (psycopg's diagnostics, SQLAlchemy's statement and ``orig``)."""
    classes = driver_classes_of(last)
    if not classes:
        return error
    own = set(vars(error)) | _SAFEDDL_FIELDS
    state = {name: value for name, value in vars(last).items()
             if name not in own and not hasattr(base, name)}
    return as_driver_error(error, base, classes, state)


def driver_class_for(error: BaseException, sqlstate: str) -> type[BaseException] | None:
    """The class the driver of ``error`` raises for ``sqlstate`` (psycopg's
    ``psycopg.errors.lookup``), or None for an error of no known driver."""
    if (type(error).__module__ or "").split(".", 1)[0] != "psycopg":
        return None
    import psycopg.errors

    try:
        return psycopg.errors.lookup(sqlstate)
    except KeyError:
        return None


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
    """A lock timeout (55P03), deadlock (40P01) or serialization failure (40001); not a
    unit of work that already gave up after its retries (RetriesExhausted keeps the
    last error's class and SQLSTATE, so that the driver's handlers catch it)."""
    if any(isinstance(error, RetriesExhausted) for error in driver_errors(exc)):
        return False
    return retry_reason(exc) is not None


def server_detail(exc: BaseException | None) -> str | None:
    """The DETAIL the server sent with the error (a deadlock's names the processes)."""
    for error in driver_errors(exc):
        detail = getattr(getattr(error, "diag", None), "message_detail", None)
        if isinstance(detail, str) and detail:
            return detail
    return None


def server_context(exc: BaseException | None) -> str | None:
    """The CONTEXT the server sent with the error (a row lock wait's names the row:
    ``while updating tuple (0,1) in relation "t"``)."""
    for error in driver_errors(exc):
        context = getattr(getattr(error, "diag", None), "context", None)
        if isinstance(context, str) and context:
            return context
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
    "CHECK_VIOLATION",
    "DEADLOCK_DETECTED",
    "LOCK_NOT_AVAILABLE",
    "NOT_NULL_VIOLATION",
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
    "as_driver_error",
    "carry_driver_error",
    "deadlock_pids",
    "driver_class_for",
    "driver_classes_of",
    "driver_errors",
    "driver_state",
    "flavoured_class",
    "is_distributed_deadlock",
    "is_lock_timeout",
    "is_retryable",
    "retry_reason",
    "server_context",
    "server_detail",
    "sqlstate_of",
]
