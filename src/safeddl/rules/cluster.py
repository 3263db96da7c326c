"""# cluster

`CLUSTER` writes a new copy of the table in index order, and rebuilds its indexes,
while holding ACCESS EXCLUSIVE: every query on the table, reads included, waits for
the whole rewrite. Without a table name it does that to every table that was
clustered before.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a rewrite of the whole
table and its indexes.

## Bad

```sql
CLUSTER orders USING orders_created_at_idx;
```

## Good

```sql
ALTER TABLE orders CLUSTER ON orders_created_at_idx;
```

## Safe alternative

Record the order with `ALTER TABLE ... CLUSTER ON <index>` (SHARE UPDATE EXCLUSIVE,
brief), then reorder the table online with `pg_repack`, which follows the clustering
index and holds ACCESS EXCLUSIVE only briefly at the start and the end.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, RelationLock, Statement
from safeddl.locks import Holds, LockMode
from safeddl.rules.base import Context, Finding, Severity, compose


class Cluster:
    id = "cluster"
    severity = Severity.ERROR
    summary = "CLUSTER rewrites the table under ACCESS EXCLUSIVE"
    kinds: ClassVar[frozenset[Action]] = frozenset({Action.CLUSTER})  # finds nothing in others

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if statement.kind is not Action.CLUSTER:
            return
        step = statement.steps[0]
        if step.table:
            locks = context.existing_locks(statement)
            if not locks:
                return
            lock = locks[0]
            lines = []
            if step.using_index:
                lines.append(f"ALTER TABLE {step.table} CLUSTER ON {step.using_index};")
            lines += ["-- then reorder online (brief ACCESS EXCLUSIVE only at start and end):",
                      f"--   pg_repack --table={shlex.quote(step.table)}"]
            safe: str | None = lines[0] if step.using_index else None
            what = step.table
        else:
            lock = RelationLock("every table clustered before", LockMode.ACCESS_EXCLUSIVE,
                                Holds.REWRITE)
            lines = ["-- reorder online (brief ACCESS EXCLUSIVE only at start and end), per table:",
                     "--   pg_repack --table=<table>"]
            safe = None
            what = "every clustered table"
        alternative = "\n".join(lines)
        yield Finding(
            self.id, self.severity,
            compose(self.id, f"CLUSTER rewrites {what} in index order while all queries on it "
                    "wait.", lock, alternative),
            safe, lock.relation,
        )


RULE = Cluster()
