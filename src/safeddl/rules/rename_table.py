"""# rename-table

`ALTER TABLE ... RENAME TO` is a quick catalog change, but every query that still
uses the old name fails at once, and the application cannot be deployed at exactly
the same moment: old and new code run side by side during a deploy.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a moment (catalog change only).

## Bad

```sql
ALTER TABLE customers RENAME TO clients;
```

## Good

```sql
BEGIN;
-- safeddl: ignore[rename-table] the view below keeps the old name working
ALTER TABLE customers RENAME TO clients;
CREATE VIEW customers AS SELECT * FROM clients;
COMMIT;
```

## Safe alternative

Rename the table and, in the same transaction, create a view with the old name:
simple views are updatable, so old code keeps reading and writing through it. Drop
the view once no code uses the old name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import beside, existing_lock


class RenameTable:
    id = "rename-table"
    severity = Severity.WARNING
    summary = "RENAME TO breaks application code that uses the old name"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({Action.RENAME_TABLE})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        for step in statement.steps:
            if step.action is not Action.RENAME_TABLE or not step.table or not step.name:
                continue
            lock = existing_lock(statement, context, step.table)
            if lock is None:
                continue
            old, new = step.table, step.name
            relation = context.catalog.get(old)
            kind = relation.kind if relation is not None else "table"
            if kind != "table":
                alternative = "\n".join([
                    f"-- deploy code that uses {new} instead of {old} first, then:",
                    f"{statement.sql.rstrip().rstrip(';')};",
                ])
            else:
                alternative = "\n".join([
                    "BEGIN;",
                    f"ALTER TABLE {old} RENAME TO {new};",
                    f"CREATE VIEW {old} AS SELECT * FROM {beside(old, new)};",
                    "COMMIT;",
                    f"-- drop the view {old} once no code uses that name",
                ])
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"code that still uses {old} fails as soon as it is renamed "
                        f"to {new}.", lock, alternative),
                alternative, lock.relation,
            )


RULE = RenameTable()
