"""# identifier-too-long

PostgreSQL keeps at most 63 bytes of an identifier (NAMEDATALEN - 1) and silently
cuts the rest, with a NOTICE that migration runners do not show. The object is
created under the cut name: code and tools that look it up by the full name
(an ORM's autogenerate comparing its metadata with the database, `WHERE indexname
= '...'`, a later migration written by hand) do not find it, and two long names that
share their first 63 bytes collide. Bytes count, not characters: a name with
non-ASCII letters is cut sooner.

**Lock:** none of its own (the statement's locks are reported by the other rules).

## Bad

```sql
CREATE INDEX CONCURRENTLY orders_customer_id_created_at_status_reference_where_not_archived_idx ON orders (customer_id, created_at);
```

## Good

```sql
CREATE INDEX CONCURRENTLY orders_customer_created_status_idx ON orders (customer_id, created_at);
```

## Safe alternative

Choose a name of at most 63 bytes. safeddl proposes the first bytes of the name
followed by a short hash of the whole name, so that two long names stay distinct.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from safeddl.analysis import Statement
from safeddl.rules.base import Context, Finding, Severity, compose
from safeddl.sql.names import case_fold, fold, quote_ident, split_name

MAX_BYTES = 63  # NAMEDATALEN - 1


class IdentifierTooLong:
    id = "identifier-too-long"
    severity = Severity.WARNING
    summary = "a name over 63 bytes is silently truncated by PostgreSQL"

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        seen: set[str] = set()
        for part in _name_parts(statement):
            if part in seen or len(part.encode()) <= MAX_BYTES:
                continue
            seen.add(part)
            cut = truncated(part)
            shorter = shortened(part)
            alternative = _with_name(statement.sql, part, shorter)
            problem = (
                f"the name {quote_ident(part)} is {len(part.encode())} bytes long; "
                f"PostgreSQL keeps {MAX_BYTES} and silently creates or looks up "
                f"{quote_ident(cut)} instead, so code and tools that use the full name "
                "do not find it, and another long name with the same first "
                f"{MAX_BYTES} bytes collides with it."
            )
            yield Finding(self.id, self.severity,
                          compose(self.id, problem, None, alternative), alternative)


def _name_parts(statement: Statement) -> Iterator[str]:
    """Every part of every name the statement's steps carry, as PostgreSQL sees it."""
    for step in statement.steps:
        for written in (step.table, step.column, step.name, step.references,
                        step.using_index, step.parent, step.function):
            if not written or len(written.encode()) <= MAX_BYTES:
                continue  # no part of it can be longer
            for part, quoted in split_name(written):
                yield case_fold(part, quoted)  # before the truncation this rule is about


def truncated(name: str) -> str:
    """What PostgreSQL keeps: the first 63 bytes, not cutting a character in two."""
    return fold(name, quoted=True)


def shortened(name: str) -> str:
    """A distinct name of at most 63 bytes: a prefix and 8 hex digits of a hash."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = name.encode()[:MAX_BYTES - len(digest) - 1].decode(errors="ignore").rstrip("_")
    return f"{head}_{digest}"


def _with_name(sql: str, old: str, new: str) -> str:
    """The statement with the long name replaced (quoted through quote_ident)."""
    text = sql.rstrip().rstrip(";")
    for written in (f'"{old}"', old):
        if written in text:
            return text.replace(written, quote_ident(new)) + ";"
    return f"-- use a name of at most {MAX_BYTES} bytes, e.g. {quote_ident(new)}"


RULE = IdentifierTooLong()
