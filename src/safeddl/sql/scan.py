"""A first look at SQL text, linear in its length and cheap, before any tokenizer or
parser sees it: where statements end (``;`` outside quotes, comments and dollar
quoting), and the limits beyond which safeddl does not hand text to sqlglot.

sqlglot's tokenizer costs about a microsecond per byte and its parser can take
exponential time (nested ``ARRAY[...]``) or overflow the C stack (thousands of nested
subqueries): :data:`LIMITS` bound what each statement may cost, and this scanner (a few
regular expressions run by the ``re`` engine, no per-byte Python loop for ordinary
text) tells where a statement ends without tokenizing it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What safeddl reads in full; beyond a bound a statement is "not understood" with
    the bound as its reason (and the policy decides), or, for large INSERT / UPDATE /
    DELETE, classified by its leading keywords and its target."""

    parse_bytes: int = 32 * 1024  # statements handed to sqlglot's parser
    token_bytes: int = 1024 * 1024  # statements read from sqlglot's tokens (DDL)
    depth: int = 100  # parentheses and brackets nested in one statement
    bracket_depth: int = 8  # nested ``ARRAY[...]`` / subscripts (parse time doubles per level)
    head_bytes: int = 4096  # what is tokenized of a large DML statement
    script_statements: int = 1000  # statements of one string the guard analyses one by one
    transaction_history: int = 100  # earlier statements of a transaction lint compares with


LIMITS = Limits()

# A run of ordinary text: anything but the starts of dollar quotes, block comments and
# statement ends, with complete standard strings, quoted identifiers and line comments
# inside it (written unrolled: one ``match`` consumes it in C). Where the text has a
# backslash, escape strings (E'...') stop the run too.
_PLAIN = r"""[^'"$;/\-]"""
_PIECES = r"""'[^']*'|"[^"]*"|--[^\n\r]*|/(?!\*)|-(?!-)"""
_RUN_PLAIN = re.compile(rf"{_PLAIN}*(?:(?:{_PIECES}){_PLAIN}*)*")
_PLAIN_E = r"""[^'"$;/\-eE]"""
_RUN_ESCAPES = re.compile(
    rf"{_PLAIN_E}*(?:(?:{_PIECES}|(?<![\w$])[eE](?!')|(?<=[\w$])[eE]){_PLAIN_E}*)*")
_PLAIN_PSQL = r"""[^'"$;/\-eE\\]"""
_RUN_PSQL = re.compile(
    rf"{_PLAIN_PSQL}*(?:(?:{_PIECES}|(?<![\w$])[eE](?!')|(?<=[\w$])[eE]){_PLAIN_PSQL}*)*")
_ESCAPE_STRING = re.compile(r"[eE]'(?:[^'\\]|\\.|'')*'", re.S)
_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")
_COMMENT_MARK = re.compile(r"/\*|\*/")
_IDENT_CHAR = re.compile(r"[\w$]")


class Unterminated(ValueError):
    """A quote, a dollar quote or a comment that does not end."""

    def __init__(self, what: str, offset: int) -> None:
        super().__init__(f"{what} starting at offset {offset} does not end")
        self.what = what
        self.offset = offset


def statement_ends(text: str) -> list[int]:
    """Offsets of the ``;`` that end statements, in order. Raises :class:`Unterminated`."""
    if ";" not in text:
        return []
    if len(text) < LIMITS.parse_bytes:
        return _statement_ends(text)
    memo = _SCANS.get()
    if memo is None:
        return _large_statement_ends(text)
    seen = memo.get(id(text))
    if seen is None or seen[0] is not text:  # the text is held: its id is not reused
        cut = _cut_from_remembered(memo, text)
        if cut is not None:
            return cut
        try:
            seen = (text, tuple(_large_statement_ends(text)))
        except Unterminated as exc:
            seen = (text, exc)
        memo[id(text)] = seen
    if isinstance(seen[1], Unterminated):
        raise seen[1]
    return list(seen[1])


def _cut_from_remembered(memo: dict[int, tuple[str, tuple[int, ...] | Unterminated]],
                         text: str) -> list[int] | None:
    """The ends of ``text`` when it is a remembered text without its trailing blanks
    and ``;`` (reading strips them): the scan runs left to right, and blanks and ``;``
    close nothing, so the ends before the cut are the same and nothing is left open."""
    for seen, ends in memo.values():
        if isinstance(ends, Unterminated) or len(seen) <= len(text):
            continue
        if not seen[len(text):].strip(" \t\r\n\f;") and seen.startswith(text):
            return [end for end in ends if end < len(text)]
    return None


_SCANS: ContextVar[dict[int, tuple[str, tuple[int, ...] | Unterminated]] | None] = ContextVar(
    "safeddl_large_scans", default=None)


@contextmanager
def scans_remembered() -> Iterator[None]:
    """Within the block a large text is scanned once, however often splitting, reading
    and the decision ask where its statements end; nothing is kept after the block."""
    if _SCANS.get() is not None:
        yield
        return
    token = _SCANS.set({})
    try:
        yield
    finally:
        _SCANS.reset(token)


def _large_statement_ends(text: str) -> list[int]:
    quick = _quick_ends(text)
    return quick if quick is not None else _statement_ends(text)


# The bytes that can change how a text is read: quotes, the statement end, and the
# first characters of dollar quotes and comments (a backslash is looked for apart).
_MARKS = b"'\";$-/*"
_NOT_MARKS = bytes(b for b in range(256) if b not in _MARKS)


