"""Splitting a script into statements: comments, dollar quoting and ';' in strings."""

from __future__ import annotations

from dataclasses import dataclass, field

from safeddl.sql.scan import LIMITS, Unterminated, statement_ends
from safeddl.sql.tokens import SqlTokenError, Token, rebased, tokenize, tokenize_checked


@dataclass(frozen=True)
class RawStatement:
    """One statement's text as written (no trailing ';') and where it starts."""

    text: str
    line: int  # 1-based line of its first token
    offset: int  # offset of its first character in the script
    preamble: str  # the text between the previous statement and this one (comments)
    error: str | None = None  # this part of the script could not be tokenized
    psql: str | None = None  # a psql meta-command (``\\set``...): its command word
    # The statement's tokens, as ``tokenize(text)`` gives them, when the split had them
    # already (reading then need not tokenize it again); None: tokenize ``text``.
    tokens: list[Token] | None = field(default=None, compare=False, repr=False)

    @property
    def comments(self) -> tuple[str, ...]:
        """The ``--`` comment lines just before the statement, without the ``--``."""
        return tuple(line.strip()[2:].strip() for line in self.preamble.splitlines()
                     if line.strip().startswith("--"))


def split_script(script: str) -> list[RawStatement]:
    """The statements of a script, in order. Never raises.

    When the text cannot be tokenized from some point on (an unterminated quote or
    comment), everything before the last statement boundary that still tokenizes is
    split as usual and the rest comes back as one statement with ``error`` set.
    """
    if len(script) > LIMITS.parse_bytes:
        return _split_large(script)
    try:
        return _split_tokens(script, *tokenize_checked(script))
    except SqlTokenError as exc:
        good = _longest_tokenizable_prefix(script)
        head = _split_tokens(script, tokenize(script[:good])) if good else []
        rest = script[good:]
        text = rest.strip()
        if not text:
            return head
        offset = good + rest.index(text[0])
        try:
            tokenize(text)
            reason = str(exc)
        except SqlTokenError as own:
            reason = str(own)
        tail = RawStatement(text, script.count("\n", 0, offset) + 1, offset,
                            script[good:offset], reason)
        return [*head, tail]


def _split_large(script: str) -> list[RawStatement]:
    """A long script, cut where the first look finds statement ends (linear and cheap,
    where tokenizing costs about a microsecond a byte); short parts are split as usual."""
    try:
        ends = statement_ends(script)
    except Unterminated as exc:
        # The statements before the last end ahead of the open quote are split as
        # usual; the rest (the statement the quote opens in) is one unreadable item.
        ends = statement_ends_before(script, exc.offset)
        start = ends[-1] + 1 if ends else 0
        head = _pieces(script, ends[:-1], stop=ends[-1]) if ends else []
        rest = script[start:]
        text = rest.strip()
        offset = start + rest.index(text[0])
        line = script.count("\n", 0, offset) + 1
        where = exc.offset - offset
        quote_line = text.count("\n", 0, where) + 1
        column = where - (text.rfind("\n", 0, where) + 1) + 1
        reason = (f"{exc.what} starting at line {quote_line}, column {column} of the "
                  "statement does not end")
        return [*head, RawStatement(text, line, offset, script[start:offset], reason)]
    return _pieces(script, ends, stop=len(script))


def statement_ends_before(script: str, stop: int) -> list[int]:
    try:
        return statement_ends(script[:stop])
    except Unterminated:
        return []


