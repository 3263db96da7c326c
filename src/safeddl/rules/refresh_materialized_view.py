"""# refresh-materialized-view

`REFRESH MATERIALIZED VIEW` without `CONCURRENTLY` runs the view's query and replaces
its contents while holding ACCESS EXCLUSIVE on the view: every query that reads the
view waits until the refresh is over.

**Lock:** ACCESS EXCLUSIVE on the materialized view (blocks all reads) for a rewrite
of the whole view.

## Bad

```sql
REFRESH MATERIALIZED VIEW order_totals;
```

## Good

```sql
REFRESH MATERIALIZED VIEW CONCURRENTLY order_totals;
```

## Safe alternative

`REFRESH MATERIALIZED VIEW CONCURRENTLY` computes the new contents next to the old
ones and applies the difference under an EXCLUSIVE lock, which lets reads go on
(only another refresh waits). It needs a unique index on the view, on plain columns
and without a WHERE clause (create it once, with `CREATE UNIQUE INDEX CONCURRENTLY`),
and the view must already be populated. It takes longer than a plain refresh.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement
from safeddl.rules.base import Context, Finding, Severity, compose


class RefreshMaterializedView:
    id = "refresh-materialized-view"
    severity = Severity.ERROR
    summary = "REFRESH MATERIALIZED VIEW without CONCURRENTLY blocks every reader of the view"
    kinds: ClassVar[frozenset[Action]] = frozenset({Action.REFRESH_MATERIALIZED_VIEW})  # finds nothing in others

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if statement.kind is not Action.REFRESH_MATERIALIZED_VIEW:
            return
        step = statement.steps[0]
        if step.concurrently or step.target_kind == "no-data":
            return
        locks = context.existing_locks(statement)
        if not locks:
            return
        lock = locks[0]
        safe = re.sub(r"(?is)^(\s*REFRESH\s+MATERIALIZED\s+VIEW)\b", r"\1 CONCURRENTLY",
                      statement.sql.rstrip().rstrip(";"), count=1) + ";"
        alternative = "\n".join([
            f"-- once, if {step.table} has no unique index yet:",
            f"-- CREATE UNIQUE INDEX CONCURRENTLY ON {step.table} (<columns that identify a row>);",
            safe,
        ])
        yield Finding(
            self.id, self.severity,
            compose(self.id, f"the refresh replaces the contents of {step.table} while every "
                    "query reading it waits.", lock, alternative),
            safe, lock.relation,
        )


RULE = RefreshMaterializedView()
