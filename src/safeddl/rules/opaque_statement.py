"""# opaque-statement

A valid statement whose locks depend on SQL that is not in the text: `CALL p()` runs
the statements of the procedure's body (safeddl reads the body, and judges the CALL by
the rules of its statements, when it is LANGUAGE sql or static SQL in plpgsql and there
is one procedure of that name: created earlier in the same script for `lint`, read from
the database by the runtime guard); `EXECUTE q` runs a statement prepared
elsewhere (when `PREPARE q AS ...` comes earlier in the same script, safeddl reads
it and this rule stays quiet); `CREATE SUBSCRIPTION` (with `connect`, the default) and
`ALTER SUBSCRIPTION ... REFRESH PUBLICATION` take ACCESS SHARE on each local table the
publisher lists. safeddl reads the statement but cannot know which tables it locks,
nor how strongly. The lint reports it as an error; at runtime the policy's action for
this rule decides (refuse by default: unknown means refuse).

**Lock:** unknown: whatever the procedure's or prepared statement's SQL takes.

## Bad

```sql
CALL archive_old_orders();
```

## Good

```sql
DELETE FROM orders WHERE created_at < now() - interval '2 years';
```

## Safe alternative

Write the procedure's statements out in the migration, so that each one is checked;
or check its locks on a copy of the database (run it in a transaction, read
`pg_locks` for your own backend, roll back) and record the result with
`-- safeddl: ignore[opaque-statement] <what it locks>` (at runtime:
`safeddl.allow("opaque-statement", reason=...)`, or `actions = { opaque-statement =
"warn" }` for procedures you trust).
"""

from __future__ import annotations

from collections.abc import Iterator

from safeddl.analysis import Action, Statement
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import statement_sql


class OpaqueStatement:
    id = "opaque-statement"
    severity = Severity.ERROR
    summary = "CALL, EXECUTE, subscriptions: locks taken by SQL that is not in the text"

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if statement.unknown_locks is None or statement.kind in (Action.DROP_CASCADE,
                                                                 Action.DROP_FUNCTION):
            return
        alternative = "\n".join([
            "-- write out the statements it runs, or check its locks on a copy:",
            "BEGIN;",
            statement_sql(statement),
            ("SELECT relation::regclass, mode FROM pg_locks "
             "WHERE pid = pg_backend_pid() AND locktype = 'relation';"),
            "ROLLBACK;",
        ])
        reason = statement.unknown_locks
        yield Finding(
            self.id, self.severity,
            compose(self.id, reason[:1].upper() + reason[1:] + ".", None, alternative),
            None, None,
        )


RULE = OpaqueStatement()
