"""Identifiers: reading them as PostgreSQL does, and quoting them for generated SQL.

Every identifier that safeddl puts into SQL it writes goes through
:func:`quote_ident`; nothing is concatenated raw.
"""

from __future__ import annotations

import re
from functools import lru_cache

from safeddl.sql.tokens import NOT_NAMES

_SAFE_IDENT = re.compile(r"^[a-z_][a-z0-9_$]*$")

# Reserved words need quoting as identifiers.
_RESERVED = NOT_NAMES | {"system_user"}


def quote_ident(name: str) -> str:
    """Quote one identifier (an unquoted, case-folded name) only when it needs it."""
    if not name:
        raise ValueError("an identifier cannot be empty")
    if _SAFE_IDENT.match(name) and name not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


_NO_QUOTE_NOR_SPACE = re.compile(r'[^"\s]*')


def split_name(written: str) -> list[tuple[str, bool]]:
    """``app."Orders"`` -> ``[("app", False), ("Orders", True)]`` (parts as written)."""
    if _NO_QUOTE_NOR_SPACE.fullmatch(written):  # the common case, read in C
        return [(part, False) for part in written.split(".") if part]
    parts: list[tuple[str, bool]] = []
    i, n = 0, len(written)
    while i < n:
        ch = written[i]
        if ch.isspace() or ch == ".":
            i += 1
            continue
        if ch == '"':
            j = i + 1
            buf = []
            while j < n:
                if written[j] == '"':
                    if j + 1 < n and written[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(written[j])
                j += 1
            parts.append(("".join(buf), True))
            i = j + 1
        else:
            j = i
            while j < n and written[j] != "." and not written[j].isspace():
                j += 1
            parts.append((written[i:j], False))
            i = j
    return parts


_IDENT_PART = r'(?:[^\W\d][\w$]*|"(?:[^"]|"")+")'
_RELATION_NAME = re.compile(rf"\s*{_IDENT_PART}(?:\s*\.\s*{_IDENT_PART}){{0,2}}\s*")


def split_relation_name(written: str) -> list[tuple[str, bool]] | None:
    """``app."Orders"`` -> ``[("app", False), ("Orders", True)]``, or None when the text
    is not one (at most database.schema.name) relation name as SQL would read it: a
    space inside an unquoted name, a stray quote or an empty part are not names (where
    :func:`split_name` would read ``victim x`` as ``victim.x``)."""
    if not isinstance(written, str) or not _RELATION_NAME.fullmatch(written):
        return None
    return split_name(written)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


#: PostgreSQL's NAMEDATALEN - 1: identifiers are cut to this many bytes.
NAME_BYTES = 63


def case_fold(part: str, quoted: bool) -> str:
    """An identifier's case as PostgreSQL reads it, before any truncation: unquoted ones
    lower-cased, ASCII letters only (in UTF8 unquoted ``ÄRGER`` is ``Ärger``)."""
    return part if quoted else part.translate(_ASCII_LOWER)


def fold(part: str, quoted: bool) -> str:
    """An identifier as PostgreSQL stores it: :func:`case_fold`, then cut to 63 bytes
    without splitting a multi-byte character (``truncate_identifier``)."""
    folded = case_fold(part, quoted)
    raw = folded.encode()
    if len(raw) > NAME_BYTES:
        folded = raw[:NAME_BYTES].decode("utf-8", errors="ignore")
    return folded


@lru_cache(maxsize=65536)
def qualified_name(written: str, default_schema: str = "public") -> str:
    """The relation a written name denotes: ``Foo`` -> ``public.foo``.

    ``app."Orders"`` -> ``app.Orders``. Names are not quoted in the result; it is a
    key for comparing relations, not SQL.
    """
    parts = [fold(p, q) for p, q in split_name(written)]
    if not parts:
        raise ValueError(f"not a name: {written!r}")
    if len(parts) == 1:
        return f"{default_schema}.{parts[0]}"
    return f"{parts[-2]}.{parts[-1]}"


def local_name(written: str) -> str:
    """The last part of a written name, case folded: ``app."Orders"`` -> ``Orders``."""
    part, quoted = split_name(written)[-1]
    return fold(part, quoted)


def schema_of(written: str) -> str | None:
    """The schema part as written, or None: ``app.t`` -> ``app``."""
    parts = split_name(written)
    if len(parts) < 2:
        return None
    part, quoted = parts[-2]
    return '"' + part.replace('"', '""') + '"' if quoted else part


def schema_in_key(key: str, written: str) -> str:
    """The schema part of a catalog key, given the relation's name as written (a key
    ``schema.name`` cannot be split at a dot: ``"my.sch".t`` has the key ``my.sch.t``)."""
    return key[: len(key) - len(local_name(written)) - 1]


def pg_object_name(name1: str, name2: str | None, label: str) -> str:
    """PostgreSQL's ``makeObjectName`` (what ChooseConstraintName / ChooseRelationName
    build on): ``name1_name2_label`` cut to 63 bytes by shortening the longer of name1 /
    name2 first, never inside a multi-byte character (``pg_mbcliplen``)."""
    overhead = (len(label.encode()) + 1 if label else 0) + (1 if name2 else 0)
    available = NAME_BYTES - overhead
    first, second = name1.encode(), (name2 or "").encode()
    keep1, keep2 = len(first), len(second)
    while keep1 + keep2 > available:
        if keep1 > keep2:
            keep1 -= 1
        else:
            keep2 -= 1
    parts = [first[:keep1].decode(errors="ignore")]
    if name2:
        parts.append(second[:keep2].decode(errors="ignore"))
    if label:
        parts.append(label)
    return "_".join(parts)


def name_addition(columns: list[str]) -> str:
    """Column names joined by ``_``, as PostgreSQL builds them for a constraint or
    index name (it stops once 64 bytes are reached)."""
    out = ""
    for column in columns:
        out = f"{out}_{column}" if out else column
        if len(out.encode()) >= NAME_BYTES + 1:
            break
    return out
