"""# set-access-method

`ALTER TABLE ... SET ACCESS METHOD` (PostgreSQL 15 and later) writes a new copy of
the table and its indexes in the new format while holding ACCESS EXCLUSIVE: every
query on the table, reads included, waits for the whole rewrite.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a rewrite of the whole
table and its indexes.

## Bad

```sql
ALTER TABLE events_archive SET ACCESS METHOD columnar;
```

## Good

```sql
CREATE TABLE events_archive_new (LIKE events_archive INCLUDING ALL) USING columnar;
INSERT INTO events_archive_new SELECT * FROM events_archive WHERE ctid = ANY (ARRAY(SELECT ctid FROM events_archive LIMIT 10000));
BEGIN;
ALTER TABLE events_archive RENAME TO events_archive_old;
ALTER TABLE events_archive_new RENAME TO events_archive;
COMMIT;
```

## Safe alternative

There is no online form. Create a new table with the wanted access method
(`CREATE TABLE ... (LIKE ... INCLUDING ALL) USING <method>`), copy the rows in
batches while the writers write to both, then swap the names in one short
transaction with `lock_timeout` set.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement
from safeddl.locks import Holds
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import beside, existing_lock, local, new_name, runnable
from safeddl.sql import quote_ident


class SetAccessMethod:
    id = "set-access-method"
    severity = Severity.ERROR
    summary = "SET ACCESS METHOD rewrites the table under ACCESS EXCLUSIVE"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({Action.SET_ACCESS_METHOD})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        for step in statement.steps:
            if step.action is not Action.SET_ACCESS_METHOD or step.holds is not Holds.REWRITE:
                continue
            lock = existing_lock(statement, context, step.table)
            if lock is None:
                continue
            assert step.table is not None
            table = step.table
            method = step.name or "<method>"
            fresh = beside(table, new_name(local(table), "new"))
            alternative = "\n".join([
                f"CREATE TABLE {fresh} (LIKE {table} INCLUDING ALL) USING {method};",
                "-- copy the rows in batches while the writers write to both, then swap:",
                "BEGIN;",
                f"ALTER TABLE {table} RENAME TO {new_name(local(table), 'old')};",
                f"ALTER TABLE {fresh} RENAME TO {quote_ident(local(table))};",
                "COMMIT;",
            ])
            before = (f" (PostgreSQL {context.version} does not have SET ACCESS METHOD: it "
                      "exists from 15)" if context.version < 15 else "")
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"SET ACCESS METHOD {method} writes a new copy of {table} "
                        f"while all queries on it wait{before}.", lock, alternative),
                runnable(alternative), lock.relation,
            )


RULE = SetAccessMethod()
