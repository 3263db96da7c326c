"""What the rule modules share: finding a statement's lock on a relation that existed
before the script, and writing identifiers into the safe alternatives.

Names the user wrote are reused as written. Names a rule invents (a constraint, an
index, a sequence) are built from folded local names and go through
:func:`safeddl.sql.quote_ident`, never raw.
"""

from __future__ import annotations

import re

from safeddl.analysis import RelationLock, Statement
from safeddl.locks import Holds, LockMode
from safeddl.rules.base import Context
from safeddl.sql import local_name, quote_ident, schema_of

NAME_LIMIT = 63  # PostgreSQL's NAMEDATALEN - 1, in bytes
BATCH = 10000
HOLD_ORDER = [Holds.BRIEF, Holds.SCAN, Holds.REWRITE]


def existing_lock(statement: Statement, context: Context, relation: str | None,
                  ) -> RelationLock | None:
    """The statement's lock on ``relation`` when that relation existed before the script."""
    if relation is None:
        return None
    key = context.catalog.key(relation)
    for lock in context.existing_locks(statement):
        if context.catalog.key(lock.relation) == key:
            return lock
    return None


def display(context: Context, key: str) -> str:
    """A qualified catalog key the way a user would write it (``public.`` dropped)."""
    schema, _, name = key.partition(".")
    path = context.catalog.search_path
    if schema == (path[0] if path else "public"):
        return quote_ident(name)
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def same_relation(context: Context, a: str, b: str) -> bool:
    return context.catalog.key(a) == context.catalog.key(b)


def at_least(lock: RelationLock, mode: LockMode) -> bool:
    return lock.mode >= mode


def longer(holds: Holds, than: Holds) -> bool:
    return HOLD_ORDER.index(holds) > HOLD_ORDER.index(than)


def new_name(*parts: str) -> str:
    """An invented identifier from folded parts, e.g. ``("Orders", "CustomerId",
    "not_null")`` -> ``"Orders_CustomerId_not_null"``: cut to 63 bytes, then quoted."""
    name = "_".join(p for p in parts if p)
    raw = name.encode("utf-8")[:NAME_LIMIT]
    return quote_ident(raw.decode("utf-8", errors="ignore"))


def local(written: str) -> str:
    """The folded last part of a written name: ``app."Orders"`` -> ``Orders``."""
    return local_name(written)


def beside(table: str, quoted_name: str) -> str:
    """``quoted_name`` in the schema the table was written with (``app.x`` for
    ``app."Orders"``), for objects such as sequences, tables and indexes."""
    schema = schema_of(table)
    return f"{schema}.{quoted_name}" if schema else quoted_name


def literal(text: str) -> str:
    """An SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def first_group(text: str) -> tuple[str, str, str] | None:
    """``before``, ``(group)``, ``after`` around the first parenthesized group of
    ``text`` (quotes and nesting respected), or None."""
    depth = 0
    start = -1
    quote: str | None = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
            continue
        if ch in ("'", '"'):
            quote = ch
        elif ch == "(":
            if depth == 0:
                start = i
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
            if depth == 0:
                return text[:start], text[start : i + 1], text[i + 1 :]
    return None


def split_commas(text: str) -> list[str]:
    """Top-level comma separated items of ``text`` (quotes and nesting respected)."""
    items: list[str] = []
    depth = 0
    quote: str | None = None
    current: list[str] = []
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in ("'", '"'):
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if "".join(current).strip():
        items.append("".join(current).strip())
    return items


def group_columns(definition: str | None) -> list[str]:
    """Column names as written in the first group: ``FOREIGN KEY ("A", b) ...`` ->
    ``['"A"', 'b']`` (items that are not plain names are left out)."""
    if not definition:
        return []
    found = first_group(definition)
    if found is None:
        return []
    names = []
    for item in split_commas(found[1][1:-1]):
        if re.fullmatch(r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)', item):
            names.append(item)
    return names


def after_table(sql: str, table: str) -> str | None:
    """The text of an ``ALTER TABLE [IF EXISTS] [ONLY] <table>`` statement after the
    table name (its sub-commands), or None when the head is not found as written."""
    pattern = (r"(?is)^\s*ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?"
               + re.escape(table) + r"(?:\s*\*)?\s+(.*?)\s*;?\s*$")
    match = re.match(pattern, sql)
    return match.group(1) if match else None


_PLACEHOLDER = re.compile(r"<[a-z][a-z0-9 ,.()]*>")


def runnable(sql: str | None) -> str | None:
    """``sql`` for ``Finding.safe_alternative`` when it can run as written: None when a
    statement in it (outside ``--`` comments) holds a ``<placeholder>`` for something
    safeddl cannot know, such as a partition key or a column type."""
    if sql is None:
        return None
    for line in sql.splitlines():
        code = line.split("--", 1)[0]
        if _PLACEHOLDER.search(code):
            return None
    return sql


def first_line(sql: str, limit: int = 80) -> str:
    """A short form of a statement for messages."""
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def statement_sql(statement: Statement) -> str:
    """The statement as written, with its ``;``."""
    return statement.sql.rstrip().rstrip(";").rstrip() + ";"


def column_def(column: str, type_sql: str | None, default_sql: str | None = None,
               not_null: bool = False) -> str:
    """``c type [DEFAULT d] [NOT NULL]`` from a Step's pieces, as written."""
    out = f"{column} {type_sql or '<type>'}"
    if default_sql:
        out += f" DEFAULT {default_sql}"
    if not_null:
        out += " NOT NULL"
    return out


def batched_update(table: str, assignment: str, pending: str) -> str:
    """One batch of a backfill; run it again, each time in its own transaction, until
    it updates no row."""
    return (f"UPDATE {table} SET {assignment} WHERE ctid = ANY (ARRAY("
            f"SELECT ctid FROM {table} WHERE {pending} LIMIT {BATCH}));")
