"""# truncate

`TRUNCATE` takes an ACCESS EXCLUSIVE lock on every table it empties and keeps it
until the transaction ends. It has to wait for every running query on the table,
and while it waits, every new query on the table waits behind it: a dashboard
polling a table that a pipeline refreshes with `TRUNCATE` + reload stalls until
the refresh commits, or the whole site queues up behind one slow report.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) until COMMIT.

## Bad

```sql
TRUNCATE silver_rates;
```

## Good

```sql
DELETE FROM silver_rates;
```

## Safe alternative

In the same transaction as the reload, `DELETE FROM t` takes ROW EXCLUSIVE: readers
keep their snapshot and see the old rows until the new ones commit. For large
tables, load into a new table and swap it in with a short, timeout-bounded
`ALTER TABLE ... RENAME` (safeddl's full-refresh helper does this with retries).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement
from safeddl.rules.base import Context, Finding, Severity, compose


class Truncate:
    id = "truncate"
    severity = Severity.ERROR
    summary = "TRUNCATE takes ACCESS EXCLUSIVE until COMMIT and blocks every reader"
    kinds: ClassVar[frozenset[Action]] = frozenset({Action.TRUNCATE})  # finds nothing in others

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if statement.kind is not Action.TRUNCATE:
            return
        locks = context.existing_locks(statement)
        if not locks:
            return
        tables = [step.table for step in statement.steps if step.table]
        alternative = "\n".join(f"DELETE FROM {table};" for table in tables)
        names = ", ".join(lock.relation for lock in locks)
        yield Finding(
            self.id, self.severity,
            compose(self.id, f"TRUNCATE empties {names} under the strongest lock; readers "
                    "queue behind it, and it queues behind any running reader.",
                    locks[0], alternative + "\n-- in the same transaction as the reload; "
                    "readers keep seeing the old rows until COMMIT"),
            alternative, locks[0].relation,
        )


RULE = Truncate()
