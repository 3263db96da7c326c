"""# create-index

`CREATE INDEX` without `CONCURRENTLY` takes a SHARE lock on the table for the whole
index build: every INSERT, UPDATE and DELETE waits until the index is built, which
takes as long as reading the whole table.

**Lock:** SHARE (blocks writes) for a full scan of the table.

## Bad

```sql
CREATE INDEX orders_customer_idx ON orders (customer_id);
```

## Good

```sql
CREATE INDEX CONCURRENTLY orders_customer_idx ON orders (customer_id);
```

## Safe alternative

`CREATE INDEX CONCURRENTLY` takes SHARE UPDATE EXCLUSIVE, which lets reads and
writes go on. It cannot run inside a transaction block (with SQLAlchemy use
`isolation_level="AUTOCOMMIT"`, with Alembic `op.get_context().autocommit_block()`).
If it fails it leaves an INVALID index behind: drop it with
`DROP INDEX CONCURRENTLY` before trying again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement
from safeddl.rules.base import Context, Finding, Severity, compose


class CreateIndex:
    id = "create-index"
    severity = Severity.ERROR
    summary = "CREATE INDEX without CONCURRENTLY blocks writes for the whole build"
    kinds: ClassVar[frozenset[Action]] = frozenset({Action.CREATE_INDEX})  # finds nothing in others

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if statement.kind is not Action.CREATE_INDEX or statement.steps[0].concurrently:
            return
        locks = context.existing_locks(statement)
        if not locks:
            return
        alternative = re.sub(r"(?i)^(\s*CREATE\s+(?:UNIQUE\s+)?INDEX)\b", r"\1 CONCURRENTLY",
                             statement.sql, count=1) + ";"
        yield Finding(
            self.id, self.severity,
            compose(self.id, "the index is built while writes to the table wait.",
                    locks[0], alternative),
            alternative, locks[0].relation,
        )


RULE = CreateIndex()