def _pieces(script: str, ends: list[int], stop: int) -> list[RawStatement]:
    out: list[RawStatement] = []
    start = scanned = 0
    lines, counted = 0, 0  # newlines before ``start``, counted forward once
    nesting = _Nesting()
    for end in [*ends, stop]:
        seen: tuple[int, list[Token], bool] | None = None  # how script[scanned:end] tokenized
        if end != stop:
            still_open, seen = _still_open(script, scanned, end, nesting)
            if still_open:
                scanned = end + 1  # that ';' is inside parentheses or a BEGIN ATOMIC body
                continue
        nesting.reset()
        whole = scanned == start  # the part is that one piece: its tokens are known
        scanned = end + 1
        lines += script.count("\n", counted, start)
        counted = start
        part = script[start:end]
        if len(part) <= LIMITS.parse_bytes:
            try:
                # tokenized from its first non-blank character: the tokens of a statement
                # at the start of the text need no rebasing
                lead, tokens, exact = (seen if whole and seen is not None
                                       else (_blank(part, 0, len(part)),
                                             *tokenize_checked(part.lstrip(_BLANK))))
                blank, lead_lines = part[:lead], part.count("\n", 0, lead)
                out.extend(RawStatement(raw.text, raw.line + lines + lead_lines,
                                        raw.offset + start + lead, blank + raw.preamble,
                                        raw.error, tokens=raw.tokens)
                           for raw in _split_tokens(part[lead:], tokens, exact))
            except SqlTokenError as exc:
                if part.strip():
                    out.append(RawStatement(part.strip(), lines + 1, start, "", str(exc)))
        elif part.strip():
            lead = len(part) - len(part.lstrip())
            out.append(RawStatement(part.strip(), lines + part.count("\n", 0, lead) + 1,
                                    start + lead, part[:lead]))
        start = end + 1
    return out


_BLANK = " \t\n\r"  # what sqlglot's tokenizer skips between tokens, at least


def _blank(text: str, start: int, stop: int) -> int:
    """How many characters of blank space ``text[start:stop]`` starts with."""
    index = start
    while index < stop and text[index] in _BLANK:
        index += 1
    return index - start


def _still_open(script: str, start: int, stop: int, nesting: _Nesting,
                ) -> tuple[bool, tuple[int, list[Token], bool] | None]:
    """Whether the statement is still open after ``script[start:stop]`` (its next piece
    up to a ``;``), and when it had to tokenize the piece: the length of its leading
    blank space and the ``tokenize_checked`` of the rest (a piece that closes the
    statement on its own is then split without tokenizing it again); a piece too long
    to tokenize, or that does not tokenize, closes it."""
    if stop - start > LIMITS.parse_bytes:
        return False, None
    lead = _blank(script, start, stop)
    try:
        tokens, exact = tokenize_checked(script[start + lead:stop])
    except SqlTokenError:
        return False, None
    nesting.see_all(tokens)
    return nesting.open, (lead, tokens, exact)


class _Nesting:
    """Where a ``;`` does not end the statement, as psql decides it: inside parentheses
    (a rule's ``DO (a; b)``), and inside ``BEGIN ATOMIC ... END`` of a statement that
    starts ``CREATE [OR REPLACE] FUNCTION | PROCEDURE`` (``CASE`` also ends with
    ``END``). Unlike psql, only ``BEGIN`` followed by ``ATOMIC`` opens a body, so that a
    function named ``begin`` cannot hide the statements after it. Either way the text
    kept together is one statement for the server too, or a syntax error that runs
    nothing (a ``;`` inside parentheses never ends a statement in PostgreSQL's grammar)."""

    __slots__ = ("after_begin", "begin", "head", "paren", "words")

    def __init__(self) -> None:
        self.paren = 0
        self.begin = 0
        self.words = 0  # words of the statement so far
        self.head = ""  # first letters of its leading CREATE / OR / REPLACE / FUNCTION...
        self.after_begin = False  # the previous word was BEGIN (of a routine, at depth 0)

    @property
    def open(self) -> bool:
        return self.paren > 0 or self.begin > 0

    def see(self, tok: Token) -> None:
        kind = tok.kind
        if kind == "L_PAREN":
            self.paren += 1
        elif kind == "R_PAREN":
            self.paren = max(self.paren - 1, 0)
        elif kind != "IDENTIFIER" and tok.is_name:
            word = tok.word
            if self.words < 4:
                self.head += word[0] if word in _ROUTINE_HEAD else "-"
            self.words += 1
            routine = self.paren == 0 and self.head.startswith(_ROUTINE_STARTS)
            if routine and self.after_begin and word == "ATOMIC":
                self.begin += 1
            elif routine and self.begin > 0 and word == "CASE":
                self.begin += 1
            elif routine and self.begin > 0 and word == "END":
                self.begin -= 1
            self.after_begin = routine and word == "BEGIN"
        else:
            self.after_begin = False

    def see_all(self, tokens: list[Token]) -> None:
        """``see`` each token in turn. Once the statement's first words show it is not a
        routine's (the head can no longer be CREATE [OR REPLACE] FUNCTION | PROCEDURE),
        only parentheses change what ``open`` says: the rest is counted alone."""
        see = self.see
        index = 0
        for tok in tokens:
            if not _may_be_routine(self.head):
                break
            see(tok)
            index += 1
        else:
            return
        paren = self.paren
        for tok in tokens[index:] if index else tokens:
            kind = tok.kind
            if kind == "L_PAREN":
                paren += 1
            elif kind == "R_PAREN" and paren:
                paren -= 1
        self.paren = paren
        self.words = max(self.words, 4)  # only ``words < 4`` is ever asked
        self.after_begin = False  # what any token sets it to outside a routine

    def reset(self) -> None:
        self.paren = self.begin = self.words = 0
        self.head = ""
        self.after_begin = False


