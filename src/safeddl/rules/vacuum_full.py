"""# vacuum-full

`VACUUM FULL` writes a new, compacted copy of the table and its indexes while holding
ACCESS EXCLUSIVE: every query on the table, reads included, waits for the whole
rewrite. Without a table name it does that to every table of the database in turn.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a rewrite of the whole
table and its indexes.

## Bad

```sql
VACUUM FULL orders;
```

## Good

```sql
VACUUM (ANALYZE) orders;
```

## Safe alternative

Plain `VACUUM` (SHARE UPDATE EXCLUSIVE: reads and writes go on) makes dead space
reusable, which is what a busy table needs. To give the space back to the operating
system, rebuild the table online with `pg_repack` or `pg_squeeze`: they hold ACCESS
EXCLUSIVE only briefly at the start and the end.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, RelationLock, Statement
from safeddl.locks import Holds, LockMode
from safeddl.rules.base import Context, Finding, Severity, compose


class VacuumFull:
    id = "vacuum-full"
    severity = Severity.ERROR
    summary = "VACUUM FULL rewrites the table under ACCESS EXCLUSIVE"
    kinds: ClassVar[frozenset[Action]] = frozenset({Action.VACUUM_FULL})  # finds nothing in others

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if statement.kind is not Action.VACUUM_FULL:
            return
        tables = [step.table for step in statement.steps if step.table]
        if tables:
            locks = context.existing_locks(statement)
            if not locks:
                return
            lock = locks[0]
            safe = "\n".join(f"VACUUM {table};" for table in tables)
            repack = "\n".join(f"--   pg_repack --no-order --table={shlex.quote(table)}"
                               for table in tables)
        else:
            lock = RelationLock("every table of the database", LockMode.ACCESS_EXCLUSIVE,
                                Holds.REWRITE)
            safe = "VACUUM;"
            repack = "--   pg_repack --no-order --all"
        alternative = f"{safe}\n-- dead space becomes reusable; to return it to the operating system, online:\n{repack}"
        yield Finding(
            self.id, self.severity,
            compose(self.id, f"VACUUM FULL rewrites {', '.join(tables) or 'every table'} "
                    "while all queries on it wait.", lock, alternative),
            safe, lock.relation,
        )


RULE = VacuumFull()
