"""# alter-column-type

`ALTER COLUMN ... TYPE` rewrites the whole table and rebuilds its indexes under
ACCESS EXCLUSIVE unless the new type is binary compatible with the old one: every
query on the table, reads included, waits for the rewrite.

Changes that do *not* rewrite (a brief lock only): widening `varchar(n)` to a larger
`n` or to plain `varchar`, `varchar` to `text`, `text` to unconstrained `varchar`,
`numeric(p, s)` to a larger precision with the same scale, dropping a length limit,
`cidr` to `inet`. Indexes on the column may still be rebuilt.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a rewrite of the whole
table and its indexes.

## Bad

```sql
ALTER TABLE orders ALTER COLUMN quantity TYPE bigint;
```

## Good

```sql
ALTER TABLE orders ADD COLUMN quantity_new bigint;
UPDATE orders SET quantity_new = quantity WHERE ctid = ANY (ARRAY(SELECT ctid FROM orders WHERE quantity_new IS NULL AND quantity IS NOT NULL LIMIT 10000));
BEGIN;
ALTER TABLE orders RENAME COLUMN quantity TO quantity_old;
ALTER TABLE orders RENAME COLUMN quantity_new TO quantity;
COMMIT;
```

## Safe alternative

Expand and contract: add a new column of the new type, keep it in step with the old
one for new and changed rows (a trigger, or writes from the application), backfill
it in batches, each in its own transaction, then swap the names in one short
transaction with `lock_timeout` set, and drop the old column once nothing uses it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement, Step
from safeddl.locks import Holds
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import batched_update, existing_lock, local, new_name, runnable


class AlterColumnType:
    id = "alter-column-type"
    severity = Severity.ERROR
    summary = "ALTER COLUMN TYPE that rewrites the table under ACCESS EXCLUSIVE"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({Action.ALTER_COLUMN_TYPE})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        for step in statement.steps:
            if (step.action is not Action.ALTER_COLUMN_TYPE or step.holds is not Holds.REWRITE
                    or step.column is None):
                continue
            lock = existing_lock(statement, context, step.table)
            if lock is None:
                continue
            assert step.table is not None
            alternative = _alternative(step)
            old = context.catalog.column_type(step.table, step.column)
            change = f"from {old} to {step.type_sql}" if old else f"to {step.type_sql}"
            unknown = (" safeddl does not know the current type, so it assumes a rewrite; "
                       "if the change is binary compatible (e.g. varchar(n) widened, varchar "
                       "to text) there is none." if old is None and "USING" not in
                       (step.definition_sql or "").upper() else "")
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"changing {step.column} {change} rewrites {step.table} and "
                        f"its indexes while all queries on it wait.{unknown}",
                        lock, alternative),
                runnable(alternative), lock.relation,
            )


def _alternative(step: Step) -> str:
    assert step.table is not None and step.column is not None
    table, column = step.table, step.column
    fresh = new_name(local(column), "new")
    old = new_name(local(column), "old")
    using = re.search(r"(?is)\bUSING\b\s*(.*)$", step.definition_sql or "")
    value = using.group(1).strip() if using else f"{column}::{step.type_sql}"
    return "\n".join([
        f"ALTER TABLE {table} ADD COLUMN {fresh} {step.type_sql};",
        f"-- keep {fresh} in step with {column} for new and changed rows (a trigger, or the",
        "-- application), then backfill in batches, each in its own transaction:",
        batched_update(table, f"{fresh} = {value}",
                       f"{fresh} IS NULL AND {column} IS NOT NULL"),
        "-- then swap the names in one short transaction, with lock_timeout set:",
        "BEGIN;",
        f"ALTER TABLE {table} RENAME COLUMN {column} TO {old};",
        f"ALTER TABLE {table} RENAME COLUMN {fresh} TO {column};",
        "COMMIT;",
    ])


RULE = AlterColumnType()
