"""# row-lock-order

Most deadlocks in PostgreSQL are on rows. `UPDATE`, `DELETE` and `SELECT ... FOR
UPDATE` lock every row they touch until the transaction ends, and their table lock
(ROW EXCLUSIVE, ROW SHARE) never conflicts with another writer's: one transaction
that updates the row `id = 42` and then `id = 7` while another updates `7` and then
`42` wait for each other until PostgreSQL aborts one of them. Locking rows in
ascending key order within each table rules that out. safeddl follows the keys that
statements pick rows by (`WHERE id = %s`, `WHERE a = %(a)s AND b = %(b)s`, literals
too) per table and transaction, and reports a row locked below a key the transaction
has already locked. At runtime the keys come from the bound parameters (also every
parameter set of an executemany, in order); lint sees literal keys.

**Lock:** ROW EXCLUSIVE on the table (does not conflict with other writers), and a row
lock on each row written, held until COMMIT, taken out of key order.

## Bad

```sql
BEGIN;
UPDATE orders SET status = 'shipped' WHERE id = 42;
UPDATE orders SET status = 'shipped' WHERE id = 7;
COMMIT;
```

## Good

```sql
BEGIN;
UPDATE orders SET status = 'shipped' WHERE id = 7;
UPDATE orders SET status = 'shipped' WHERE id = 42;
COMMIT;
```

## Safe alternative

Sort the keys before locking the rows: for a batch of keyed updates,
`safeddl.lock_ordered(rows, key=lambda row: row["id"])` gives them in key order (and,
with `table=`, the tables in the canonical lock order too). When the rows are not
known up front, lock them first in one statement in key order (`SELECT ... FROM orders
WHERE id = ANY(%s) ORDER BY id FOR UPDATE`), or declare the table with a
self-conflicting mode (`safeddl.transaction(engine, tables={"orders": "SHARE ROW
EXCLUSIVE"})`), which serializes its writers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from safeddl.analysis import Statement
from safeddl.locks import LockMode
from safeddl.ordering import (
    RowKeyIndex,
    RowLock,
    first_out_of_order,
    remember_greatest,
    row_locks,
)
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import first_line, statement_sql

RULE_ID = "row-lock-order"


class RowLockOrder:
    id = RULE_ID
    severity = Severity.WARNING
    summary = "a transaction locks rows of a table out of key order: it can deadlock"

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if not context.in_transaction or not context.transaction:
            return
        new = row_locks(statement)
        if not new:
            return
        def fold(index: RowKeyIndex, earlier: Statement) -> RowKeyIndex:
            for row in row_locks(earlier):
                remember_greatest(index, row)
            return index

        def empty() -> RowKeyIndex:
            return {}

        index: RowKeyIndex = context.transaction_memo(self.id, empty, fold)
        held = dict(index)
        yield from row_order_findings(held, new, statement)


def row_order_findings(held: RowKeyIndex, new: Sequence[RowLock],
                       statement: Statement) -> list[Finding]:
    """The first row of ``new`` (in execution order) locked below the greatest key
    already locked in its table (``held``: see :func:`safeddl.ordering.greatest_keys`):
    at most one finding per statement."""
    seen = dict(held)
    for row in new:
        earlier = first_out_of_order(seen, row)
        if earlier is not None:
            in_batch = any(earlier is other for other in new)
            return [_finding(statement, row, earlier, in_batch)]
        remember_greatest(seen, row)
    return []


def _finding(statement: Statement, row: RowLock, earlier: RowLock, in_batch: bool,
             ) -> Finding:
    same_statement = in_batch
    by = "earlier in this batch" if in_batch else f"by `{first_line(earlier.statement)}`"
    mode = statement.lock_on(row.relation)
    table_mode = mode.mode if mode is not None else LockMode.ROW_EXCLUSIVE
    problem = (
        f"this statement locks the rows of {row.relation} where {row.describe()} after the "
        f"transaction locked those where {earlier.describe()} ({by}): not in ascending key "
        "order. Another transaction that locks the same rows the other way round holds "
        "one and waits for the other: a deadlock, which PostgreSQL ends after "
        "deadlock_timeout by aborting one of them.\n"
        f"Lock: {table_mode.sql_name} on {row.relation}, held until COMMIT, does not "
        "conflict with other writers; each row lock blocks writes of that row (UPDATE, "
        "DELETE, SELECT FOR UPDATE) until COMMIT.")
    if same_statement:
        steps = [f"-- run the batch in key order ({', '.join(row.columns)} ascending):",
                 "for params in safeddl.lock_ordered(batch, key=lambda p: ...): ..."]
    else:
        steps = [f"-- lock {row.describe()} before {earlier.describe()}:",
                 statement_sql(statement),
                 earlier.statement.rstrip().rstrip(";").rstrip() + ";",
                 "-- for a batch in code: safeddl.lock_ordered(rows, key=...)"]
    alternative = "\n".join(steps)
    return Finding(RULE_ID, Severity.WARNING, compose(RULE_ID, problem, None, alternative),
                   alternative, row.relation)


RULE = RowLockOrder()
