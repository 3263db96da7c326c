"""sqlglot's tokenizer, seen through a small neutral token type and a cursor."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import ClassVar, NamedTuple

from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import TokenError
from sqlglot.tokenizer_core import TokenType


class _Tokenizer(Postgres.Tokenizer):
    """PostgreSQL's tokens, one word a token.

    sqlglot turns the rest of a "command" (LOCK, VACUUM, ...) into one string and
    joins some keyword pairs (PRIMARY KEY, ORDER BY) into one token; DDL reading
    wants neither.
    """

    COMMANDS: ClassVar[set[TokenType]] = set()
    KEYWORDS = {k: v for k, v in Postgres.Tokenizer.KEYWORDS.items() if " " not in k}

_OPEN = {"L_PAREN", "L_BRACKET"}

# PostgreSQL's reserved key words (and CONCURRENTLY): never an unquoted name.
NOT_NAMES = frozenset(
    """all analyse analyze and any array as asc asymmetric both case cast check collate
    column concurrently constraint create current_catalog current_date current_role
    current_time current_timestamp current_user default deferrable desc distinct do else
    end except false fetch for foreign from grant group having in initially intersect into
    lateral leading limit localtime localtimestamp not null offset on only or order placing
    primary references returning select session_user some symmetric table then to
    trailing true union unique user using variadic when where window with""".split()
)
_CLOSE = {"R_PAREN", "R_BRACKET"}


class SqlTokenError(ValueError):
    """The text cannot be tokenized (e.g. an unterminated string or comment)."""


_NOT_WORDS = frozenset({"IDENTIFIER", "STRING", "HEREDOC_STRING", "NATIONAL_STRING",
                        "BYTE_STRING", "BIT_STRING", "HEX_STRING", "RAW_STRING", "NUMBER"})


class Token(NamedTuple):
    """One token (a named tuple: tokenizing is on the hot path)."""

    kind: str  # sqlglot's token type name: VAR, IDENTIFIER, STRING, L_PAREN, SEMICOLON...
    text: str  # the token's text (for an IDENTIFIER: without the quotes)
    start: int  # offset of the first character in the source
    end: int  # offset just past the last character
    line: int

    @property
    def word(self) -> str:
        """Upper-cased text of a keyword or unquoted name; '' for quoted/literals."""
        return "" if self.kind in _NOT_WORDS else self.text.upper()

    @property
    def is_name(self) -> bool:
        """Could be an identifier (quoted, or a word that is not punctuation)."""
        return self.kind == "IDENTIFIER" or (self.text[:1].isalpha() or self.text[:1] == "_")


# A positional parameter ``$1``: sqlglot reads ``$1+$2`` as the start of a dollar-quoted
# string tagged ``1+`` and fails; PostgreSQL's tags cannot start with a digit.
_POSITIONAL = re.compile(r"(?<![\w$])\$(?=\d)")


_LOCAL = threading.local()


def _tokenizer() -> _Tokenizer:
    """One tokenizer per thread: building one costs more than tokenizing a short
    statement, and ``tokenize`` resets its state on every call."""
    try:
        tokenizer: _Tokenizer = _LOCAL.tokenizer
    except AttributeError:
        tokenizer = _LOCAL.tokenizer = _Tokenizer()
    return tokenizer


def tokenize(text: str) -> list[Token]:
    return tokenize_checked(text)[0]


def tokenize_checked(text: str) -> tuple[list[Token], bool]:
    """The tokens, and whether sqlglot read the text as it is (False: only with its
    positional parameters ``$1`` read as ``?1``, which a part of it alone may not need:
    then the tokens of a part are not those of the part tokenized on its own)."""
    try:
        return _tokenize_checked(text)
    finally:
        _tokenizer().tokenize("")  # the shared tokenizer keeps no text nor tokens


def _tokenize_checked(text: str) -> tuple[list[Token], bool]:
    try:
        raw = _tokenizer().tokenize(text)
    except TokenError as exc:
        if "$" not in text:
            raise SqlTokenError(str(exc)) from None
        # Read ``$1`` as ``?1`` (same length: offsets stay) and give the parameters
        # back their own text.
        try:
            raw = _tokenizer().tokenize(_POSITIONAL.sub("?", text))
        except TokenError:
            raise SqlTokenError(str(exc)) from None
        return [Token("PARAMETER", "$", t.start, t.end + 1, t.line)
                if t.token_type._name_ == "PLACEHOLDER" and text[t.start] == "$"
                else Token(t.token_type._name_, t.text, t.start, t.end + 1, t.line)
                for t in raw], False
    # ``_name_`` is the member's name as a plain attribute (``.name`` is a descriptor)
    return [Token(t.token_type._name_, t.text, t.start, t.end + 1, t.line) for t in raw], True


def rebased(tokens: list[Token]) -> list[Token]:
    """Tokens of a part of a text as if that part, from its first token on, had been
    tokenized on its own (offsets from its first token, lines from 1)."""
    if not tokens:
        return tokens
    base, lines = tokens[0].start, tokens[0].line - 1
    if not base and not lines:
        return tokens
    return [Token(kind, text, start - base, end - base, line - lines)
            for kind, text, start, end, line in tokens]


class Cursor:
    """A position in a token list with the small vocabulary DDL recognizers need."""

    def __init__(self, tokens: list[Token], source: str, pos: int = 0, stop: int | None = None,
                 words: list[str] | None = None):
        self.tokens = tokens
        self.source = source
        self.pos = pos
        self.stop = len(tokens) if stop is None else stop
        # each token's ``word``, computed once for the cursor and those made from it
        # (``sub``): the recognizers ask for the same words many times
        self._words = words if words is not None else [t.word for t in tokens]

    # -- looking -------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.pos >= self.stop

    def peek(self, offset: int = 0) -> Token | None:
        i = self.pos + offset
        return self.tokens[i] if i < self.stop else None

    def peek_word(self, offset: int = 0) -> str:
        i = self.pos + offset
        return self._words[i] if i < self.stop else ""

    def at(self, *words: str) -> bool:
        """True when the next tokens are these words (no consuming)."""
        known, i, stop = self._words, self.pos, self.stop
        for word in words:
            if (known[i] if i < stop else "") != word:
                return False
            i += 1
        return True

    # -- consuming -----------------------------------------------------------
    def advance(self) -> Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def accept(self, *words: str) -> bool:
        """Consume the words when they come next, in order."""
        if self.at(*words):
            self.pos += len(words)
            return True
        return False

    def accept_any(self, *words: str) -> str | None:
        word = self.peek_word()
        if word in words:
            self.pos += 1
            return word
        return None

    def read_name(self) -> str | None:
        """A possibly qualified name as written (``app."Orders"``), or None (also
        for a reserved word, which cannot be an unquoted name)."""
        tok = self.peek()
        if tok is None or not tok.is_name or tok.kind in ("L_PAREN",):
            return None
        if tok.kind != "IDENTIFIER" and tok.text.lower() in NOT_NAMES:
            return None
        start = self.pos
        self.pos += 1
        while (
            self.peek() is not None
            and self.peek().kind == "DOT"  # type: ignore[union-attr]
            and self.peek(1) is not None
            and self.peek(1).is_name  # type: ignore[union-attr]
        ):
            self.pos += 2
        return self.text_of(start, self.pos)

    def skip_group(self) -> None:
        """Skip one token, or a whole parenthesized group when at '('."""
        depth = 0
        while not self.done:
            tok = self.advance()
            if tok.kind in _OPEN:
                depth += 1
            elif tok.kind in _CLOSE:
                depth -= 1
            if depth <= 0:
                return

    def read_group(self) -> tuple[int, int]:
        """At '(': the token range inside the parentheses; the cursor moves past ')'."""
        start = self.pos + 1
        self.skip_group()
        return start, self.pos - 1

    def until(self, *stop_words: str) -> tuple[int, int]:
        """Token range up to (not including) a stop word or ',' at depth 0."""
        start = self.pos
        depth = 0
        while not self.done:
            tok = self.peek()
            assert tok is not None
            if depth == 0 and (tok.kind == "COMMA" or tok.word in stop_words):
                break
            if tok.kind in _OPEN:
                depth += 1
            elif tok.kind in _CLOSE:
                if depth == 0:
                    break
                depth -= 1
            self.pos += 1
        return start, self.pos

    # -- text ----------------------------------------------------------------
    def text_of(self, start: int, stop: int) -> str:
        """The source text of tokens[start:stop], as written."""
        if start >= stop:
            return ""
        return self.source[self.tokens[start].start : self.tokens[stop - 1].end]

    def sub(self, start: int, stop: int) -> Cursor:
        return Cursor(self.tokens, self.source, start, stop, self._words)

    def words(self, start: int, stop: int) -> list[str]:
        return self._words[start:stop]


def split_top_level(tokens: list[Token], start: int, stop: int) -> Iterable[tuple[int, int]]:
    """Ranges of tokens[start:stop] separated by commas at parenthesis depth 0."""
    depth = 0
    begin = start
    for i in range(start, stop):
        kind = tokens[i].kind
        if kind in _OPEN:
            depth += 1
        elif kind in _CLOSE:
            depth -= 1
        elif kind == "COMMA" and depth == 0:
            yield begin, i
            begin = i + 1
    if begin < stop:
        yield begin, stop
