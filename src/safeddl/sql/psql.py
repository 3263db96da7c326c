"""Scripts written for psql: meta-commands (``\\set ON_ERROR_STOP on``, ``\\connect``,
``\\gset``, ``\\i``) and ``COPY ... FROM stdin`` with its data inline, ended by ``\\.``.

psql reads a backslash outside quotes and comments as the start of a meta-command that
runs to the end of the line; the server never sees it. Left in the text, a meta-command
would be glued to the next statement and hide it, and inline COPY data would become
part of the next statement. :func:`split_psql` makes each meta-command its own item and
skips COPY data; the SQL between them is split by :func:`safeddl.sql.split.split_script`.
"""

from __future__ import annotations

import dataclasses
import re

from safeddl.sql.scan import LIMITS, Unterminated, head_of, next_mark
from safeddl.sql.split import RawStatement, split_script
from safeddl.sql.tokens import SqlTokenError, tokenize

_FROM_STDIN = re.compile(r"(?i)\bFROM\s+STDIN\b")
_END_OF_DATA = re.compile(r"(?m)^\\\.[ \t]*\r?$")
_LINE_END = re.compile(r"\r\n|\n|\r")


def split_psql(script: str) -> list[RawStatement]:
    """The statements and meta-commands of a psql script, in order (COPY data left
    out). Never raises."""
    items: list[RawStatement] = []
    chunk = 0  # start of the SQL not yet split
    statement = 0  # start of the current statement
    pos = 0
    while True:
        try:
            at = next_mark(script, pos)
        except Unterminated:
            at = -1  # the rest is SQL; its splitting says what does not end
        if at < 0:
            break
        if script[at] == ";":
            pos = at + 1
            if _copies_from_stdin(script[statement:at]):
                items.extend(_sql(script, chunk, at + 1))
                data_end = _END_OF_DATA.search(script, at + 1)
                pos = chunk = data_end.end() if data_end else len(script)
            statement = pos
            continue
        # a meta-command, to the end of its line
        items.extend(_sql(script, chunk, at))
        end = _LINE_END.search(script, at)
        stop = end.start() if end else len(script)
        text = script[at:stop].rstrip()
        before = script[chunk:at]
        items.append(RawStatement(text, script.count("\n", 0, at) + 1, at,
                                  before if not before.strip() else "",
                                  psql=text.split(None, 1)[0]))
        pos = chunk = statement = stop
    items.extend(_sql(script, chunk, len(script)))
    return items


def _copies_from_stdin(text: str) -> bool:
    """``COPY ... FROM STDIN`` (its first keyword read from tokens, comments skipped)."""
    if _FROM_STDIN.search(text) is None:
        return False
    try:
        tokens = tokenize(head_of(text, LIMITS.head_bytes))
    except SqlTokenError:
        return False
    return bool(tokens) and tokens[0].word == "COPY"


def _sql(script: str, start: int, stop: int) -> list[RawStatement]:
    """The statements of script[start:stop], with lines and offsets in the script."""
    part = script[start:stop]
    if not part.strip():
        return []
    if start == 0:
        return split_script(part)  # lines and offsets are the script's already
    line = script.count("\n", 0, start)
    return [dataclasses.replace(raw, line=raw.line + line, offset=raw.offset + start)
            for raw in split_script(part)]
