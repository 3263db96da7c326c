"""# add-foreign-key

Adding a foreign key to an existing table (`ADD FOREIGN KEY`, `ADD CONSTRAINT ...
FOREIGN KEY`, or `REFERENCES` on `ADD COLUMN`) checks every existing row against the
referenced table while holding SHARE ROW EXCLUSIVE on both tables: writes to the
table *and* to the referenced table wait for the whole scan (with `ADD COLUMN` the
table is even held ACCESS EXCLUSIVE, blocking reads too).

**Lock:** SHARE ROW EXCLUSIVE on the table and on the referenced table (blocks
writes) for a full scan of the table.

## Bad

```sql
ALTER TABLE orders ADD CONSTRAINT orders_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES customers (id);
```

## Good

```sql
ALTER TABLE orders ADD CONSTRAINT orders_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES customers (id) NOT VALID;
ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_id_fkey;
```

## Safe alternative

Add the constraint `NOT VALID`: a brief catalog change after which new and changed
rows are checked. Then `VALIDATE CONSTRAINT` in its own transaction checks the
existing rows under SHARE UPDATE EXCLUSIVE on the table and ROW SHARE on the
referenced table, which lets reads and writes on both go on.

For a new column, add the column and the `NOT VALID` constraint in one `ALTER
TABLE`, then validate. Before PostgreSQL 18 a foreign key on a partitioned table
cannot be `NOT VALID`: add and validate it on each partition first, then add it to
the partitioned table, which reuses the partitions' constraints.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, ConstraintType, Statement, Step
from safeddl.locks import Holds
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import (
    column_def,
    display,
    existing_lock,
    group_columns,
    local,
    new_name,
    runnable,
)


class AddForeignKey:
    id = "add-foreign-key"
    severity = Severity.ERROR
    summary = "a foreign key added without NOT VALID blocks writes to both tables for a scan"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({
        Action.ADD_CONSTRAINT, Action.ADD_COLUMN})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        for step in statement.steps:
            if not _validates(step):
                continue
            assert step.table is not None and step.references is not None
            lock = existing_lock(statement, context, step.table)
            if lock is None:
                continue
            referenced = existing_lock(statement, context, step.references)
            alternative = _alternative(step, context)
            also = (f" It also takes {referenced.mode.sql_name} on the referenced table "
                    f"{referenced.relation}, so writes to {referenced.relation} wait as long."
                    if referenced is not None else "")
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"the foreign key to {step.references} is checked against "
                        f"every existing row of {step.table} under a strong lock.{also}",
                        lock, alternative),
                runnable(alternative), lock.relation,
            )


def _validates(step: Step) -> bool:
    if step.holds is Holds.BRIEF or step.table is None or not step.references:
        return False
    if step.action is Action.ADD_CONSTRAINT:
        return step.constraint_type is ConstraintType.FOREIGN_KEY and not step.not_valid
    return step.action is Action.ADD_COLUMN


def _alternative(step: Step, context: Context) -> str:
    assert step.table is not None
    table = step.table
    if step.action is Action.ADD_COLUMN:
        assert step.column is not None
        name = new_name(local(table), local(step.column), "fkey")
        references = _references_clause(step.definition_sql or f"REFERENCES {step.references}")
        first = (f"ALTER TABLE {table} ADD COLUMN "
                 f"{column_def(step.column, step.type_sql, step.default_sql, step.not_null)},\n"
                 f"    ADD CONSTRAINT {name} FOREIGN KEY ({step.column}) {references} NOT VALID;")
    else:
        columns = group_columns(step.definition_sql)
        name = step.name or new_name(local(table), *(local(c) for c in columns), "fkey")
        first = f"ALTER TABLE {table} ADD CONSTRAINT {name} {step.definition_sql} NOT VALID;"
    lines = [first,
             "-- in its own transaction (SHARE UPDATE EXCLUSIVE: reads and writes go on):",
             f"ALTER TABLE {table} VALIDATE CONSTRAINT {name};"]
    relation = context.catalog.get(table)
    if relation is not None and relation.kind == "partitioned" and context.version < 18:
        parts = [display(context, key) for key in context.catalog.children(table)] or ["<partition>"]
        lines = [(f"-- PostgreSQL {context.version} cannot add a foreign key NOT VALID to a "
                 "partitioned table: on each partition first,")]
        for part in parts:
            lines += [
                f"ALTER TABLE {part} ADD CONSTRAINT {name} {_fk_body(step)} NOT VALID;",
                f"ALTER TABLE {part} VALIDATE CONSTRAINT {name};",
            ]
        lines += ["-- then on the partitioned table (the partitions' constraints are reused):",
                  f"ALTER TABLE {table} ADD CONSTRAINT {name} {_fk_body(step)};"]
    return "\n".join(lines)


def _fk_body(step: Step) -> str:
    if step.action is Action.ADD_COLUMN:
        references = _references_clause(step.definition_sql or f"REFERENCES {step.references}")
        return f"FOREIGN KEY ({step.column}) {references}"
    return step.definition_sql or ""


def _references_clause(definition: str) -> str:
    """``REFERENCES t (id) ON DELETE CASCADE`` out of a column's inline constraints."""
    match = re.search(r"(?is)\bREFERENCES\b.*?(?=\s+(?:CHECK|UNIQUE|PRIMARY|CONSTRAINT)\b|$)",
                      definition)
    return match.group(0).strip() if match else definition


RULE = AddForeignKey()
