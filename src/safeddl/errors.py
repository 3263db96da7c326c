"""The exceptions safeddl raises, and recognising the driver's lock-timeout error.

Importing this module is cheap: it imports neither psycopg nor SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from safeddl.blockers import Blocker
    from safeddl.locks import LockMode
    from safeddl.rules import Finding

LOCK_NOT_AVAILABLE = "55P03"
DEADLOCK_DETECTED = "40P01"
SERIALIZATION_FAILURE = "40001"
QUERY_CANCELED = "57014"

_STATEMENT_LIMIT = 200


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


def shorten(sql: str, limit: int = _STATEMENT_LIMIT) -> str:
    """One line, at most ``limit`` characters."""
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sqlstate_of(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a psycopg error, also when SQLAlchemy wraps it (``.orig``)."""
    seen = 0
    while exc is not None and seen < 4:
        state = getattr(exc, "sqlstate", None)
        if isinstance(state, str):
            return state
        exc = getattr(exc, "orig", None)
        seen += 1
    return None


def is_lock_timeout(exc: BaseException | None) -> bool:
    """``LockTimeout``, psycopg's ``LockNotAvailable``, or SQLAlchemy wrapping it."""
    return sqlstate_of(exc) == LOCK_NOT_AVAILABLE


__all__ = [
    "DEADLOCK_DETECTED",
    "LOCK_NOT_AVAILABLE",
    "QUERY_CANCELED",
    "SERIALIZATION_FAILURE",
    "ConfigError",
    "LockTimeout",
    "PreflightBlocked",
    "SafeDDLError",
    "UnsafeStatement",
    "is_lock_timeout",
    "shorten",
    "sqlstate_of",
]
