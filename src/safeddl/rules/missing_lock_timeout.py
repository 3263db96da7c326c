"""# missing-lock-timeout

A statement that needs a lock conflicting with reads or writes (SHARE or stronger)
on a busy table waits in the lock queue behind every running query on it, and every
query that arrives meanwhile waits behind *it*: a migration stuck behind one slow
report stalls the whole application, however quick the change itself is.
`lock_timeout` turns that wait into a fast failure that can be retried. Reported
once per script, on the first statement that needs it.

**Lock:** SHARE or stronger (blocks writes, or reads and writes) while waiting in
the queue, without a bound.

## Bad

```sql
ALTER TABLE orders ADD COLUMN note_internal text;
```

## Good

```sql
SET lock_timeout = '5s';
ALTER TABLE orders ADD COLUMN note_internal text;
```

## Safe alternative

Start every migration with `SET lock_timeout = '...'` (or `SET LOCAL lock_timeout`
inside its transaction): a few seconds at most. When it expires the statement fails
with "canceling statement due to lock timeout"; retry it with backoff. safeddl's
runtime guard does this by itself (`SET LOCAL lock_timeout` before each statement,
retry on timeout), so this rule concerns scripts run by other tools.
"""

from __future__ import annotations

from collections.abc import Iterator

from safeddl.analysis import RelationLock, Statement
from safeddl.locks import LockMode
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.rules.incremental import Memo, script
from safeddl.rules.support import statement_sql


class MissingLockTimeout:
    id = "missing-lock-timeout"
    severity = Severity.ERROR
    summary = "a strong lock is requested with no lock_timeout set: it can stall every query"

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if context.runtime or context.lock_timeout_set:
            return
        lock = _strong_lock(statement, context)
        if lock is None:
            return
        if _strong_earlier(context):
            return  # once per script
        alternative = "\n".join(["SET lock_timeout = '5s';", statement_sql(statement)])
        yield Finding(
            self.id, self.severity,
            compose(self.id, f"no lock_timeout is set: waiting for {lock.mode.sql_name} on "
                    f"{lock.relation}, this statement queues behind running queries, and every "
                    f"query on {lock.relation} queues behind it, without a bound. Set it once "
                    "at the top of the script; retry on lock timeout.", lock, alternative),
            alternative, lock.relation,
        )


def _see(seen: list[bool], earlier: Statement, context: Context) -> None:
    if not seen[0] and _strong_lock(earlier, context) is not None:
        seen[0] = True


def _strong_earlier(context: Context) -> bool:
    """Did an earlier statement of the script take a strong lock on an existing table?"""
    return _STRONG.state(context)[0]


def _strong_lock(statement: Statement, context: Context) -> RelationLock | None:
    for lock in context.existing_locks(statement):
        if lock.mode >= LockMode.SHARE:
            return lock
    return None


# [whether an earlier statement of the script took a strong lock], each read once
_STRONG: Memo[list[bool]] = Memo(lambda: [False], _see, over=script)

RULE = MissingLockTimeout()
