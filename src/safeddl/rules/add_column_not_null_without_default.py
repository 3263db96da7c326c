"""# add-column-not-null-without-default

`ADD COLUMN ... NOT NULL` without a `DEFAULT` fails on a table that has rows
("column contains null values"), and once it succeeds (on an empty table) every
INSERT from code that does not know the column yet fails.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a moment (catalog change only).

## Bad

```sql
ALTER TABLE orders ADD COLUMN priority integer NOT NULL;
```

## Good

```sql
ALTER TABLE orders ADD COLUMN priority integer NOT NULL DEFAULT 0;
```

## Safe alternative

Give the column a constant default: from PostgreSQL 11 `ADD COLUMN ... NOT NULL
DEFAULT <constant>` is a catalog change only (no rewrite), and old code that omits
the column keeps working. Without a sensible default, add the column as nullable,
backfill it in batches, then make it NOT NULL as `set-not-null` explains.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.set_not_null import not_null_sequence
from safeddl.rules.support import existing_lock, runnable


class AddColumnNotNullWithoutDefault:
    id = "add-column-not-null-without-default"
    severity = Severity.WARNING
    summary = "ADD COLUMN NOT NULL without DEFAULT fails on a non-empty table and breaks INSERTs"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({Action.ADD_COLUMN})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        for step in statement.steps:
            if (step.action is not Action.ADD_COLUMN or not step.not_null
                    or step.default_sql is not None or step.generated is not None
                    or not step.column or not step.table):
                continue
            lock = existing_lock(statement, context, step.table)
            if lock is None:
                continue
            table, column = step.table, step.column
            type_sql = step.type_sql or "<type>"
            alternative = "\n".join([
                "-- with a constant default (no rewrite from PostgreSQL 11):",
                (f"-- ALTER TABLE {table} ADD COLUMN {column} {type_sql} NOT NULL DEFAULT "
                "<constant>;"),
                "-- or without one: add it nullable, backfill in batches, then NOT NULL:",
                f"ALTER TABLE {table} ADD COLUMN {column} {type_sql};",
                not_null_sequence(table, column, context.version),
            ])
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"adding {column} NOT NULL without a default fails if "
                        f"{table} has rows, and then INSERTs that omit {column} fail.",
                        lock, alternative),
                runnable(alternative), lock.relation,
            )


RULE = AddColumnNotNullWithoutDefault()
