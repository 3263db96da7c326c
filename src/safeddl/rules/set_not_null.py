"""# set-not-null

`ALTER TABLE ... ALTER COLUMN ... SET NOT NULL` takes an ACCESS EXCLUSIVE lock and
then reads the whole table to check that no row holds a NULL. Every query on the
table, reads included, waits until the scan is over. The same goes for
`ADD CONSTRAINT ... NOT NULL col` (PostgreSQL 18) without `NOT VALID`.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a full scan of the table.

## Bad

```sql
ALTER TABLE orders ALTER COLUMN customer_id SET NOT NULL;
```

## Good

```sql
ALTER TABLE orders ADD CONSTRAINT orders_customer_id_not_null CHECK (customer_id IS NOT NULL) NOT VALID;
ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_id_not_null;
ALTER TABLE orders ALTER COLUMN customer_id SET NOT NULL;
ALTER TABLE orders DROP CONSTRAINT orders_customer_id_not_null;
```

## Safe alternative

Prove the column has no NULL first, without the strong lock:

1. `ADD CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID` is a brief catalog change
   (new rows are checked from now on);
2. `VALIDATE CONSTRAINT` scans the table under SHARE UPDATE EXCLUSIVE, which lets
   reads and writes go on; run it in its own transaction;
3. from PostgreSQL 12, `SET NOT NULL` sees the valid CHECK constraint and skips its
   scan, so it only holds ACCESS EXCLUSIVE for a moment;
4. the CHECK constraint is then redundant and can be dropped.

On PostgreSQL 18 a NOT NULL constraint can itself be `NOT VALID`:
`ALTER TABLE orders ADD CONSTRAINT orders_customer_id_not_null NOT NULL customer_id NOT VALID;`
then `ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_id_not_null;`.

On PostgreSQL 11, `SET NOT NULL` always scans: keep the validated CHECK constraint
instead, and convert it after upgrading.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, ConstraintType, Statement, Step
from safeddl.locks import Holds
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import existing_lock, local, new_name


def not_null_name(table: str, column: str) -> str:
    """``orders_customer_id_not_null``, quoted when needed."""
    return new_name(local(table), local(column), "not_null")


def not_null_sequence(table: str, column: str, version: int, name: str | None = None) -> str:
    """The statements that make ``column`` NOT NULL without a long strong lock
    (``name``: the constraint name as written, else an invented one)."""
    name = name or not_null_name(table, column)
    if version >= 18:
        return "\n".join([
            f"ALTER TABLE {table} ADD CONSTRAINT {name} NOT NULL {column} NOT VALID;",
            "-- in its own transaction (SHARE UPDATE EXCLUSIVE: reads and writes go on):",
            f"ALTER TABLE {table} VALIDATE CONSTRAINT {name};",
        ])
    lines = [
        f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({column} IS NOT NULL) NOT VALID;",
        "-- in its own transaction (SHARE UPDATE EXCLUSIVE: reads and writes go on):",
        f"ALTER TABLE {table} VALIDATE CONSTRAINT {name};",
    ]
    if version >= 12:
        lines += [
            "-- no scan now: the valid CHECK constraint proves it",
            f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL;",
            f"ALTER TABLE {table} DROP CONSTRAINT {name};",
        ]
    else:
        lines.append(f"-- PostgreSQL {version}: SET NOT NULL would scan again; keep the "
                     "CHECK constraint (convert it on PostgreSQL 12 or later)")
    return "\n".join(lines)


class SetNotNull:
    id = "set-not-null"
    severity = Severity.ERROR
    summary = "SET NOT NULL scans the whole table under ACCESS EXCLUSIVE"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({
        Action.SET_NOT_NULL, Action.ADD_CONSTRAINT})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        for step in statement.steps:
            if not _scans_for_nulls(step):
                continue
            assert step.table is not None and step.column is not None
            lock = existing_lock(statement, context, step.table)
            if lock is None:
                continue
            name = step.name if step.action is Action.ADD_CONSTRAINT else None
            alternative = not_null_sequence(step.table, step.column, context.version, name)
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"making {step.table}.{step.column} NOT NULL reads every row "
                        "to look for NULLs while all queries on the table wait.",
                        lock, alternative),
                alternative, lock.relation,
            )


def _scans_for_nulls(step: Step) -> bool:
    if step.holds is not Holds.SCAN or step.table is None or step.column is None:
        return False
    if step.action is Action.SET_NOT_NULL:
        return True
    return (step.action is Action.ADD_CONSTRAINT
            and step.constraint_type is ConstraintType.NOT_NULL and not step.not_valid)


RULE = SetNotNull()
