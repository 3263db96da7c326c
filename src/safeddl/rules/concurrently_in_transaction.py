"""# concurrently-in-transaction

Some statements cannot run inside a transaction block: `CREATE INDEX CONCURRENTLY`,
`DROP INDEX CONCURRENTLY`, `REINDEX ... CONCURRENTLY`, `DETACH PARTITION ...
CONCURRENTLY`, `VACUUM`, `CREATE DATABASE`, `DROP SUBSCRIPTION` of a subscription with
a replication slot... Inside `BEGIN` ... `COMMIT` (or in a migration tool that wraps
each migration in a transaction) PostgreSQL rejects them with "cannot run inside a
transaction block", and the whole migration fails. A `CALL` or `DO` whose body may
`COMMIT` or `ROLLBACK` fails there too when it reaches one ("invalid transaction
termination").

**Lock:** none is taken: the statement fails before it starts. Outside a transaction
block it takes the lock shown in the message.

## Bad

```sql
BEGIN;
CREATE INDEX CONCURRENTLY orders_note_idx ON orders (note);
COMMIT;
```

## Good

```sql
CREATE INDEX CONCURRENTLY orders_note_idx ON orders (note);
```

## Safe alternative

Run the statement on its own, outside any transaction block: end the transaction
before it (`COMMIT`), or run that migration step in autocommit mode (SQLAlchemy:
`isolation_level="AUTOCOMMIT"`; Alembic: `with op.get_context().autocommit_block():`;
Django: `atomic = False` on the migration).
"""

from __future__ import annotations

from collections.abc import Iterator

from safeddl.analysis import Statement
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.support import first_line, statement_sql


class ConcurrentlyInTransaction:
    id = "concurrently-in-transaction"
    severity = Severity.ERROR
    summary = "a statement that cannot run inside a transaction block is inside one"

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if statement.transactional or not context.in_transaction or not statement.understood:
            return
        lock = statement.strongest
        alternative = "\n".join([
            "COMMIT;  -- end the transaction block first, or run this step in autocommit mode",
            statement_sql(statement),
        ])
        where = f" on {lock.relation}" if lock is not None else ""
        yield Finding(
            self.id, self.severity,
            compose(self.id, f"`{first_line(statement.sql)}` cannot run inside a transaction "
                    "block: PostgreSQL rejects it and the migration fails. Outside one it takes "
                    f"{lock.mode.sql_name if lock else 'no table lock'}{where}.",
                    lock, alternative),
            statement_sql(statement), lock.relation if lock else None,
        )


RULE = ConcurrentlyInTransaction()
