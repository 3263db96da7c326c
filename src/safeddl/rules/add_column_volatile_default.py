"""# add-column-volatile-default

`ADD COLUMN ... DEFAULT <expression>` with a volatile default (`random()`,
`gen_random_uuid()`, `clock_timestamp()`, `nextval(...)`, or a function safeddl does
not know) computes a value for every existing row: the whole table and its indexes
are rewritten while ACCESS EXCLUSIVE blocks every query. (A constant or STABLE
default such as `0` or `now()` is stored once in the catalog, without a rewrite.)

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) for a rewrite of the whole
table and its indexes.

## Bad

```sql
ALTER TABLE orders ADD COLUMN token uuid DEFAULT gen_random_uuid();
```

## Good

```sql
ALTER TABLE orders ADD COLUMN token uuid, ALTER COLUMN token SET DEFAULT gen_random_uuid();
UPDATE orders SET token = gen_random_uuid() WHERE ctid = ANY (ARRAY(SELECT ctid FROM orders WHERE token IS NULL LIMIT 10000));
```

## Safe alternative

Add the column without a default and set the default in the same `ALTER TABLE`:
existing rows get NULL (no rewrite), new rows get the default. Then fill the existing
rows in batches, each in its own short transaction, until a batch updates no row.
If the column must be NOT NULL, add that afterwards as `set-not-null` explains.

If the function is in fact STABLE or IMMUTABLE, PostgreSQL does not rewrite: say so
with `-- safeddl: ignore[add-column-volatile-default] <function> is stable`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement, Step, Volatility
from safeddl.locks import Holds
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.set_not_null import not_null_sequence
from safeddl.rules.support import batched_update, existing_lock, runnable

_VOLATILE = (Volatility.VOLATILE, Volatility.UNKNOWN)


class AddColumnVolatileDefault:
    id = "add-column-volatile-default"
    severity = Severity.ERROR
    summary = "ADD COLUMN with a volatile DEFAULT rewrites the table under ACCESS EXCLUSIVE"
    # finds nothing in a statement without a step of these actions
    step_actions: ClassVar[frozenset[Action]] = frozenset({Action.ADD_COLUMN})

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        for step in statement.steps:
            if not _rewrites(step):
                continue
            assert step.table is not None and step.column is not None
            lock = existing_lock(statement, context, step.table)
            if lock is None:
                continue
            alternative = _alternative(step, context.version)
            why = (f"safeddl does not know the volatility of DEFAULT {step.default_sql} and "
                   "assumes it is volatile" if step.volatility is Volatility.UNKNOWN
                   else f"DEFAULT {step.default_sql} is volatile")
            yield Finding(
                self.id, self.severity,
                compose(self.id, f"{why}: adding {step.column} computes it for every existing "
                        f"row, rewriting {step.table} while all queries on it wait.",
                        lock, alternative),
                runnable(alternative), lock.relation,
            )


def _rewrites(step: Step) -> bool:
    return (step.action is Action.ADD_COLUMN and step.table is not None
            and step.column is not None and step.generated is None
            and step.volatility in _VOLATILE and step.holds is Holds.REWRITE)


def _alternative(step: Step, version: int) -> str:
    assert step.table is not None and step.column is not None
    table, column = step.table, step.column
    lines = [
        (f"ALTER TABLE {table} ADD COLUMN {column} {step.type_sql or '<type>'}, "
        f"ALTER COLUMN {column} SET DEFAULT {step.default_sql};"),
        "-- existing rows, in batches, each in its own transaction, until 0 rows are updated:",
        batched_update(table, f"{column} = {step.default_sql}", f"{column} IS NULL"),
    ]
    if step.not_null:
        lines.append("-- then NOT NULL, without a long lock:")
        lines.append(not_null_sequence(table, column, version))
    return "\n".join(lines)


RULE = AddColumnVolatileDefault()
