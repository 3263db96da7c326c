"""# drop-index

`DROP INDEX` without `CONCURRENTLY` takes an ACCESS EXCLUSIVE lock on the index's
table. Removing the index is quick, but the lock must first wait for every running
query on the table, and every query that arrives meanwhile, plain reads included,
queues behind it: one slow report turns a millisecond drop into an outage.

**Lock:** ACCESS EXCLUSIVE on the table (blocks all reads and writes) until COMMIT.

## Bad

```sql
DROP INDEX orders_status_idx;
```

## Good

```sql
DROP INDEX CONCURRENTLY orders_status_idx;
```

## Safe alternative

`DROP INDEX CONCURRENTLY` takes SHARE UPDATE EXCLUSIVE, which lets reads and writes
go on, and waits for the transactions using the index instead of blocking them. It
cannot run inside a transaction block, drops one index per statement, does not take
`CASCADE`, and cannot drop an index that backs a constraint (drop the constraint
with `ALTER TABLE ... DROP CONSTRAINT` instead).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement
from safeddl.rules.base import Context, Finding, Severity, compose


class DropIndex:
    id = "drop-index"
    severity = Severity.ERROR
    summary = "DROP INDEX without CONCURRENTLY takes ACCESS EXCLUSIVE on the table"
    kinds: ClassVar[frozenset[Action]] = frozenset({Action.DROP_INDEX})  # finds nothing in others

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if statement.kind is not Action.DROP_INDEX:
            return
        steps = [s for s in statement.steps if s.name and not s.concurrently]
        locks = context.existing_locks(statement)
        if not steps or not locks:
            return
        if_exists = " IF EXISTS" if re.search(r"(?i)\bIF\s+EXISTS\b", statement.sql) else ""
        alternative = "\n".join(f"DROP INDEX CONCURRENTLY{if_exists} {s.name};" for s in steps)
        notes = ["-- one index per statement, outside a transaction block"]
        if any(s.cascade for s in steps):
            notes.append("-- CONCURRENTLY does not take CASCADE: drop the dependent objects first")
        lock = locks[0]
        where = (f"the table of index {lock.relation}" if lock.object == "index"
                 else lock.relation)
        yield Finding(
            self.id, self.severity,
            compose(self.id, f"dropping the index locks {where} against every query; it "
                    "queues behind running queries and everything else queues behind it.",
                    lock, alternative + "\n" + "\n".join(notes)),
            alternative, lock.relation,
        )


RULE = DropIndex()
