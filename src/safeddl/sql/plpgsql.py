"""The static SQL statements of a PL/pgSQL block (``DO``), in order.

A ``DO`` block runs at once: the locks it takes are those of the SQL statements it
runs. Which of them run depends on its control flow, so every static statement
counts (the union: what the block may lock), and so do the queries in its
conditions (``IF EXISTS (SELECT ...)``, ``FOR r IN SELECT ...``). Control words are
stripped (``BEGIN``, ``IF ... THEN``, ``ELSE``, ``LOOP``, ``EXCEPTION WHEN ...``),
``PERFORM x`` reads as ``SELECT x``, ``SELECT ... INTO v`` loses its ``INTO v``.
Anything that cannot be read that way stops the reading (:class:`NotUnderstood`):
dynamic ``EXECUTE``, ``CALL``, a statement of unknown shape. Declarations are skipped
(a default computed by a query is not read).
"""

from __future__ import annotations

from safeddl.sql.clauses import NotUnderstood
from safeddl.sql.tokens import Token, tokenize

_SKIPPED = frozenset({"RAISE", "RETURN", "NULL", "EXIT", "CONTINUE", "GET", "ASSERT",
                      "COMMIT", "ROLLBACK", "OPEN", "CLOSE", "FETCH", "MOVE"})
_SQL_START = frozenset({"SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES",
                        "CREATE", "ALTER", "DROP", "TRUNCATE", "LOCK", "COMMENT", "GRANT",
                        "REVOKE", "REINDEX", "ANALYZE", "ANALYSE", "CLUSTER", "REFRESH",
                        "SET", "RESET", "NOTIFY", "COPY"})
_OPEN, _CLOSE = ("L_PAREN", "L_BRACKET"), ("R_PAREN", "R_BRACKET")


def read_block(body: str) -> tuple[list[str], bool]:
    """The SQL the block may run (conditions' queries as ``SELECT ...``), in order, and
    whether the block may COMMIT or ROLLBACK (then the DO block or procedure cannot run
    inside a transaction block; a word anywhere outside literals counts), from one
    tokenizing. A block whose statements cannot be read raises :class:`NotUnderstood`
    that says all the same whether it may (``outside_transaction``)."""
    tokens = tokenize(body)
    commits = any(tok.kind != "IDENTIFIER" and _word(tok) in ("COMMIT", "ROLLBACK")
                  for tok in tokens)
    try:
        return _static_statements(body, tokens), commits
    except NotUnderstood as exc:
        raise NotUnderstood(str(exc), outside_transaction=commits) from exc


def _static_statements(body: str, tokens: list[Token]) -> list[str]:
    out: list[str] = []
    declaring = False
    for chunk in _chunks(tokens):
        pending: list[Token] | None = _skip_labels(chunk)
        while pending:
            if declaring:
                begin = next((i for i, t in enumerate(pending) if _word(t) == "BEGIN"), None)
                if begin is None:
                    break  # a declaration
                declaring = False
                pending = pending[begin:]
            found, pending = _statements_of(body, pending)
            out.extend(found)
            declaring = pending is not None  # a DECLARE section starts (a nested block too)
    return out


def _chunks(tokens: list[Token]) -> list[list[Token]]:
    chunks: list[list[Token]] = [[]]
    depth = 0
    for tok in tokens:
        if tok.kind in _OPEN:
            depth += 1
        elif tok.kind in _CLOSE:
            depth -= 1
        if tok.kind == "SEMICOLON" and depth == 0:
            chunks.append([])
        else:
            chunks[-1].append(tok)
    return [c for c in chunks if c]


def _word(tok: Token) -> str:
    return tok.word


def _skip_labels(chunk: list[Token]) -> list[Token]:
    """``<<label>>`` before a block or loop."""
    while len(chunk) >= 5 and chunk[0].kind == "LT" and chunk[1].kind == "LT":
        chunk = chunk[5:]
    return chunk


