"""# set-tablespace

`ALTER TABLE ... SET TABLESPACE` copies the table, and `ALTER INDEX ... SET
TABLESPACE` the index, to the new tablespace while holding ACCESS EXCLUSIVE: every
query on the table (for an index: every query whose plan could use it) waits for
the whole copy.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a copy of the whole
table or index.

## Bad

```sql
ALTER TABLE orders SET TABLESPACE fast_ssd;
```

## Good

```sql
REINDEX (TABLESPACE fast_ssd) TABLE CONCURRENTLY orders;
```

## Safe alternative

Indexes move online with `REINDEX (TABLESPACE ...) INDEX|TABLE CONCURRENTLY`
(PostgreSQL 14 and later; before, build a copy with `CREATE INDEX CONCURRENTLY ...
TABLESPACE ...` and swap it in). Tables move online with `pg_repack --tablespace`,
which holds ACCESS EXCLUSIVE only briefly at the start and the end.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement, Step
from safeddl.locks import Holds
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import existing_lock


class SetTablespace:
    id = "set-tablespace"
    severity = Severity.ERROR
    summary = "SET TABLESPACE copies the table or index under ACCESS EXCLUSIVE"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({
        Action.SET_TABLESPACE, Action.ALTER_INDEX})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        for step in statement.steps:
            moved = _moved(step)
            if moved is None:
                continue
            name, tablespace, is_index = moved
            lock = existing_lock(statement, context, step.table if not is_index else name)
            if lock is None:
                continue
            if is_index:
                alternative = _index_alternative(name, tablespace, context.version)
                safe: str | None = alternative if context.version >= 14 else None
            else:
                alternative = "\n".join([
                    "-- move the table online (brief ACCESS EXCLUSIVE only at start and end):",
                    (f"--   pg_repack --table={shlex.quote(name)} "
                    f"--tablespace={shlex.quote(tablespace)} --moveidx"),
                ])
                safe = None
            what = f"index {name}" if is_index else name
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"{what} is copied to tablespace {tablespace} while all "
                        "queries on it wait.", lock, alternative),
                safe, lock.relation,
            )


def _moved(step: Step) -> tuple[str, str, bool] | None:
    """(table or index as written, tablespace, is an index) of a SET TABLESPACE."""
    if step.action is Action.SET_TABLESPACE and step.table and step.holds is Holds.REWRITE:
        return step.table, step.name or "<tablespace>", False
    if step.action is Action.ALTER_INDEX and step.name:
        match = re.match(r"(?is)^\s*SET\s+TABLESPACE\s+(\S+)", step.text)
        if match:
            return step.name, match.group(1), True
    return None


def _index_alternative(index: str, tablespace: str, version: int) -> str:
    if version >= 14:
        return (f"REINDEX (TABLESPACE {tablespace}) INDEX CONCURRENTLY {index};\n"
                "-- outside a transaction block")
    return "\n".join([
        f"-- PostgreSQL {version}: build a copy in {tablespace} and swap it in:",
        (f"CREATE INDEX CONCURRENTLY <new name> ON <table> (<the columns of {index}>) "
        f"TABLESPACE {tablespace};"),
        f"DROP INDEX CONCURRENTLY {index};",
        f"ALTER INDEX <new name> RENAME TO <the name of {index}>;",
    ])


RULE = SetTablespace()
