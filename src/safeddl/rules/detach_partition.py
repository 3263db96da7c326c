"""# detach-partition

`ALTER TABLE ... DETACH PARTITION` without `CONCURRENTLY` takes ACCESS EXCLUSIVE on
the partitioned table (and on the partition). The change itself is quick, but the
lock has to wait for every running query on the partitioned table, and every query
that arrives meanwhile, on any partition, queues behind it. From PostgreSQL 14 the
detach can be done concurrently.

**Lock:** ACCESS EXCLUSIVE on the partitioned table (blocks all reads and writes)
until COMMIT.

## Bad

```sql
ALTER TABLE events DETACH PARTITION events_2023;
```

## Good

```sql
ALTER TABLE events DETACH PARTITION events_2023 CONCURRENTLY;
```

## Safe alternative

`DETACH PARTITION ... CONCURRENTLY` (PostgreSQL 14 and later) takes SHARE UPDATE
EXCLUSIVE, which lets reads and writes go on, and waits for the queries that use the
partition. It cannot run inside a transaction block, and not when the partitioned
table has a DEFAULT partition. If it is interrupted, finish it with
`ALTER TABLE ... DETACH PARTITION ... FINALIZE`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import display, existing_lock


class DetachPartition:
    id = "detach-partition"
    severity = Severity.ERROR
    summary = "DETACH PARTITION without CONCURRENTLY locks the whole partitioned table"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({Action.DETACH_PARTITION})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if context.version < 14:
            return
        for step in statement.steps:
            if (step.action is not Action.DETACH_PARTITION or step.concurrently
                    or not step.table or not step.name
                    or step.target_kind == "finalize"):
                continue
            lock = existing_lock(statement, context, step.table)
            if lock is None:
                continue
            default = context.catalog.default_partition(step.table)
            if default is not None:
                alternative = "\n".join([
                    (f"-- CONCURRENTLY is not possible: {step.table} has a DEFAULT partition "
                    f"({display(context, default)}); at a quiet time, failing fast instead of "
                    "queueing:"),
                    "SET lock_timeout = '5s';",
                    f"ALTER TABLE {step.table} DETACH PARTITION {step.name};",
                ])
                safe: str | None = None
            else:
                safe = f"ALTER TABLE {step.table} DETACH PARTITION {step.name} CONCURRENTLY;"
                alternative = "\n".join([
                    safe,
                    "-- outside a transaction block; if it is interrupted, finish it with:",
                    f"-- ALTER TABLE {step.table} DETACH PARTITION {step.name} FINALIZE;",
                ])
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"detaching {step.name} locks all of {step.table} against "
                        "every query; it queues behind running queries and everything else "
                        "queues behind it.", lock, alternative),
                safe, lock.relation,
            )


RULE = DetachPartition()