_ROUTINE_HEAD = frozenset({"CREATE", "OR", "REPLACE", "FUNCTION", "PROCEDURE"})
_ROUTINE_STARTS = ("CF", "CP", "CORF", "CORP")
_ROUTINE_PREFIXES = frozenset({"", "C", "CO", "COR"})


def _may_be_routine(head: str) -> bool:
    """Whether a statement whose first words are ``head`` (as ``_Nesting`` keeps them)
    is or may still become a routine's ``CREATE [OR REPLACE] FUNCTION | PROCEDURE``."""
    return head in _ROUTINE_PREFIXES or head.startswith(_ROUTINE_STARTS)


def _split_tokens(script: str, tokens: list[Token], exact: bool = False,
                  ) -> list[RawStatement]:
    """``exact``: the tokens are those each statement would have on its own (then each
    statement keeps its tokens)."""
    for tok in tokens:
        if tok.kind == "SEMICOLON":
            break
    else:  # no ';' at all: one statement, or none
        if not tokens:
            return []
        line = 1 + script.count("\n", 0, tokens[0].start)
        return [_statement(script, tokens, 0, line, exact)]
    statements: list[RawStatement] = []
    previous_end = 0
    group: list[Token] = []
    counted_to, line = 0, 1  # lines are counted forward once: linear in the script
    nesting = _Nesting()
    for tok in tokens:
        if tok.kind != "SEMICOLON":
            group.append(tok)
            nesting.see(tok)
            continue
        if nesting.open:
            group.append(tok)
            continue
        nesting.reset()
        if group:
            line += script.count("\n", counted_to, group[0].start)
            counted_to = group[0].start
            statements.append(_statement(script, group, previous_end, line, exact))
            group = []
        previous_end = tok.end
    if group:
        line += script.count("\n", counted_to, group[0].start)
        statements.append(_statement(script, group, previous_end, line, exact))
    return statements


def _statement(script: str, group: list[Token], previous_end: int, line: int,
               exact: bool) -> RawStatement:
    first, last = group[0], group[-1]
    return RawStatement(
        text=script[first.start : last.end],
        line=line,
        offset=first.start,
        preamble=script[previous_end : first.start],
        # (a first token over several lines would shift the lines of the others)
        tokens=rebased(group) if exact and "\n" not in first.text else None,
    )


def _longest_tokenizable_prefix(script: str) -> int:
    """The end (just past a ';') of the longest prefix that tokenizes; 0 if none.

    A binary search over the positions of ';': a prefix that ends inside an open
    quote does not tokenize, and neither does any longer prefix ending in it.
    """
    cuts = [i + 1 for i, ch in enumerate(script) if ch == ";"]
    low, high, best = 0, len(cuts) - 1, 0
    while low <= high:
        middle = (low + high) // 2
        try:
            tokenize(script[: cuts[middle]])
        except SqlTokenError:
            high = middle - 1
        else:
            best = cuts[middle]
            low = middle + 1
    return best
