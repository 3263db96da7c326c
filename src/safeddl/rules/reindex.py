"""# reindex

`REINDEX` without `CONCURRENTLY` rebuilds the index while holding a SHARE lock on
the table, so every INSERT, UPDATE and DELETE waits for the whole rebuild. It also
takes ACCESS EXCLUSIVE on the index itself, and since the planner locks every index
of a table it plans a query for, nearly every read of the table waits too (except
prepared statements with a cached plan). `REINDEX TABLE`, `SCHEMA` and `DATABASE` do
that for every index in turn.

**Lock:** SHARE on the table (blocks writes) and ACCESS EXCLUSIVE on the index (blocks
the reads that plan with it) for a full scan of the table, per index.

## Bad

```sql
REINDEX INDEX orders_status_idx;
```

## Good

```sql
REINDEX INDEX CONCURRENTLY orders_status_idx;
```

## Safe alternative

`REINDEX ... CONCURRENTLY` (PostgreSQL 12 and later) builds a new copy of the index
under SHARE UPDATE EXCLUSIVE, which lets reads and writes go on, and swaps it in. It
cannot run inside a transaction block, and it leaves an `_ccnew` INVALID index behind
if it fails: drop that with `DROP INDEX CONCURRENTLY` before trying again.

Before PostgreSQL 12 there is no `REINDEX CONCURRENTLY`: build a replacement with
`CREATE INDEX CONCURRENTLY` (same definition, new name, see
`pg_get_indexdef('orders_status_idx'::regclass)`), `DROP INDEX CONCURRENTLY` the old
one and `ALTER INDEX ... RENAME` the new one to the old name. An index that backs a
constraint is swapped with `ALTER TABLE ... DROP CONSTRAINT` / `ADD CONSTRAINT ...
USING INDEX` instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, RelationLock, Statement, Step
from safeddl.locks import Holds, LockMode
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import beside, literal, local, new_name
from safeddl.sql import quote_ident

_HEAD = re.compile(r"(?is)^(\s*REINDEX\s*(?:\([^)]*\)\s*)?(?:INDEX|TABLE|SCHEMA|DATABASE|SYSTEM))\b")


class Reindex:
    id = "reindex"
    severity = Severity.ERROR
    summary = "REINDEX without CONCURRENTLY blocks writes (and reads using the index)"
    kinds: ClassVar[frozenset[Action]] = frozenset({Action.REINDEX})  # finds nothing in others

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if statement.kind is not Action.REINDEX:
            return
        step = statement.steps[0]
        kind = step.target_kind or "index"
        name = step.name or ""
        if step.concurrently and context.version >= 12:
            return
        if kind in ("index", "table"):
            locks = context.existing_locks(statement)
            if not locks:
                return
            lock = locks[0]
        else:
            lock = RelationLock(f"every table of {kind} {name}".strip(), LockMode.SHARE,
                                Holds.SCAN)
        if context.version < 12:
            alternative = _rebuild(step, kind, name, lock)
            problem = (f"REINDEX CONCURRENTLY is not available before PostgreSQL 12 "
                       f"(this is {context.version})"
                       + ("; as written the statement is a syntax error."
                          if step.concurrently else
                          ", and a plain REINDEX blocks writes for the whole rebuild."))
            safe: str | None = None
        elif kind == "system":
            alternative = ("-- system catalogs cannot be reindexed concurrently: run it at a "
                           "quiet time, with lock_timeout set")
            problem = "REINDEX SYSTEM locks the system catalogs that every query reads."
            safe = None
        else:
            safe = _HEAD.sub(r"\1 CONCURRENTLY", statement.sql.rstrip().rstrip(";"),
                             count=1) + ";"
            alternative = safe + "\n-- outside a transaction block"
            problem = ("the index is rebuilt while writes wait, and reads too: the index itself "
                       "is held ACCESS EXCLUSIVE and the planner locks every index of the table.")
        where = f" (the table of index {lock.relation})" if lock.object == "index" else ""
        yield Finding(
            self.id, self.severity,
            compose(self.id, problem + where, lock, alternative),
            safe, lock.relation,
        )


def _rebuild(step: Step, kind: str, name: str, lock: RelationLock) -> str:
    """PostgreSQL 11: a replacement index built concurrently, then swapped in."""
    if kind == "index" and name:
        fresh = new_name(local(name), "new")
        table = "<its table>" if lock.object == "index" else lock.relation
        return "\n".join([
            f"-- same definition as: SELECT pg_get_indexdef({literal(name)}::regclass);",
            f"CREATE INDEX CONCURRENTLY {fresh} ON {table} (<the same columns>);",
            f"DROP INDEX CONCURRENTLY {name};",
            f"ALTER INDEX {beside(name, fresh)} RENAME TO {quote_ident(local(name))};",
        ])
    if kind == "table" and name:
        listing = (f"SELECT indexrelid::regclass, pg_get_indexdef(indexrelid) FROM pg_index "
                   f"WHERE indrelid = {literal(name)}::regclass;")
    else:
        listing = f"-- the indexes of {kind} {name}".rstrip()
    return "\n".join([
        f"-- for each index listed by: {listing}",
        (f"CREATE INDEX CONCURRENTLY <index>_new ON {name if kind == 'table' else '<table>'}"
        " (<the same columns>);"),
        "DROP INDEX CONCURRENTLY <index>;",
        "ALTER INDEX <index>_new RENAME TO <index>;",
    ])


RULE = Reindex()
