"""# rename-column

`ALTER TABLE ... RENAME COLUMN` is a quick catalog change, but every query that still
uses the old name fails at once, and the application cannot be deployed at exactly
the same moment: old and new code run side by side during a deploy.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a moment (catalog change only).

## Bad

```sql
ALTER TABLE orders RENAME COLUMN note TO remarks;
```

## Good

```sql
ALTER TABLE orders ADD COLUMN remarks text;
UPDATE orders SET remarks = note WHERE ctid = ANY (ARRAY(SELECT ctid FROM orders WHERE remarks IS NULL AND note IS NOT NULL LIMIT 10000));
```

## Safe alternative

Expand and contract: add the new column, write both from the application (or a
trigger), backfill the new one in batches, move the reads to it, stop writing the old
one, and drop it in a later release.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import batched_update, existing_lock, runnable


class RenameColumn:
    id = "rename-column"
    severity = Severity.WARNING
    summary = "RENAME COLUMN breaks application code that uses the old name"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({Action.RENAME_COLUMN})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        for step in statement.steps:
            if step.action is not Action.RENAME_COLUMN or not step.column or not step.name:
                continue
            lock = existing_lock(statement, context, step.table)
            if lock is None:
                continue
            assert step.table is not None
            table, old, new = step.table, step.column, step.name
            type_sql = context.catalog.column_type(table, old) or f"<the type of {old}>"
            alternative = "\n".join([
                f"ALTER TABLE {table} ADD COLUMN {new} {type_sql};",
                f"-- write both {old} and {new} from the application (or a trigger), then",
                "-- backfill in batches, each in its own transaction:",
                batched_update(table, f"{new} = {old}", f"{new} IS NULL AND {old} IS NOT NULL"),
                (f"-- move the reads to {new}, stop writing {old}, and drop {old} in a later "
                "release"),
            ])
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"code that still uses {table}.{old} fails as soon as it is "
                        f"renamed to {new}.", lock, alternative),
                runnable(alternative), lock.relation,
            )


RULE = RenameColumn()
