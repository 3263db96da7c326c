"""The plan data the decision and the rewriter exchange: what to do with one statement
text (:class:`Decision`), the statements of a rewrite (:class:`Plan`, :class:`PlanStep`),
what the decision knows of the connection (:class:`SessionFacts`), and the
:class:`Rewriter` signature. Pure values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from safeddl.analysis import Catalog, Statement
from safeddl.rules import Finding
from safeddl.runtime.errors import UnsafeStatement
from safeddl.runtime.policy import RuleAction


@dataclass(frozen=True)
class Check:
    """A catalog query returning one boolean (``SELECT EXISTS (...)``), with its
    parameters."""

    sql: str
    params: tuple[str, ...] = ()


@dataclass(frozen=True)
class Expectation:
    """An object a plan creates under a fixed name. When one of that name is already
    there (left by an earlier, interrupted run, or made by another session running the
    same plan), it must have exactly the definition the plan would give it: the plan
    then resumes; otherwise the statement is refused, naming both definitions.

    ``probe`` creates the object the plan would create on ``pg_temp.safeddl_probe`` (a
    column copy of ``table``) inside a transaction that is rolled back, so the server
    itself renders the wanted definition (no lock stronger than ACCESS SHARE)."""

    kind: str  # "constraint" | "index"
    table: str  # as written
    name: str  # folded, unquoted
    probe: tuple[str, ...]
    references: str | None = None  # a foreign key's referenced table, as written


@dataclass(frozen=True)
class PlanStep:
    """One statement of a rewrite plan."""

    sql: str
    needs_autocommit: bool = False  # must run outside a transaction block
    purpose: str = ""
    # Its own statement_timeout in ms (0: none), None: the statement's. decide() fills it
    # from the policy (a concurrent build or a VALIDATE must not inherit a short one).
    statement_timeout_ms: int | None = None
    # Run only while this index (SQL text for to_regclass) exists and is INVALID.
    only_if_invalid_index: str | None = None
    # When this step or a later one fails: what puts things back (run after it ran).
    undo: tuple[PlanStep, ...] = ()
    # When this very step fails: this index, left INVALID by a failed concurrent build,
    # is dropped concurrently.
    leftover_index: str | None = None
    # When this very step fails with a check violation (23514): the SQLSTATE and message
    # the original statement fails with in that case (raised instead, as the driver's
    # error for that SQLSTATE).
    fails_like: tuple[str, str] | None = None
    # The step's effect is already in place (an earlier run or another session did it):
    # the step is skipped, and a failure of the step is none when it holds afterwards.
    done_if: Check | None = None
    # The state once this step has run ("orders_customer_id_fkey exists, NOT VALID"),
    # named in the error when a later step fails.
    leaves: str = ""


@dataclass(frozen=True)
class Plan:
    """A rewrite: steps run in order; the last one is sent instead of the statement."""

    steps: tuple[PlanStep, ...]
    summary: str = ""
    expects: tuple[Expectation, ...] = ()
    # Checked before any step: when one holds, the statement is refused with its reason.
    refuse_if: tuple[tuple[Check, str], ...] = ()

    def render(self) -> str:
        lines = []
        for step in self.steps:
            if step.only_if_invalid_index:
                lines.append(f"-- only if {step.only_if_invalid_index} exists and is INVALID:")
            lines.append(step.sql.rstrip().rstrip(";") + ";")
        return "\n".join(lines)

    @property
    def needs_autocommit(self) -> bool:
        return any(step.needs_autocommit for step in self.steps)


@dataclass(frozen=True)
class SessionFacts:
    """What the decision knows of the connection."""

    version: int
    in_transaction: bool
    catalog: Catalog | None = None
    live: bool = False  # the catalog was read from the server (absent = does not exist)


@dataclass(frozen=True)
class Waiver:
    """A finding that did not count, and why."""

    finding: Finding
    why: str


@dataclass(frozen=True)
class Decision:
    """What to do with one statement text."""

    action: RuleAction
    statements: tuple[Statement, ...]
    findings: tuple[Finding, ...] = ()  # everything the rules found
    deciding: tuple[Finding, ...] = ()  # the findings behind a refuse or rewrite
    warnings: tuple[Finding, ...] = ()
    waived: tuple[Waiver, ...] = ()
    set_lock_timeout: bool = False
    session_level: bool = False  # outside a transaction block: SET, then restore
    lock_timeout_ms: int = 0
    statement_timeout_ms: int | None = None  # None: leave the session's value
    plan: Plan | None = None
    refusal_note: str | None = None
    catalog_dependent: bool = False
    changes_timeouts: bool = False  # the statement itself sets lock/statement_timeout

    @property
    def statement(self) -> Statement:
        return self.statements[0]

    @property
    def is_ddl(self) -> bool:
        return any(s.is_ddl for s in self.statements)

    @property
    def is_plain(self) -> bool:
        """Nothing to do now or ever for this text: the hot path skips it."""
        return (self.action is RuleAction.ALLOW and not self.findings and not self.waived
                and not self.set_lock_timeout and not self.changes_timeouts
                and not self.catalog_dependent and not self.is_ddl)

    def refusal(self) -> UnsafeStatement:
        first = self.deciding[0] if self.deciding else None
        message = "\n\n".join(f.message for f in self.deciding) or "refused"
        if self.refusal_note:
            message += "\n" + self.refusal_note
        sql = "; ".join(s.sql for s in self.statements)
        return UnsafeStatement(first.rule if first else "unknown", sql,
                               first.safe_alternative if first else None,
                               "safeddl refused this statement (it was not sent):\n" + message,
                               self.deciding)


class Rewriter(Protocol):
    """Turns a ``rewrite`` decision into an exact plan, or None when none applies."""

    def __call__(self, decision: Decision, facts: SessionFacts) -> Plan | None: ...


__all__ = ["Check", "Decision", "Expectation", "Plan", "PlanStep", "Rewriter", "SessionFacts", "Waiver"]
