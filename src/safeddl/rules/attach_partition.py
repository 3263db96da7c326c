"""# attach-partition

`ALTER TABLE ... ATTACH PARTITION` reads every row of the table being attached, to
prove that it fits the partition bound, while holding ACCESS EXCLUSIVE on it; if the
partitioned table has a DEFAULT partition, that one is scanned the same way. On
PostgreSQL 11 the partitioned table itself is held ACCESS EXCLUSIVE for the whole
scan, so every query on it waits; from 12 it takes SHARE UPDATE EXCLUSIVE.

**Lock:** ACCESS EXCLUSIVE on the partition (blocks all reads and writes) for a full
scan of it.

## Bad

```sql
ALTER TABLE events ATTACH PARTITION events_2025 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
```

## Good

```sql
ALTER TABLE events_2025 ADD CONSTRAINT events_2025_bound CHECK (created_at >= '2025-01-01' AND created_at < '2026-01-01') NOT VALID;
ALTER TABLE events_2025 VALIDATE CONSTRAINT events_2025_bound;
ALTER TABLE events ATTACH PARTITION events_2025 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
ALTER TABLE events_2025 DROP CONSTRAINT events_2025_bound;
```

## Safe alternative

Prove the bound before attaching: add a CHECK constraint that matches the partition
bound `NOT VALID` (brief), `VALIDATE` it in its own transaction (SHARE UPDATE
EXCLUSIVE: reads and writes go on), then `ATTACH PARTITION` finds the valid
constraint and skips its scan. The CHECK constraint can be dropped afterwards. For a
DEFAULT partition, a valid CHECK constraint that excludes the new bound avoids its
scan the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement, Step
from safeddl.locks import Holds
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import (
    existing_lock,
    local,
    new_name,
    runnable,
    split_commas,
    statement_sql,
)

_KEY = "<partition key>"


class AttachPartition:
    id = "attach-partition"
    severity = Severity.ERROR
    summary = "ATTACH PARTITION scans the partition under ACCESS EXCLUSIVE"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({Action.ATTACH_PARTITION})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        for step in statement.steps:
            if step.action is not Action.ATTACH_PARTITION or not step.name or not step.table:
                continue
            parent = existing_lock(statement, context, step.table)
            scanned = [lock for lock in context.existing_locks(statement)
                       if lock.holds is not Holds.BRIEF
                       and (parent is None or lock.relation != parent.relation)]
            if not scanned:
                continue
            own = existing_lock(statement, context, step.name)
            others = [lock.relation for lock in scanned if lock is not own]
            alternative = _alternative(step, statement, own is not None and own in scanned)
            problem = (f"{step.name} is scanned to prove its rows fit the partition bound "
                       "while all queries on it wait." if own in scanned else "")
            if others:
                alternative += (f"\n-- {', '.join(others)} (the DEFAULT partition) is scanned "
                                "too: a valid CHECK constraint on it that excludes this bound "
                                "avoids that scan")
                problem += (f" The DEFAULT partition {', '.join(others)} is scanned too, to "
                            "check that none of its rows belong to the new partition.")
            if parent is not None:
                problem += (f" {step.table} itself is held {parent.mode.sql_name} meanwhile"
                            + (": every query on it waits too." if parent.mode.blocks.reads
                               else "."))
            yield Finding(
                self.id, self.severity,
                compose(self.id, problem.strip(), scanned[0], alternative),
                runnable(alternative), scanned[0].relation,
            )


def _alternative(step: Step, statement: Statement, own_scan: bool) -> str:
    assert step.name is not None
    if not own_scan:
        return statement_sql(statement)
    partition = step.name
    name = new_name(local(partition), "bound")
    condition = _condition(statement.sql)
    return "\n".join([
        f"ALTER TABLE {partition} ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID;",
        "-- in its own transaction (SHARE UPDATE EXCLUSIVE: reads and writes go on):",
        f"ALTER TABLE {partition} VALIDATE CONSTRAINT {name};",
        "-- no scan now: the valid CHECK constraint proves the bound",
        statement_sql(statement),
        f"ALTER TABLE {partition} DROP CONSTRAINT {name};",
    ])


def _condition(sql: str) -> str:
    """The partition bound as a condition on the partition key (which the statement
    does not name: ``<partition key>`` stands for it)."""
    bound = re.search(r"(?is)\bFOR\s+VALUES\s+(.*?)\s*;?\s*$", sql)
    if bound is None:
        return f"<the bound of the partition, on {_KEY}>"
    text = bound.group(1)
    ranged = re.match(r"(?is)^FROM\s*\((.*)\)\s*TO\s*\((.*)\)$", text)
    if ranged:
        low, high = split_commas(ranged.group(1)), split_commas(ranged.group(2))
        if len(low) == 1 and len(high) == 1:
            parts = []
            if low[0].upper() != "MINVALUE":
                parts.append(f"{_KEY} >= {low[0]}")
            if high[0].upper() != "MAXVALUE":
                parts.append(f"{_KEY} < {high[0]}")
            return " AND ".join(parts) or f"{_KEY} IS NOT NULL"
    listed = re.match(r"(?is)^IN\s*\((.*)\)$", text)
    if listed:
        return f"{_KEY} IN ({listed.group(1).strip()})"
    return f"<{' '.join(text.split())} as a condition on {_KEY}>"


RULE = AttachPartition()