def _quick_ends(text: str) -> list[int] | None:
    """The statement ends of a large text whose only quoting outside its string
    literals is ``'...'`` (no quoted identifier, dollar quote or comment outside them,
    no backslash anywhere), found with a few passes of ``bytes`` methods in C (about
    1 ms a MB, where the scan of :func:`_statement_ends` costs 8 ms a MB on text full
    of string literals); None when the text is not of that kind (or a quote does not
    end), for the full scan to read.

    The text is cut at each ``'``: with standard strings only, the even pieces are
    outside every literal (``''`` inside a literal makes an empty outside piece). The
    pieces are cut from the marks alone (the few bytes that matter), so they are
    mostly empty or of one byte, which Python does not allocate."""
    if "\\" in text:
        return None  # E'...' escapes: the full scan reads them
    data = text.encode("utf-8", "surrogatepass")  # UTF-8 sequences hold no ASCII byte
    pieces = data.translate(None, _NOT_MARKS).split(b"'")
    if len(pieces) % 2 == 0:
        return None  # a quote does not end: the full scan says where it starts
    outside = b"".join(pieces[0::2])
    if b'"' in outside or b"$" in outside:
        return None
    # Two marks side by side in ``outside`` may come from places apart in the text: a
    # comment start counts only when the text itself has one (a cheap search in C).
    if (b"--" in outside and "--" in text) or (b"/*" in outside and "/*" in text):
        return None
    found = outside.count(b";")
    if not found:
        return []
    # Statement ends in the text's last run of blanks and ';' (outside every literal:
    # the quotes are balanced): those may be all there are.
    body = len(text.rstrip(" \t\r\n\f;"))
    tail = [body + i for i, ch in enumerate(text[body:]) if ch == ";"]
    return tail if len(tail) == found else None


def _statement_ends(text: str) -> list[int]:
    ends: list[int] = []
    pos = 0
    runs = _RUN_ESCAPES if "\\" in text else _RUN_PLAIN
    while True:
        at = _next_mark(text, pos, runs, _ENDS)
        if at < 0:
            return ends
        ends.append(at)
        pos = at + 1


def next_mark(text: str, pos: int) -> int:
    """The offset of the next ``;`` or backslash outside quotes and comments (a psql
    meta-command starts there), or -1. Raises :class:`Unterminated`."""
    return _next_mark(text, pos, _RUN_PSQL, _ENDS_AND_BACKSLASHES)


_ENDS = frozenset(";")
_ENDS_AND_BACKSLASHES = frozenset(";\\")


def _next_mark(text: str, pos: int, runs: re.Pattern[str], marks: frozenset[str]) -> int:
    n = len(text)
    while True:
        run = runs.match(text, pos)
        pos = run.end() if run is not None else pos
        if pos >= n:
            return -1
        ch = text[pos]
        if ch in marks:
            return pos
        if ch == "$":
            pos = _after_dollar(text, pos)
        elif ch == "/":  # "/*": nested block comments, as PostgreSQL reads them
            pos = _after_comment(text, pos)
        elif ch in "eE":
            match = _ESCAPE_STRING.match(text, pos)
            if match is None:
                raise Unterminated("an escape string", pos)
            pos = match.end()
        elif ch == "'":
            raise Unterminated("a quoted string", pos)
        elif ch == '"':
            raise Unterminated("a quoted identifier", pos)
        else:  # a backslash outside a psql script: the server's business
            pos += 1


def _after_dollar(text: str, pos: int) -> int:
    if pos and _IDENT_CHAR.match(text, pos - 1):
        return pos + 1  # part of a name (a$b)
    tag = _DOLLAR_TAG.match(text, pos)
    if tag is None:
        return pos + 1  # a positional parameter ($1) or an operator character
    close = text.find(tag.group(), tag.end())
    if close < 0:
        raise Unterminated("a dollar-quoted string", pos)
    return close + len(tag.group())


def _after_comment(text: str, pos: int) -> int:
    depth = 0
    for mark in _COMMENT_MARK.finditer(text, pos):
        depth += 1 if mark.group() == "/*" else -1
        if depth == 0:
            return mark.end()
    raise Unterminated("a block comment", pos)


def head_of(text: str, size: int) -> str:
    """The first ``size`` characters or fewer, cut between words and outside quotes:
    enough to read the leading keywords and the target of a large statement."""
    run = (_RUN_ESCAPES if "\\" in text[:size] else _RUN_PLAIN).match(text, 0, size)
    stop = run.end() if run is not None else 0
    if stop < size:
        return text[:stop]  # the run ended at a lexeme boundary
    # Cut inside ordinary text: back off to a space or '(' after the last quote (the
    # run holds complete quoted strings only, so just after a quote is outside one).
    floor = max(text.rfind("'", 0, stop), text.rfind('"', 0, stop)) + 1
    cut = max(text.rfind(" ", floor, stop), text.rfind("\n", floor, stop),
              text.rfind("(", floor, stop))
    return text[: cut if cut > 0 else floor if floor > 0 else stop]


def nesting(kinds: list[str]) -> tuple[int, int]:
    """The deepest nesting of parentheses and brackets together, and of brackets."""
    depth = deepest = brackets = deepest_brackets = 0
    for kind in kinds:
        if kind == "L_PAREN":
            depth += 1
            deepest = max(deepest, depth)
        elif kind == "L_BRACKET":
            depth += 1
            brackets += 1
            deepest = max(deepest, depth)
            deepest_brackets = max(deepest_brackets, brackets)
        elif kind == "R_PAREN":
            depth -= 1
        elif kind == "R_BRACKET":
            depth -= 1
            brackets -= 1
    return deepest, deepest_brackets
