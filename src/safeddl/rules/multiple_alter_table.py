"""# multiple-alter-table

Several `ALTER TABLE` statements in a row on the same table each take ACCESS
EXCLUSIVE (or another strong lock) again: each one queues behind the running
queries, and in a transaction the lock is held across all of them. One `ALTER TABLE`
with several comma-separated sub-commands takes the lock once.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes), once per statement.

## Bad

```sql
ALTER TABLE orders ADD COLUMN shipped_at timestamptz;
ALTER TABLE orders ADD COLUMN delivered_at timestamptz;
```

## Good

```sql
ALTER TABLE orders ADD COLUMN shipped_at timestamptz, ADD COLUMN delivered_at timestamptz;
```

## Safe alternative

Combine the sub-commands into one `ALTER TABLE t <change>, <change>, ...;`. Forms that
must stay separate are not reported: `RENAME`, `SET SCHEMA`, `VALIDATE CONSTRAINT`,
partition attach and detach, the steps of the `SET NOT NULL` sequence (`SET NOT
NULL` and `DROP CONSTRAINT`), which rely on a constraint validated in between, and
statements that scan or rewrite the table (their own rules report them).
"""

from __future__ import annotations

from collections.abc import Iterator

from safeddl.analysis import Action, RelationLock, Statement
from safeddl.locks import Holds, LockMode
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.incremental import Memo, script
from safeddl.rules.support import after_table
from safeddl.sql.names import local_name

_SEPARATE = frozenset({
    Action.RENAME_TABLE, Action.RENAME_COLUMN, Action.RENAME_CONSTRAINT, Action.SET_SCHEMA,
    Action.VALIDATE_CONSTRAINT, Action.ATTACH_PARTITION, Action.DETACH_PARTITION,
    Action.SET_NOT_NULL, Action.DROP_CONSTRAINT,
})


class MultipleAlterTable:
    id = "multiple-alter-table"
    severity = Severity.WARNING
    summary = "several ALTER TABLE statements in a row on one table: combine them"

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        lock = _combinable(statement, context)
        if lock is None:
            return
        key = context.catalog.key(lock.relation)
        run: list[Statement] = []
        for earlier in reversed(_NAMED.state(context).get(local_name(lock.relation), [])):
            if not _touches(earlier, key, context):
                continue
            earlier_lock = _combinable(earlier, context)
            if earlier_lock is None or context.catalog.key(earlier_lock.relation) != key:
                break
            if earlier.steps[0].only != statement.steps[0].only:
                break
            run.insert(0, earlier)
        if not run:
            return
        table = statement.steps[0].table or lock.relation
        parts = [after_table(s.sql, s.steps[0].table or "") for s in [*run, statement]]
        only = "ONLY " if statement.steps[0].only else ""
        if all(parts):
            alternative: str | None = (f"ALTER TABLE {only}{table}\n    "
                                       + ",\n    ".join(p for p in parts if p) + ";")
        else:
            alternative = None
        lines = ", ".join(str(s.line) for s in run)
        yield Finding(
            self.id, self.severity,
            compose(self.id, f"{len(run) + 1} ALTER TABLE statements in a row on {table} "
                    f"(lines {lines} and {statement.line}) each take the lock again: combine "
                    "them into one statement that takes it once.", lock,
                    alternative or f"ALTER TABLE {table} <change>, <change>, ...;"),
            alternative, lock.relation,
        )


def _combinable(statement: Statement, context: Context) -> RelationLock | None:
    """The lock of a brief ALTER TABLE on one existing table whose sub-commands can be
    merged into another ALTER TABLE (one that scans or rewrites has its own rule)."""
    if not statement.understood or not statement.transactional or not statement.steps:
        return None
    if not statement.sql.lstrip()[:11].upper().startswith("ALTER TABLE"):
        return None
    tables = {context.catalog.key(s.table) for s in statement.steps if s.table}
    if len(tables) != 1 or any(s.action in _SEPARATE for s in statement.steps):
        return None
    locks = context.existing_locks(statement)
    if any(lock.holds is not Holds.BRIEF for lock in locks):
        return None
    for lock in locks:
        if context.catalog.key(lock.relation) in tables and lock.mode >= LockMode.SHARE:
            return lock
    return None


def _name(by_name: dict[str, list[Statement]], earlier: Statement, context: Context,
          ) -> None:
    names = {lock.relation for lock in earlier.locks}
    names.update(step.table for step in earlier.steps if step.table)
    for name in {local_name(name) for name in names}:
        by_name.setdefault(name, []).append(earlier)


# The earlier statements of the script by the last part of the names of the tables they
# lock or change (``app.Orders`` -> ``Orders``): a statement that touches a table is
# among those of its name (two names of one table share their last part), so the walk
# back skips every other statement.
_NAMED: Memo[dict[str, list[Statement]]] = Memo(dict, _name, over=script)


def _touches(statement: Statement, key: str, context: Context) -> bool:
    if any(context.catalog.key(lock.relation) == key for lock in statement.locks):
        return True
    return any(s.table and context.catalog.key(s.table) == key for s in statement.steps)


RULE = MultipleAlterTable()