def _statements_of(body: str, chunk: list[Token]) -> tuple[list[str], list[Token] | None]:
    """The statements of a chunk (up to a ``;``), and what follows a ``DECLARE`` in it
    (None when there is none: declarations are skipped up to the block's ``BEGIN``)."""
    out: list[str] = []
    while chunk:
        chunk = _skip_labels(chunk)
        if not chunk:
            break
        word = _word(chunk[0])
        if word == "DECLARE":
            return out, chunk[1:]
        if word in ("BEGIN", "ELSE", "LOOP", "EXCEPTION", "THEN"):
            chunk = chunk[1:]
            continue
        if word == "END":
            return out, None  # END [IF | LOOP | CASE] [label]
        if word in ("IF", "ELSIF", "ELSEIF", "WHILE", "WHEN", "CASE"):
            stop = _until(chunk, 1, ("THEN", "LOOP"))
            out.extend(_condition_reads(body, chunk[1:stop]))
            chunk = chunk[stop:]
            continue
        if word in ("FOR", "FOREACH"):
            stop = _until(chunk, 1, ("LOOP",))
            inside = chunk[1:stop]
            at = next((i for i, t in enumerate(inside) if _word(t) == "IN"), None)
            if at is not None and at + 1 < len(inside) and _word(inside[at + 1]) in (
                    "SELECT", "WITH", "VALUES"):
                out.append(_text(body, inside[at + 1:]))
            elif at is not None and at + 1 < len(inside) and _word(inside[at + 1]) == "EXECUTE":
                raise NotUnderstood("FOR ... IN EXECUTE runs dynamic SQL safeddl cannot see")
            chunk = chunk[stop:]
            continue
        if word in ("EXECUTE", "CALL"):
            raise NotUnderstood(f"{word} in a plpgsql body runs code safeddl cannot see")
        if word in _SKIPPED:
            return out, None
        if word == "PERFORM":
            return [*out, "SELECT " + _text(body, chunk[1:])], None
        target = _assignment_target(chunk)
        if target is not None:
            return [*out, *_condition_reads(body, chunk[target + 1:])], None  # v[i].f := expr
        if word in _SQL_START:
            return [*out, _without_into(body, chunk)], None
        raise NotUnderstood(f"a statement of a plpgsql body safeddl cannot read: {word}")
    return out, None


def _assignment_target(chunk: list[Token]) -> int | None:
    """The position of ``:=`` / ``=`` in ``v := ...``, ``v[i] := ...``, ``r.f := ...``."""
    if not chunk or not chunk[0].is_name or chunk[0].word in _SQL_START:
        return None
    i, depth = 1, 0
    while i < len(chunk):
        kind = chunk[i].kind
        if kind in _OPEN:
            depth += 1
        elif kind in _CLOSE:
            depth -= 1
        elif depth == 0 and kind in ("COLON_EQ", "EQ"):
            return i
        elif depth == 0 and kind != "DOT" and not chunk[i].is_name:
            return None
        i += 1
    return None


def _until(chunk: list[Token], start: int, words: tuple[str, ...]) -> int:
    depth = 0
    for i in range(start, len(chunk)):
        tok = chunk[i]
        if tok.kind in _OPEN:
            depth += 1
        elif tok.kind in _CLOSE:
            depth -= 1
        elif depth == 0 and _word(tok) in words:
            return i
    return len(chunk)


def _condition_reads(body: str, tokens: list[Token]) -> list[str]:
    """A condition or an expression that runs a query: read as ``SELECT <it>``."""
    if any(_word(t) == "SELECT" for t in tokens):
        return ["SELECT " + _text(body, tokens)]
    return []


def _without_into(body: str, chunk: list[Token]) -> str:
    """``SELECT a INTO [STRICT] v, w FROM ...`` / ``... RETURNING x INTO v``: the SQL
    without the INTO target (which is PL/pgSQL, not SQL). ``INSERT INTO`` is kept."""
    first = _word(chunk[0])
    depth = 0
    for i, tok in enumerate(chunk):
        if tok.kind in _OPEN:
            depth += 1
        elif tok.kind in _CLOSE:
            depth -= 1
        elif depth == 0 and _word(tok) == "INTO" and i > 0 and not (
                first in ("INSERT", "MERGE") and _word(chunk[i - 1]) in ("INSERT", "MERGE")):
            if first not in ("SELECT", "WITH") and not any(
                    _word(t) == "RETURNING" for t in chunk[:i]):
                continue
            j = i + 1
            if j < len(chunk) and _word(chunk[j]) == "STRICT":
                j += 1
            while j < len(chunk) and (chunk[j].is_name or chunk[j].kind in ("COMMA", "DOT")):
                if _word(chunk[j]) in ("FROM", "WHERE", "GROUP", "ORDER", "LIMIT", "UNION"):
                    break
                j += 1
            head, tail = _text(body, chunk[:i]), _text(body, chunk[j:])
            return f"{head} {tail}".strip()
    return _text(body, chunk)


def _text(body: str, tokens: list[Token]) -> str:
    if not tokens:
        return ""
    return body[tokens[0].start : tokens[-1].end]
