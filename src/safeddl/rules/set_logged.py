"""# set-logged

`ALTER TABLE ... SET LOGGED` and `SET UNLOGGED` write a new copy of the table and its
indexes (SET LOGGED also writes all of it to the WAL) while holding ACCESS
EXCLUSIVE: every query on the table, reads included, waits for the whole rewrite.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a rewrite of the whole
table and its indexes.

## Bad

```sql
ALTER TABLE import_batches SET LOGGED;
```

## Good

```sql
CREATE TABLE import_batches_new (LIKE import_batches INCLUDING ALL);
INSERT INTO import_batches_new SELECT * FROM import_batches WHERE ctid = ANY (ARRAY(SELECT ctid FROM import_batches LIMIT 10000));
BEGIN;
ALTER TABLE import_batches RENAME TO import_batches_old;
ALTER TABLE import_batches_new RENAME TO import_batches;
COMMIT;
```

## Safe alternative

There is no online form. For a table that is only written by a batch job, build the
new copy yourself: create a table with the wanted persistence (`CREATE TABLE ...
(LIKE ... INCLUDING ALL)` or `CREATE UNLOGGED TABLE`), copy the rows in batches while
the writers write to both, then swap the names in one short transaction with
`lock_timeout` set. For a small table, accept the rewrite at a quiet time with an
ignore comment.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement
from safeddl.locks import Holds
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import beside, existing_lock, local, new_name
from safeddl.sql import quote_ident


class SetLogged:
    id = "set-logged"
    severity = Severity.ERROR
    summary = "SET LOGGED / UNLOGGED rewrites the table under ACCESS EXCLUSIVE"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({Action.SET_LOGGED})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        for step in statement.steps:
            if step.action is not Action.SET_LOGGED or step.holds is not Holds.REWRITE:
                continue
            lock = existing_lock(statement, context, step.table)
            if lock is None:
                continue
            assert step.table is not None
            unlogged = bool(re.search(r"(?i)\bUNLOGGED\b", step.text or statement.sql))
            form = "SET UNLOGGED" if unlogged else "SET LOGGED"
            table = step.table
            fresh = beside(table, new_name(local(table), "new"))
            create = "CREATE UNLOGGED TABLE" if unlogged else "CREATE TABLE"
            alternative = "\n".join([
                f"{create} {fresh} (LIKE {table} INCLUDING ALL);",
                "-- copy the rows in batches while the writers write to both, then swap:",
                "BEGIN;",
                f"ALTER TABLE {table} RENAME TO {new_name(local(table), 'old')};",
                f"ALTER TABLE {fresh} RENAME TO {quote_ident(local(table))};",
                "COMMIT;",
            ])
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"{form} writes a new copy of {table} while all queries on "
                        "it wait.", lock, alternative),
                alternative, lock.relation,
            )


RULE = SetLogged()
