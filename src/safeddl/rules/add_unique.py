"""# add-unique

`ADD UNIQUE` / `ADD PRIMARY KEY` (or `UNIQUE` / `PRIMARY KEY` on `ADD COLUMN`) builds
the unique index while holding ACCESS EXCLUSIVE on the table: every query, reads
included, waits until the index is built, which takes as long as reading the whole
table and sorting it.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a full scan of the table.

## Bad

```sql
ALTER TABLE orders ADD CONSTRAINT orders_reference_key UNIQUE (reference);
```

## Good

```sql
CREATE UNIQUE INDEX CONCURRENTLY orders_reference_key ON orders (reference);
ALTER TABLE orders ADD CONSTRAINT orders_reference_key UNIQUE USING INDEX orders_reference_key;
```

## Safe alternative

Build the unique index first with `CREATE UNIQUE INDEX CONCURRENTLY` (SHARE UPDATE
EXCLUSIVE: reads and writes go on; outside a transaction block), then turn it into
the constraint with `ADD CONSTRAINT ... UNIQUE USING INDEX` (or `PRIMARY KEY USING
INDEX`), a brief catalog change. If the concurrent build fails it leaves an INVALID
index behind: drop it with `DROP INDEX CONCURRENTLY` and try again.

For a primary key the columns must already be NOT NULL (see `set-not-null`),
otherwise `ADD PRIMARY KEY USING INDEX` scans the table under ACCESS EXCLUSIVE to
check them. `CREATE INDEX CONCURRENTLY` does not work on a partitioned table: build
the index on each partition concurrently and attach them to an index created with
`ON ONLY` on the partitioned table.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, ConstraintType, Statement, Step
from safeddl.locks import Holds
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.set_not_null import not_null_sequence
from safeddl.rules.support import (
    column_def,
    existing_lock,
    first_group,
    group_columns,
    local,
    new_name,
    runnable,
)
from safeddl.sql import quote_ident

_KEYS = (ConstraintType.UNIQUE, ConstraintType.PRIMARY_KEY)


class AddUnique:
    id = "add-unique"
    severity = Severity.ERROR
    summary = "ADD UNIQUE / PRIMARY KEY builds its index under ACCESS EXCLUSIVE"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({
        Action.ADD_CONSTRAINT, Action.ADD_COLUMN})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        for step in statement.steps:
            if _sets_not_null(step):
                yield from self._primary_key_using_index(statement, step, context)
                continue
            if not _builds_index(step):
                continue
            assert step.table is not None
            lock = existing_lock(statement, context, step.table)
            if lock is None:
                continue
            kind = "PRIMARY KEY" if step.constraint_type is ConstraintType.PRIMARY_KEY else "UNIQUE"
            alternative = _alternative(step, kind, context)
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"the {kind} constraint builds its index over all of "
                        f"{step.table} while all queries on it wait.", lock, alternative),
                runnable(alternative), lock.relation,
            )


    def _primary_key_using_index(self, statement: Statement, step: Step,
                                 context: Context) -> Iterator[Finding]:
        """``ADD PRIMARY KEY USING INDEX i`` when the index's columns are not known to
        be NOT NULL: PostgreSQL sets NOT NULL on them, reading every row under ACCESS
        EXCLUSIVE."""
        assert step.table is not None and step.using_index is not None
        lock = existing_lock(statement, context, step.table)
        if lock is None:
            return
        catalog = context.catalog
        known = catalog.index_columns.get(catalog.key(step.using_index), ())
        columns = [quote_ident(c) for c in known]
        lines = []
        for column in columns:
            if not catalog.proves_not_null(step.table, column):
                lines.append(not_null_sequence(step.table, column, context.version))
        if not columns:
            lines += [f"-- make each column of {step.using_index} NOT NULL first, without a "
                      "long lock; for a column c:",
                      not_null_sequence(step.table, "c", context.version)]
        lines.append(f"-- then, brief (the columns are NOT NULL):\n{statement.sql.rstrip(';')};")
        alternative = "\n".join(lines)
        which = ", ".join(columns) if columns else "its columns"
        yield Finding(
            self.id, self.severity,
            compose(self.id, f"PRIMARY KEY USING INDEX {step.using_index} makes {which} "
                    f"NOT NULL, which reads every row of {step.table} while all queries "
                    "on it wait (nothing shows the columns are NOT NULL already).",
                    lock, alternative),
            runnable(alternative), lock.relation,
        )


def _sets_not_null(step: Step) -> bool:
    return (step.action is Action.ADD_CONSTRAINT and step.using_index is not None
            and step.constraint_type is ConstraintType.PRIMARY_KEY
            and step.holds is not Holds.BRIEF and step.table is not None)


def _builds_index(step: Step) -> bool:
    if step.holds is Holds.BRIEF or step.table is None or step.constraint_type not in _KEYS:
        return False
    if step.action is Action.ADD_CONSTRAINT:
        return not step.using_index
    return step.action is Action.ADD_COLUMN


def _alternative(step: Step, kind: str, context: Context) -> str:
    assert step.table is not None
    table = step.table
    lines: list[str] = []
    if step.action is Action.ADD_COLUMN:
        assert step.column is not None
        columns = [step.column]
        index_tail = f"({step.column})"
        constraint_tail = ""
        lines.append(f"ALTER TABLE {table} ADD COLUMN "
                     f"{column_def(step.column, step.type_sql, step.default_sql, step.not_null)};")
    else:
        columns = group_columns(step.definition_sql)
        index_tail, constraint_tail = _index_parts(step.definition_sql or "", kind)
    suffix = "pkey" if kind == "PRIMARY KEY" else "key"
    if step.name:
        name = step.name
    elif kind == "PRIMARY KEY":
        name = new_name(local(table), suffix)
    else:
        name = new_name(local(table), *(local(c) for c in columns), suffix)
    if kind == "PRIMARY KEY" and step.action is Action.ADD_CONSTRAINT:
        missing = [c for c in columns if not context.catalog.proves_not_null(table, c)]
        for column in missing:
            lines.append(f"-- {column} must be NOT NULL first, without a long lock:")
            lines.append(not_null_sequence(table, column, context.version))
    lines += [
        f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON {table} {index_tail};",
        "-- (outside a transaction block) then, a brief catalog change:",
        (f"ALTER TABLE {table} ADD CONSTRAINT {name} {kind} USING INDEX {name}"
        f"{constraint_tail};"),
    ]
    return "\n".join(lines)


def _index_parts(definition: str, kind: str) -> tuple[str, str]:
    """``UNIQUE NULLS NOT DISTINCT (a) INCLUDE (b) USING INDEX TABLESPACE t DEFERRABLE``
    -> (``(a) INCLUDE (b) NULLS NOT DISTINCT TABLESPACE t``, `` DEFERRABLE``)."""
    body = re.sub(r"(?is)^\s*(UNIQUE|PRIMARY\s+KEY)\s*", "", definition)
    nulls = ""
    match = re.match(r"(?is)^(NULLS\s+(?:NOT\s+)?DISTINCT)\s*", body)
    if match:
        nulls = " " + match.group(1)
        body = body[match.end():]
    found = first_group(body)
    if found is None:
        return "(<columns>)", ""
    _, columns, rest = found
    deferrable = ""
    match = re.search(r"(?is)\s*((?:NOT\s+)?DEFERRABLE\b.*|INITIALLY\b.*)$", rest)
    if match:
        deferrable = " " + match.group(1).strip()
        rest = rest[: match.start()]
    include = _take(r"INCLUDE\s*\([^)]*\)", rest)
    storage = _take(r"WITH\s*\([^)]*\)", rest)
    tablespace = _take(r"USING\s+INDEX\s+TABLESPACE\s+\S+", rest)
    tablespace = re.sub(r"(?is)^USING\s+INDEX\s+", "", tablespace)
    parts = [columns, include, nulls.strip(), storage, tablespace]
    return " ".join(p for p in parts if p), deferrable


def _take(pattern: str, text: str) -> str:
    match = re.search("(?is)" + pattern, text)
    return match.group(0) if match else ""


RULE = AddUnique()
