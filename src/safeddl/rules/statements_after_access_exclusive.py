"""# statements-after-access-exclusive

A lock is held until the transaction ends, not until the statement that took it
ends. After a statement that takes ACCESS EXCLUSIVE on a table (most `ALTER TABLE`
forms, `DROP`, `TRUNCATE`, `LOCK TABLE`), every further statement of the same
transaction runs while all reads and writes of that table wait: a backfill `UPDATE`,
an index build, a scan, or waiting for the lock on another table turns a brief
change into an outage. Reported once per transaction, on the first statement that
runs under the lock.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes), held from the earlier
statement until COMMIT.

## Bad

```sql
BEGIN;
ALTER TABLE orders ADD COLUMN discount numeric(10, 2);
UPDATE orders SET discount = 0 WHERE total > 100;
COMMIT;
```

## Good

```sql
BEGIN;
ALTER TABLE orders ADD COLUMN discount numeric(10, 2);
COMMIT;
UPDATE orders SET discount = 0 WHERE total > 100;
```

## Safe alternative

Commit right after the statement that takes ACCESS EXCLUSIVE, and do the rest
(backfills, index builds, changes to other tables) in later transactions. When
several strong locks must be taken together, take them first, in one consistent
order, with `lock_timeout` set, and keep the transaction short.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from safeddl.analysis import Action, RelationLock, Statement
from safeddl.locks import Holds, LockMode
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import first_line, statement_sql

_IGNORED = (Action.SET, Action.TRANSACTION_CONTROL)
_DML = (Action.SELECT, Action.SELECT_FOR_UPDATE, Action.INSERT, Action.UPDATE,
        Action.DELETE, Action.MERGE, Action.COPY_FROM, Action.COPY_TO)


class StatementsAfterAccessExclusive:
    id = "statements-after-access-exclusive"
    severity = Severity.ERROR
    summary = "work done in a transaction after it took ACCESS EXCLUSIVE keeps every query waiting"

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if not context.in_transaction or not context.transaction:
            return
        def fold(state: _Held, earlier: Statement) -> _Held:
            if state.held and _runs_under(earlier, state.held, context):
                state.reported = True  # already reported for this transaction
            if not state.reported:
                _hold(earlier, state.held, context)
            return state

        state = context.transaction_memo(self.id, _Held, fold)
        if state.reported:
            return
        held = state.held
        if not held or not _runs_under(statement, held, context):
            return
        holder, lock = next(iter(held.values()))
        alternative = "\n".join([
            statement_sql(holder),
            f"COMMIT;  -- releases ACCESS EXCLUSIVE on {lock.relation}",
            "BEGIN;",
            statement_sql(statement),
        ])
        yield Finding(
            self.id, self.severity,
            compose(self.id, f"this statement runs while the transaction holds "
                    f"{LockMode.ACCESS_EXCLUSIVE.sql_name} on {lock.relation}.\n"
                    f"Lock: {LockMode.ACCESS_EXCLUSIVE.sql_name} on {lock.relation}, taken at "
                    f"line {holder.line} by `{first_line(holder.sql)}`, is held until COMMIT: "
                    f"it blocks {lock.mode.blocks.describe()} for as long as this statement "
                    "and the rest of the transaction run.",
                    None, alternative),
            alternative, lock.relation,
        )


@dataclass
class _Held:
    """The ACCESS EXCLUSIVE locks the transaction holds so far (first taker of each)."""

    held: dict[str, tuple[Statement, RelationLock]] = field(default_factory=dict)
    reported: bool = False


def _hold(statement: Statement, held: dict[str, tuple[Statement, RelationLock]],
          context: Context) -> None:
    for lock in context.existing_locks(statement):
        key = context.catalog.key(lock.relation)
        if lock.mode is LockMode.ACCESS_EXCLUSIVE and key not in held:
            held[key] = (statement, lock)


def _runs_under(statement: Statement, held: dict[str, tuple[Statement, RelationLock]],
                context: Context) -> bool:
    """Does this statement work, or wait, while the held locks keep everyone out?"""
    if statement.kind in _IGNORED or not statement.understood:
        return False
    for lock in context.existing_locks(statement):
        key = context.catalog.key(lock.relation)
        if lock.holds is not Holds.BRIEF:
            return True  # scans or rewrites under the held lock
        if statement.kind in _DML and key in held:
            return True  # reads or writes the locked table: a backfill
        if key not in held and lock.mode >= LockMode.SHARE:
            return True  # may queue for another strong lock while holding this one
    return False


RULE = StatementsAfterAccessExclusive()
