"""# drop-column

`ALTER TABLE ... DROP COLUMN` is a quick catalog change, but application code that
still names the column breaks at once: ORMs list every column they know in their
SELECT and INSERT statements, so every instance still running the old code fails
until it is redeployed.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a moment (catalog change only).

## Bad

```sql
ALTER TABLE orders DROP COLUMN legacy_code;
```

## Good

```sql
-- safeddl: ignore[drop-column] release 42 stopped reading and writing orders.legacy_code
ALTER TABLE orders DROP COLUMN legacy_code;
```

## Safe alternative

First deploy code that no longer reads or writes the column (tell the ORM to ignore
it), and wait until no instance runs the old code. Then drop it, with `lock_timeout`
set, and record that with an ignore comment.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import existing_lock


class DropColumn:
    id = "drop-column"
    severity = Severity.WARNING
    summary = "DROP COLUMN breaks application code that still uses the column"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({Action.DROP_COLUMN})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        for step in statement.steps:
            if step.action is not Action.DROP_COLUMN or not step.column:
                continue
            lock = existing_lock(statement, context, step.table)
            if lock is None:
                continue
            alternative = "\n".join([
                f"-- 1. deploy code that no longer reads or writes {step.table}.{step.column}",
                "-- 2. once no instance runs the old code:",
                f"ALTER TABLE {step.table} DROP COLUMN {step.column};",
            ])
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"code that still uses {step.table}.{step.column} fails as "
                        "soon as the column is gone.", lock, alternative),
                None, lock.relation,
            )


RULE = DropColumn()
