"""Splitting a script into statements: comments, dollar quoting and ';' in strings."""

from __future__ import annotations

from dataclasses import dataclass

from safeddl.sql.tokens import SqlTokenError, Token, tokenize


@dataclass(frozen=True)
class RawStatement:
    """One statement's text as written (no trailing ';') and where it starts."""

    text: str
    line: int  # 1-based line of its first token
    offset: int  # offset of its first character in the script
    preamble: str  # the text between the previous statement and this one (comments)
    error: str | None = None  # the script could not be tokenized from here on


def split_script(script: str) -> list[RawStatement]:
    """The statements of a script, in order. Never raises."""
    try:
        tokens = tokenize(script)
    except SqlTokenError as exc:
        text = script.strip()
        if not text:
            return []
        offset = script.index(text[0])
        return [RawStatement(text, script.count("\n", 0, offset) + 1, offset, "", str(exc))]
    statements: list[RawStatement] = []
    group: list[Token] = []
    previous_end = 0
    for tok in tokens:
        if tok.kind == "SEMICOLON":
            if group:
                statements.append(_statement(script, group, previous_end))
                group = []
            previous_end = tok.end
            continue
        group.append(tok)
    if group:
        statements.append(_statement(script, group, previous_end))
    return statements


def _statement(script: str, group: list[Token], previous_end: int) -> RawStatement:
    first, last = group[0], group[-1]
    start = first.start
    # A comment attached to the first token may sit before it; keep it in the preamble.
    return RawStatement(
        text=script[start : last.end],
        line=script.count("\n", 0, start) + 1,
        offset=start,
        preamble=script[previous_end:start],
    )
