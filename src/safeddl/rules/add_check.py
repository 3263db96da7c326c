"""# add-check

Adding a CHECK constraint to an existing table without `NOT VALID` (`ADD CHECK`,
`ADD CONSTRAINT ... CHECK`, or `CHECK` on `ADD COLUMN`) reads every row to check the
condition while holding ACCESS EXCLUSIVE: every query on the table, reads
included, waits for the whole scan.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a full scan of the table.

## Bad

```sql
ALTER TABLE orders ADD CONSTRAINT orders_total_positive CHECK (total >= 0);
```

## Good

```sql
ALTER TABLE orders ADD CONSTRAINT orders_total_positive CHECK (total >= 0) NOT VALID;
ALTER TABLE orders VALIDATE CONSTRAINT orders_total_positive;
```

## Safe alternative

Add the constraint `NOT VALID`: a brief catalog change after which new and changed
rows are checked. Then `VALIDATE CONSTRAINT`, in its own transaction, checks the
existing rows under SHARE UPDATE EXCLUSIVE, which lets reads and writes go on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, ConstraintType, Statement, Step
from safeddl.locks import Holds
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import column_def, existing_lock, local, new_name, runnable


class AddCheck:
    id = "add-check"
    severity = Severity.ERROR
    summary = "a CHECK constraint added without NOT VALID scans the table under ACCESS EXCLUSIVE"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({
        Action.ADD_CONSTRAINT, Action.ADD_COLUMN})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        for step in statement.steps:
            if not _validates(step):
                continue
            assert step.table is not None
            lock = existing_lock(statement, context, step.table)
            if lock is None:
                continue
            alternative = _alternative(step)
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"the CHECK constraint is verified against every existing row "
                        f"of {step.table} while all queries on it wait.", lock, alternative),
                runnable(alternative), lock.relation,
            )


def _validates(step: Step) -> bool:
    if step.holds is Holds.BRIEF or step.table is None:
        return False
    if step.constraint_type is not ConstraintType.CHECK or step.not_valid:
        return False
    return step.action in (Action.ADD_CONSTRAINT, Action.ADD_COLUMN)


def _alternative(step: Step) -> str:
    assert step.table is not None
    table = step.table
    if step.action is Action.ADD_COLUMN:
        assert step.column is not None
        name = new_name(local(table), local(step.column), "check")
        first = (f"ALTER TABLE {table} ADD COLUMN "
                 f"{column_def(step.column, step.type_sql, step.default_sql, step.not_null)},\n"
                 f"    ADD CONSTRAINT {name} {step.definition_sql} NOT VALID;")
    else:
        name = step.name or new_name(local(table), "check")
        first = f"ALTER TABLE {table} ADD CONSTRAINT {name} {step.definition_sql} NOT VALID;"
    return "\n".join([
        first,
        "-- in its own transaction (SHARE UPDATE EXCLUSIVE: reads and writes go on):",
        f"ALTER TABLE {table} VALIDATE CONSTRAINT {name};",
    ])


RULE = AddCheck()
