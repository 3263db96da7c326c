"""The errors of a rewrite plan stopped part way: which step, what state the schema is
left in, and that running the statement again resumes from there.

A plan's steps commit one by one, so a fault between them (a killed deploy, a dropped
connection, a restart, a lock timeout) leaves a state the user never wrote. safeddl
raises :class:`PlanInterrupted` (or :class:`PlanStepLockTimeout` for a lock timeout,
which retries treat like any lock timeout), with the driver's error as ``__cause__``
and ``orig``, so the SQLSTATE stays visible to retry logic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from safeddl.model import shorten
from safeddl.runtime.errors import LockTimeout, SafeDDLError, driver_errors, sqlstate_of

if TYPE_CHECKING:
    from safeddl.locks import LockMode
    from safeddl.runtime.blockers import Blocker


def _resume_advice(orig: BaseException | None) -> str:
    state = sqlstate_of(orig) or ""
    if state.startswith("23"):  # integrity violation: the data must change first
        return ("The existing rows violate it: fix them, then run the same statement again; "
                "it resumes from there (what is done is skipped).")
    return ("Running the same statement again resumes from there (what is done is skipped, "
            "nothing needs undoing by hand).")


def _cause_line(orig: BaseException | None) -> str:
    if orig is None:
        return ""
    inner = driver_errors(orig)[-1]
    lines = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {lines[0] if lines else ''}".rstrip(": ")


class PlanInterrupted(SafeDDLError):
    """A step of a rewrite plan failed after the plan had started.

    ``statement`` is the statement as written, ``step`` the SQL of the step that failed
    (``number`` of ``total``, from 1), ``state`` what the schema holds now."""

    def __init__(self, statement: str, step: str, number: int, total: int, state: str,
                 *, purpose: str = "", orig: BaseException | None = None) -> None:
        self.statement = statement
        self.step = step
        self.number = number
        self.total = total
        self.state = state
        self.purpose = purpose
        self.orig = orig
        self._sqlstate: str | None = None
        why = f" ({purpose})" if purpose else ""
        cause = _cause_line(orig)
        super().__init__(
            f"safeddl: the rewrite of `{shorten(statement)}` stopped at step {number} of "
            f"{total}, `{shorten(step)}`{why}" + (f": {cause}" if cause else "") + "\n"
            f"State left: {state}.\n" + _resume_advice(orig))

    def fails_as(self, sqlstate: str, message: str) -> None:
        """Read like the original statement's own failure: its SQLSTATE (``sqlstate``)
        and message first, then where the rewrite stopped."""
        self._sqlstate = sqlstate
        self.args = (f"{message}\n{self.args[0]}",)

    @property
    def sqlstate(self) -> str | None:
        return self._sqlstate or sqlstate_of(self.orig)


class PlanStepLockTimeout(LockTimeout):
    """A step of a rewrite plan gave up waiting for its lock: names the step, the lock
    that step waited for, and the state left (running the statement again, e.g. through
    a retry, resumes)."""

    def __init__(self, statement: str, relation: str | None, mode: LockMode | None,
                 blockers: Sequence[Blocker] = (), *, lock_timeout_ms: int | None = None,
                 orig: BaseException | None = None, note: str | None = None,
                 plan_statement: str = "", number: int = 0, total: int = 0,
                 state: str = "") -> None:
        self.plan_statement = plan_statement
        self.base_note = note  # the note without what this class adds
        self.number = number
        self.total = total
        self.state = state
        self.step = statement
        resume = (f"It was step {number} of {total} of the rewrite of "
                  f"`{shorten(plan_statement)}`. State left: {state}. "
                  + _resume_advice(orig))
        super().__init__(statement, relation, mode, blockers, lock_timeout_ms=lock_timeout_ms,
                         orig=orig, note="\n".join(n for n in (note, resume) if n))


__all__ = ["PlanInterrupted", "PlanStepLockTimeout"]
