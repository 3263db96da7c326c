"""# drop-cascade

`DROP TYPE | DOMAIN | SCHEMA | EXTENSION | FUNCTION | SERVER | COLLATION ... CASCADE`
(and every other `DROP` of an object that is not a table), `DROP OWNED` and
`REASSIGN OWNED` also drop or change what depends on the object, or what a role
owns: columns of a dropped type, defaults and indexes that use a dropped function,
the tables of a schema, the foreign tables of a server. PostgreSQL takes ACCESS
EXCLUSIVE on every table involved, and which tables those are is written nowhere
in the statement: the lock set is unknown, and strong. The tables safeddl knows
from the schema (columns of the type, relations of the schema, triggers of the
function) are named; others may be locked too.

**Lock:** ACCESS EXCLUSIVE (blocks all reads and writes) on each table that depends on
the object, for a moment (catalog change only); which tables is not known.

## Bad

```sql
DROP TYPE order_status CASCADE;
```

## Good

```sql
ALTER TABLE orders DROP COLUMN status;
DROP TYPE order_status;
```

## Safe alternative

Drop or change the dependent objects one by one, each with its own lock named in
the statement (`ALTER TABLE ... DROP COLUMN`, `DROP INDEX CONCURRENTLY`, `DROP
VIEW`), then drop the object without `CASCADE`: if anything still depends on it,
the drop fails instead of taking locks nobody planned. To see what would go, run
the statement in a transaction on a copy, read `pg_locks`, and roll back. To
accept the risk, record what it locks with `-- safeddl: ignore[drop-cascade] <what>`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from safeddl.analysis import Action, Statement
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import statement_sql

_KINDS = frozenset({Action.DROP_CASCADE, Action.DROP_FUNCTION})


class DropCascade:
    id = "drop-cascade"
    severity = Severity.ERROR
    summary = ("DROP ... CASCADE of a type, schema, function...: ACCESS EXCLUSIVE on "
               "tables the statement does not name")
    kinds: ClassVar[frozenset[Action]] = _KINDS  # finds nothing in other statements

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if statement.kind not in _KINDS or statement.unknown_locks is None:
            return
        known = [lock for lock in context.existing_locks(statement)]
        also = (" Known to be locked: " + ", ".join(lock.relation for lock in known) + "."
                if known else "")
        alternative = "\n".join([
            "-- drop or change what depends on it one statement at a time (each names",
            "-- its table), then drop it without CASCADE; or see what it locks on a copy:",
            "BEGIN;",
            statement_sql(statement),
            ("SELECT relation::regclass, mode FROM pg_locks "
             "WHERE pid = pg_backend_pid() AND locktype = 'relation';"),
            "ROLLBACK;",
        ])
        yield Finding(
            self.id, self.severity,
            compose(self.id, statement.unknown_locks[:1].upper() + statement.unknown_locks[1:]
                    + "." + also, None, alternative),
            None, known[0].relation if known else None,
        )


RULE = DropCascade()
