"""# add-exclude

`ADD CONSTRAINT ... EXCLUDE` builds its index and checks every existing row while
holding ACCESS EXCLUSIVE on the table: every query, reads included, waits until it
is done. Unlike CHECK and FOREIGN KEY constraints, an exclusion constraint cannot be
added `NOT VALID`, and unlike UNIQUE it cannot be built from an index made
concurrently: there is no form of it that avoids the long lock.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a full scan of the table.

## Bad

```sql
ALTER TABLE bookings ADD CONSTRAINT bookings_no_overlap EXCLUDE USING gist (room_id WITH =, during WITH &&);
```

## Good

```sql
SET lock_timeout = '5s';
-- safeddl: ignore[add-exclude] run in the Sunday 03:00 maintenance window, table is small
ALTER TABLE bookings ADD CONSTRAINT bookings_no_overlap EXCLUDE USING gist (room_id WITH =, during WITH &&);
```

## Safe alternative

There is none that keeps the table available. Add exclusion constraints when the
table is created, or run the statement at a quiet time with `lock_timeout` set (so it
fails fast instead of queueing in front of every query) and retry on lock timeout,
and record that decision with an ignore comment. Until then, the application or a
trigger can enforce the rule for new rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, ConstraintType, Statement
from safeddl.locks import Holds
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import existing_lock, statement_sql


class AddExclude:
    id = "add-exclude"
    severity = Severity.ERROR
    summary = "an EXCLUDE constraint is built under ACCESS EXCLUSIVE and has no online form"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({Action.ADD_CONSTRAINT})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        for step in statement.steps:
            if (step.action is not Action.ADD_CONSTRAINT
                    or step.constraint_type is not ConstraintType.EXCLUDE
                    or step.holds is Holds.BRIEF):
                continue
            lock = existing_lock(statement, context, step.table)
            if lock is None:
                continue
            alternative = "\n".join([
                "-- no online form exists: at a quiet time, failing fast instead of queueing,",
                "-- and retried on lock timeout",
                "SET lock_timeout = '5s';",
                statement_sql(statement),
            ])
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"the exclusion constraint is built over all of {step.table} "
                        "while all queries on it wait; it cannot be added NOT VALID.",
                        lock, alternative),
                None, lock.relation,
            )


RULE = AddExclude()
