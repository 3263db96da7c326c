"""# unparsed-statement

safeddl could not understand this statement (a `DO` block, a procedure call, a form
it does not know, or a syntax error), so it cannot tell which locks it takes or for
how long. The lint reports it as a warning; at runtime the policy decides whether an
unknown statement is refused (fail closed) or let through.

**Lock:** unknown.

## Bad

```sql
DO $$ BEGIN EXECUTE 'ALTER TABLE orders ADD COLUMN flag boolean'; END $$;
```

## Good

```sql
ALTER TABLE orders ADD COLUMN flag boolean;
```

## Safe alternative

Write the statements out as plain SQL so that each can be checked. When that is not
possible, check the locks by hand on a copy of the database (run the statement in a
transaction, read `pg_locks` for your own backend, roll back) and record the result
with `-- safeddl: ignore[unparsed-statement] <what it locks>`.
"""

from __future__ import annotations

from collections.abc import Iterator

from safeddl.analysis import Statement
from safeddl.model import shorten
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import statement_sql

_SHOWN = 2000  # characters of a very long statement shown in the message


class UnparsedStatement:
    id = "unparsed-statement"
    severity = Severity.WARNING
    summary = "safeddl could not understand the statement, so its locks are unknown"

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if statement.understood:
            return
        alternative = "\n".join([
            "-- write it out as plain SQL statements, or check its locks on a copy:",
            "BEGIN;",
            statement_sql(statement) if len(statement.sql) <= _SHOWN
            else f"{shorten(statement.sql, _SHOWN)}  -- (shortened: {len(statement.sql):,} characters)",
            ("SELECT relation::regclass, mode FROM pg_locks "
            "WHERE pid = pg_backend_pid() AND locktype = 'relation';"),
            "ROLLBACK;",
        ])
        yield Finding(
            self.id, self.severity,
            compose(self.id, f"safeddl could not understand this statement "
                    f"({statement.reason or 'no reason given'}), so the locks it takes and "
                    "for how long are unknown.", None, alternative),
            None, None,
        )


RULE = UnparsedStatement()
