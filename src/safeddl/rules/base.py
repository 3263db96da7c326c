"""What a rule is, what it finds, and the message every finding follows:

1. the rule id; 2. the lock, the tables, what it blocks and for how long;
3. the safe alternative written with the user's own identifiers; 4. how to opt out.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from safeddl.analysis import Catalog, RelationLock, Statement


T = TypeVar("T")


class Severity(str, enum.Enum):
    ERROR = "error"  # unsafe on a busy table as written
    WARNING = "warning"  # may break the application or deserves a second look


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    message: str
    safe_alternative: str | None = None
    relation: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {
            "rule": self.rule,
            "severity": self.severity.value,
            "message": self.message,
            "safe_alternative": self.safe_alternative,
        }


@dataclass
class Context:
    """What a rule may know besides the statement itself."""

    version: int
    catalog: Catalog  # the schema before this statement
    in_transaction: bool = False  # inside an explicit transaction block
    transaction: list[Statement] = field(default_factory=list)  # earlier statements of it
    script: list[Statement] = field(default_factory=list)  # earlier statements of the script
    lock_timeout_set: bool = False  # a SET [LOCAL] lock_timeout came before
    lock_timeout_local: bool = False  # ...by SET LOCAL: it ends with the transaction
    runtime: bool = False  # checked by the runtime guard, not by lint
    # what a rule computed over ``transaction`` so far, to go on from there with the
    # next statement instead of starting over (see :meth:`transaction_memo`)
    memo: dict[str, tuple[list[Statement], int, Any]] = field(default_factory=dict)

    def transaction_memo(self, rule_id: str, initial: Callable[[], T],
                         fold: Callable[[T, Statement], T]) -> T:
        """``fold`` applied to every earlier statement of the transaction, in order,
        starting from ``initial()``: each statement is folded in once, when it first
        appears, so a long transaction (a whole history linted with
        --assume-in-transaction) costs linear time, not quadratic."""
        entry = self.memo.get(rule_id)
        if entry is None or entry[0] is not self.transaction or entry[1] > len(self.transaction):
            state, done = initial(), 0
        else:
            state, done = entry[2], entry[1]
        for statement in self.transaction[done:]:
            state = fold(state, statement)
        self.memo[rule_id] = (self.transaction, len(self.transaction), state)
        return state

    def is_new(self, relation: str) -> bool:
        """Created earlier in this script or transaction: nobody else can see it."""
        return self.catalog.is_new(relation)

    def existing_locks(self, statement: Statement) -> list[RelationLock]:
        """The statement's locks on tables that existed before the script."""
        created = {self.catalog.key(c) for c in statement.creates}
        return [
            lock for lock in statement.locks
            if not self.is_new(lock.relation) and self.catalog.key(lock.relation) not in created
        ]


class Rule(Protocol):
    id: str
    severity: Severity
    summary: str  # one line, for `safeddl rules`

    def check(self, statement: Statement, context: Context) -> Iterable[Finding]: ...


def opt_out(rule_id: str) -> str:
    return (
        f"To accept the risk: `-- safeddl: ignore[{rule_id}] <reason>` on the line before "
        f'the statement, or `with safeddl.allow("{rule_id}", reason=...)` at runtime.'
    )


def describe_lock(lock: RelationLock) -> str:
    """``ACCESS EXCLUSIVE on orders until COMMIT: blocks all reads and writes ...``"""
    return (
        f"{lock.mode.sql_name} on {lock.relation}, held until COMMIT; it blocks "
        f"{lock.mode.blocks.describe()}; {lock.holds.describe()}"
    )


def compose(rule_id: str, problem: str, lock: RelationLock | None, alternative: str | None,
            ) -> str:
    """The one message format: id; lock + tables + what it blocks, how long; fix; opt out."""
    parts = [f"{rule_id}: {problem}"]
    if lock is not None:
        parts.append(f"Lock: {describe_lock(lock)}.")
    if alternative:
        parts.append("Safe alternative:\n" + _indent(alternative))
    parts.append(opt_out(rule_id))
    return "\n".join(parts)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
