"""# lock-order

Two transactions that lock the same tables in opposite orders deadlock: each holds
the lock the other waits for, until PostgreSQL aborts one of them after
`deadlock_timeout`. safeddl keeps one canonical order of tables (the policy's
`lock_order` first, then every other table by schema-qualified name) and reports a
transaction that takes a write-or-stronger lock (ROW EXCLUSIVE and up) on a table
that comes *before* one it already holds such a lock on. A lock upgrade is reported
too: a transaction that holds ROW EXCLUSIVE on a table and then asks for a stronger
mode that conflicts with it (SHARE ROW EXCLUSIVE for a foreign key, ACCESS EXCLUSIVE
for most ALTER TABLE forms) deadlocks with another one doing the same. At runtime the
guard checks every transaction as it runs (lock ledger per connection; warn by
default, refuse when the policy says so, before the statement is sent); lint checks
the statements between `BEGIN` and `COMMIT`.

DML takes ROW EXCLUSIVE, which does not conflict with itself: two updaters deadlock
on the *rows* they both update, and the same order rules that out when rows within
a table are locked in key order too (see `row-lock-order`). For schema changes,
explicit `LOCK TABLE` and upgrades, the table order alone does.

**Lock:** ROW EXCLUSIVE or stronger on two tables, held until COMMIT, taken out of
the canonical order.

## Bad

```sql
BEGIN;
UPDATE orders SET status = 'paid' WHERE id = 42;
UPDATE customers SET email = 'new@example.com' WHERE id = 7;
COMMIT;
```

## Good

```sql
BEGIN;
UPDATE customers SET email = 'new@example.com' WHERE id = 7;
UPDATE orders SET status = 'paid' WHERE id = 42;
COMMIT;
```

## Safe alternative

Take the tables in the canonical order in every transaction that writes more than
one of them (application code and migrations alike). When the body's order cannot
be controlled, declare the tables up front: `with safeddl.transaction(engine,
tables={"customers": "ROW EXCLUSIVE", "orders": "ROW EXCLUSIVE"}) as conn:` takes
them in the canonical order before the body runs; with a self-conflicting mode
(SHARE ROW EXCLUSIVE) it also serializes the writers of those tables, which rules
out row deadlocks between them at the cost of throughput. For an upgrade, take the
strongest mode first (`LOCK TABLE ... IN SHARE ROW EXCLUSIVE MODE`) or run the
stronger statement in its own transaction.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence

from safeddl.analysis import RelationLock, Statement
from safeddl.locks import LockMode
from safeddl.ordering import DEFAULT_ORDER, WRITE, HeldLock, LockOrder, already_holds, relation_key
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import first_line, statement_sql

RULE_ID = "lock-order"


class LockOrderRule:
    id = RULE_ID
    severity = Severity.WARNING
    summary = ("a transaction takes write locks out of the canonical table order, or "
               "upgrades a lock: it can deadlock")

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if not context.in_transaction or not context.transaction:
            return
        def fold(held: list[HeldLock], earlier: Statement) -> list[HeldLock]:
            for lock in context.existing_locks(earlier):
                key = relation_key(lock.relation)
                if lock.mode > lock.mode.ACCESS_SHARE and not already_holds(held, key,
                                                                             lock.mode):
                    held.append(HeldLock(lock.relation, key, lock.mode, earlier.sql))
            return held

        held = context.transaction_memo(self.id, list, fold)
        yield from order_findings(held, statement, DEFAULT_ORDER,
                                  context.existing_locks(statement))


def order_findings(held: Sequence[HeldLock], statement: Statement, order: LockOrder,
                   locks: Sequence[RelationLock] | None = None,
                   skip: Collection[str] = ()) -> list[Finding]:
    """What the statement's locks (default: all of them) do to the order of the locks
    the transaction holds: out of canonical order, or an upgrade. ``skip``: relation
    keys nobody else can see (created in this transaction)."""
    findings = []
    for lock in statement.locks if locks is None else locks:
        if lock.mode < WRITE:
            continue
        key = relation_key(lock.relation)
        if key in skip or already_holds(held, key, lock.mode):
            continue
        same = [h for h in held if h.key == key and h.mode >= WRITE]
        if same:
            findings.append(_upgrade(statement, lock, max(same, key=lambda h: h.mode)))
            continue
        later = [h for h in held if h.mode >= WRITE and h.key != key
                 and order.before(key, h.key)]
        if later:
            findings.append(_out_of_order(statement, lock, later[0], order, held))
    return findings


def _out_of_order(statement: Statement, lock: RelationLock, held: HeldLock,
                  order: LockOrder, everything: Sequence[HeldLock]) -> Finding:
    problem = (
        f"this statement takes {lock.mode.sql_name} on {lock.relation}, which comes before "
        f"{held.relation} in the canonical lock order ({order.describe()}), while the "
        f"transaction already holds {held.mode.sql_name} on {held.relation}, taken by "
        f"`{first_line(held.statement)}`. A transaction that takes them in the canonical "
        f"order can hold {lock.relation} and wait for {held.relation} while this one holds "
        f"{held.relation} and waits for {lock.relation}: a deadlock, which PostgreSQL ends "
        "after deadlock_timeout by aborting one of them.\n"
        f"Lock: {lock.mode.sql_name} on {lock.relation} ({_what_it_blocks(lock.mode)}) "
        f"and {held.mode.sql_name} on {held.relation}, both held until COMMIT.")
    tables: dict[str, str] = {}
    for h in everything:
        if h.mode >= WRITE:
            tables.setdefault(h.relation, h.mode.sql_name)
    tables.setdefault(lock.relation, lock.mode.sql_name)
    declared = {name: tables[name] for name in order.sorted(tables)}
    alternative = "\n".join([
        f"-- take {lock.relation} before {held.relation}, in every transaction that writes both:",
        statement_sql(statement),
        _as_statement(held.statement),
        "-- or declare the tables up front, in the canonical order:",
        f"-- with safeddl.transaction(engine, tables={json.dumps(declared)}) as conn: ...",
    ])
    return Finding(RULE_ID, Severity.WARNING, compose(RULE_ID, problem, None, alternative),
                   alternative, lock.relation)


def _upgrade(statement: Statement, lock: RelationLock, held: HeldLock) -> Finding:
    problem = (
        f"this statement asks for {lock.mode.sql_name} on {lock.relation}, which the "
        f"transaction already holds in {held.mode.sql_name} mode, taken by "
        f"`{first_line(held.statement)}`: a lock upgrade. Another transaction holding "
        f"{held.mode.sql_name} on {lock.relation} makes this one wait, and if it then asks "
        "for a conflicting lock too, each waits for the other: a deadlock.\n"
        f"Lock: {lock.mode.sql_name} on {lock.relation} ({_what_it_blocks(lock.mode)}), "
        "held until COMMIT.")
    alternative = "\n".join([
        "-- take the strongest mode first, at the start of the transaction:",
        f"LOCK TABLE {lock.relation} IN {lock.mode.sql_name} MODE;",
        _as_statement(held.statement),
        statement_sql(statement),
        "-- or run this statement in its own transaction",
    ])
    return Finding(RULE_ID, Severity.WARNING, compose(RULE_ID, problem, None, alternative),
                   alternative, lock.relation)


def _what_it_blocks(mode: LockMode) -> str:
    if mode.blocks.writes or mode.blocks.reads:
        return f"it blocks {mode.blocks.describe()}"
    if mode is LockMode.ROW_EXCLUSIVE:
        return ("it blocks schema changes that need SHARE or stronger (CREATE INDEX, LOCK "
                "TABLE, most ALTER TABLE forms), and the rows it writes block other writers "
                "of those rows")
    return f"it blocks {mode.blocks.describe()}"


def _as_statement(sql: str) -> str:
    return sql.rstrip().rstrip(";").rstrip() + ";"


RULE = LockOrderRule()
