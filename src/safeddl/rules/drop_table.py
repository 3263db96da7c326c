"""# drop-table

`DROP TABLE` is a quick catalog change (it also takes ACCESS EXCLUSIVE on the tables
its foreign keys connect it to), but code that still uses the table fails at once,
and the data is gone: there is no undo short of a restore.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a moment (catalog change only).

## Bad

```sql
DROP TABLE legacy_orders;
```

## Good

```sql
-- safeddl: ignore[drop-table] unused since release 40, archived to s3://backups/legacy_orders
DROP TABLE legacy_orders;
```

## Safe alternative

First deploy code that no longer uses the table and wait until no instance runs the
old code; keep a copy of the data if it may be needed. Then drop it, with
`lock_timeout` set, and record that with an ignore comment.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import existing_lock


class DropTable:
    id = "drop-table"
    severity = Severity.WARNING
    summary = "DROP TABLE breaks application code that still uses the table"
    kinds: ClassVar[frozenset[Action]] = frozenset({Action.DROP_TABLE})  # finds nothing in others

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if statement.kind is not Action.DROP_TABLE:
            return
        for step in statement.steps:
            lock = existing_lock(statement, context, step.table)
            if lock is None or step.table is None:
                continue
            others = [other.relation for other in context.existing_locks(statement)
                      if other.relation not in {s.table for s in statement.steps}]
            also = (f" It also takes ACCESS EXCLUSIVE on {', '.join(others)} (foreign keys)."
                    if others else "")
            alternative = "\n".join([
                f"-- 1. deploy code that no longer uses {step.table}; keep a copy of its data",
                "-- 2. once no instance runs the old code:",
                f"DROP TABLE {step.table};",
            ])
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"code that still uses {step.table} fails as soon as it is "
                        f"dropped, and its rows are gone.{also}", lock, alternative),
                None, lock.relation,
            )


RULE = DropTable()
