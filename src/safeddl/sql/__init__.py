"""Everything safeddl knows about SQL syntax; the only place that imports sqlglot.

``read(text)`` turns one statement into :class:`Syntax`: the steps it performs on
which relations, with identifiers as written. It never raises: what cannot be read
comes back with ``error`` set.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ParseError, SqlglotError, TokenError

from safeddl.model import Action, Step
from safeddl.sql.clauses import NotUnderstood
from safeddl.sql.ddl import read_ddl
from safeddl.sql.dml import dml_steps, number_positional
from safeddl.sql.names import local_name, qualified_name, quote_ident, schema_of, split_name
from safeddl.sql.scan import LIMITS, Unterminated, head_of, nesting, statement_ends
from safeddl.sql.split import RawStatement, split_script
from safeddl.sql.tokens import Cursor, SqlTokenError, Token, split_top_level, tokenize

__all__ = [
    "LIMITS",
    "RawStatement",
    "Syntax",
    "first_words",
    "call_steps",
    "local_name",
    "procedure_statements",
    "qualified_name",
    "quote_ident",
    "read",
    "schema_of",
    "split_name",
    "split_script",
    "sqlglot_form",
]

SQLGLOT_VERSION: str = getattr(sqlglot, "__version__", "unknown")

_DML_WORDS = frozenset({"SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES",
                        "TABLE", "("})
_SESSION_WORDS = frozenset({"SET", "RESET", "SHOW", "DISCARD", "LISTEN", "UNLISTEN", "NOTIFY",
                            "LOAD", "DEALLOCATE", "CHECKPOINT", "FETCH", "CLOSE", "MOVE",
                            "DECLARE"})
_TRANSACTION_WORDS = frozenset({"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT",
                                "SAVEPOINT", "RELEASE", "PREPARE", "SET TRANSACTION"})
# Statements that take no lock on any table safeddl tracks.
_NO_TABLE_LOCK = {
    ("CREATE", "SCHEMA"), ("CREATE", "EXTENSION"), ("CREATE", "FUNCTION"),
    ("CREATE", "OR"), ("CREATE", "PROCEDURE"), ("CREATE", "TYPE"), ("CREATE", "DOMAIN"),
    ("CREATE", "SEQUENCE"), ("CREATE", "TEMP"), ("CREATE", "ROLE"), ("CREATE", "USER"),
    ("CREATE", "AGGREGATE"), ("CREATE", "OPERATOR"), ("CREATE", "COLLATION"),
    ("CREATE", "CAST"), ("CREATE", "PUBLICATION"), ("CREATE", "SERVER"),
    ("CREATE", "TEXT"), ("DROP", "FUNCTION"), ("DROP", "PROCEDURE"), ("DROP", "TYPE"),
    ("DROP", "DOMAIN"), ("DROP", "SEQUENCE"), ("DROP", "EXTENSION"), ("DROP", "ROLE"),
    ("DROP", "USER"), ("DROP", "SCHEMA"), ("ALTER", "FUNCTION"), ("ALTER", "ROLE"),
    ("ALTER", "USER"), ("ALTER", "SCHEMA"), ("ALTER", "DOMAIN"), ("ALTER", "EXTENSION"),
    ("ALTER", "DEFAULT"), ("ALTER", "DATABASE"), ("ALTER", "PROCEDURE"),
    ("SECURITY", "LABEL"), ("CREATE", "UNLOGGED"),  # CREATE UNLOGGED SEQUENCE (15+)
}
_OUTSIDE_TRANSACTION = {
    ("CREATE", "DATABASE"), ("DROP", "DATABASE"), ("ALTER", "SYSTEM"),
    ("CREATE", "TABLESPACE"), ("DROP", "TABLESPACE"),
}


@dataclass(frozen=True)
class Syntax:
    """What a statement does, as steps on relations named as written."""

    steps: tuple[Step, ...]
    error: str | None = None  # why the statement could not be read

    @property
    def understood(self) -> bool:
        return self.error is None


def read(text: str, tokens: list[Token] | None = None) -> Syntax:
    """Read one statement. Never raises, and its work is bounded (:data:`LIMITS`):
    past a bound the statement is not understood, with the bound as the reason.

    ``tokens``: ``tokenize(text)`` when the caller has it already (a
    :class:`RawStatement`'s ``tokens``); read as is, never changed."""
    if len(text) > LIMITS.parse_bytes:
        large = _read_large(text)
        if large is not None:
            return large
    try:
        if tokens is None:
            tokens = tokenize(text)
    except SqlTokenError as exc:
        return _unparsed(text, f"cannot tokenize: {_unterminated(text) or exc}")
    if not tokens:
        return Syntax((Step(Action.OTHER, text=""),))
    depth, brackets = nesting([t.kind for t in tokens])
    if depth > LIMITS.depth or brackets > LIMITS.bracket_depth:
        return _unparsed(text, f"parentheses and brackets nest {depth} deep ({brackets} "
                         f"brackets); safeddl reads at most {LIMITS.depth} "
                         f"({LIMITS.bracket_depth} brackets)")
    try:
        return Syntax(tuple(_read_tokens(Cursor(tokens, text))))
    except NotUnderstood as exc:
        return _unparsed(text, str(exc), exc.outside_transaction)
    except IndexError:
        return _unparsed(text, "the statement is incomplete (it ends at "
                         f"{_where(text, tokens[-1].end)})")
    except (SqlglotError, ValueError, KeyError, AttributeError, TypeError,
            RecursionError) as exc:
        return _unparsed(text, f"cannot parse: {_short(exc)}")


def _unparsed(text: str, reason: str, outside_transaction: bool = False) -> Syntax:
    kind = "outside-transaction" if outside_transaction else None
    return Syntax((Step(Action.UNPARSED, text=text, target_kind=kind),), reason)


def _where(text: str, offset: int) -> str:
    """``line 3, column 7`` of an offset (1-based, as PostgreSQL's editors count)."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def _near(text: str, tok: Token) -> str:
    return f'syntax error at or near "{tok.text}" ({_where(text, tok.start)})'


def _unterminated(text: str) -> str | None:
    try:
        statement_ends(text + ";")  # the ';' makes the scan look at the whole text
    except Unterminated as exc:
        return f"{exc.what} starting at {_where(text, exc.offset)} does not end"
    return None


_LARGE_DML = {"INSERT", "DELETE"}
# Words after the target that would bring more relations into a large INSERT / DELETE.
_MORE_RELATIONS = ("select", "from", "using", "join", "table", "with", "returning")
_WORD_CHAR = re.compile(r"[\w$]")


_ASCII_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
_NOT_ASCII_LETTERS = bytes(b for b in range(256) if not chr(b).isascii()
                           or not chr(b).isalpha())


def _names_more_relations(text: str, start: int) -> bool:
    """Whether one of :data:`_MORE_RELATIONS` appears as a word after ``start`` (in a
    literal too: then the statement is not classified, which only fails closed). A
    plain substring search per word, in C: linear, and fast on megabytes.

    First a look at the ASCII letters after ``start`` alone, lower-cased and side by
    side (one ``bytes.translate``): a word that is not there is nowhere, and on a list
    of numbers and short strings they are a fraction of the text."""
    letters = text[start:].encode("utf-8", "surrogatepass").translate(
        _ASCII_LOWER, _NOT_ASCII_LETTERS)
    if not any(word.encode() in letters for word in _MORE_RELATIONS):
        return False
    lowered = text.lower()
    for word in _MORE_RELATIONS:
        at = lowered.find(word, start)
        for _ in range(100):  # past 100 partial matches, count it as found
            if at < 0:
                break
            before = lowered[at - 1] if at else " "
            after = lowered[at + len(word)] if at + len(word) < len(lowered) else " "
            if not _WORD_CHAR.match(before) and not _WORD_CHAR.match(after):
                return True
            at = lowered.find(word, at + 1)
        else:
            return True
    return False


_SHORT_HEAD = 512  # tokenizing costs about a microsecond a byte
_HEAD_TOKENS = 16  # more than reading a large statement's keywords and target takes


def _head_tokens(text: str, needed: int) -> tuple[str, list[Token]]:
    """The head of a large text and its tokens: a short head when it holds ``needed``
    tokens (the same first ones as a longer head: both are cut between tokens), else
    :data:`LIMITS.head_bytes` of it. [] when the head does not tokenize."""
    for size in (_SHORT_HEAD, LIMITS.head_bytes):
        head = head_of(text, size)
        try:
            tokens = tokenize(head)
        except SqlTokenError:
            tokens = []
        if len(tokens) >= needed or len(head) == len(text):
            break
    return head, tokens


def _read_large(text: str) -> Syntax | None:
    """A statement longer than safeddl parses: INSERT ... VALUES and DELETE FROM t
    WHERE ... are classified by their leading keywords and target (their cost stays
    linear: the text is scanned, not tokenized); other DML is not understood; None
    for DDL, which is read from tokens up to ``LIMITS.token_bytes``."""
    head, tokens = _head_tokens(text, _HEAD_TOKENS)
    words = [t.word for t in tokens[:3]]
    first = words[0] if words else ""
    if first not in _DML_WORDS and len(text) <= LIMITS.token_bytes:
        return None
    size = (f"a statement of {len(text):,} characters (safeddl parses statements of up "
            f"to {LIMITS.parse_bytes:,}")
    try:
        ends = statement_ends(text)
    except Unterminated as exc:
        return _unparsed(text, f"cannot tokenize: {exc.what} starting at "
                         f"{_where(text, exc.offset)} does not end")
    if ends and text[ends[0] + 1 :].strip(" \t\r\n;"):
        return _unparsed(text, f"{size}) holds more than one statement")
    if first in _LARGE_DML:
        c = Cursor(tokens, head)
        c.accept(first)
        c.accept("FROM") if first == "DELETE" else c.accept("INTO")
        only = c.accept("ONLY")
        table = c.read_name()
        after = tokens[c.pos].start if not c.done else len(head)
        rest_ok = table is not None and (
            (first == "INSERT" and (c.at("VALUES") or c.peek_word() == "(")
             and not _names_more_relations(text, after))
            or (first == "DELETE" and c.at("WHERE")
                and not _names_more_relations(text, after)))
        if rest_ok:
            action = Action.INSERT if first == "INSERT" else Action.DELETE
            return Syntax((Step(action, table=table, only=only,
                                text="read by its leading keywords (" + size + "))"),))
    if len(text) > LIMITS.token_bytes:
        open_quote = _unterminated(text) if ";" not in text else None
        return _unparsed(text, f"{size}; statements other than INSERT ... VALUES and "
                         f"DELETE ... WHERE are read up to {LIMITS.token_bytes:,})"
                         + (f"; also, {open_quote}" if open_quote else ""))
    return _unparsed(text, f"{size}; a larger one is read only when it is an INSERT ... "
                     "VALUES or a DELETE ... WHERE on one table)")


def first_words(text: str, count: int = 2) -> list[str]:
    """The first keywords of one statement (comments of every kind skipped), upper-cased,
    read from a bounded head of the text; [] when the text is not one complete
    statement (an unterminated quote or comment, or a ``;`` with more after it) or
    cannot be tokenized: nothing is guessed from text safeddl cannot read."""
    try:
        ends = statement_ends(text)
    except Unterminated:
        return []
    if ends and text[ends[0] + 1 :].strip(" \t\r\n\f;"):
        return []
    if len(text) > LIMITS.head_bytes:
        tokens = _head_tokens(text, count + 1)[1]
        return [t.word or t.kind for t in tokens[:count]]
    try:
        tokens = tokenize(text)
    except SqlTokenError:
        return []
    return [t.word or t.kind for t in tokens[:count]]


def _read_tokens(c: Cursor) -> list[Step]:
    first = c.peek_word()
    pair = (first, c.peek_word(1))
    if first in _DML_WORDS:
        return _dml(c)
    if first == "COPY":
        return _copy(c)
    if first == "EXPLAIN":
        return _explain(c)
    if first == "PREPARE" and c.peek_word(1) != "TRANSACTION":
        return _prepare(c)
    if first in _TRANSACTION_WORDS:
        if first == "SET":
            return [Step(Action.SET, text=c.text_of(0, c.stop))]
        return [Step(Action.TRANSACTION_CONTROL, text=first)]
    if first in _SESSION_WORDS:
        if first == "SET" and c.at("SET", "TRANSACTION"):
            return [Step(Action.TRANSACTION_CONTROL, text="SET TRANSACTION")]
        return [Step(Action.SET, text=c.text_of(0, c.stop))]
    steps = read_ddl(c)
    if steps is not None:
        if steps[0].target_kind == "sql-body":
            return _function_body_reads(steps[0])
        return steps + _query_reads(c, steps)
    if first in ("DROP", "REASSIGN"):
        cascade = _drop_cascade(c)
        if cascade is not None:
            return cascade
    if first in ("CREATE", "ALTER", "DROP") and _catalog_object(c):
        return [Step(Action.OTHER, text=" ".join(c.words(0, min(3, c.stop))))]
    if pair in _OUTSIDE_TRANSACTION:
        return [Step(Action.OTHER, target_kind="outside-transaction",
                     text=" ".join(pair))]
    if pair in _NO_TABLE_LOCK or pair[:1] == ("COMMENT",):
        return [Step(Action.OTHER, text=" ".join(pair))]
    if first == "DO":
        return _do_block(c)
    if first == "CALL":
        c.accept("CALL")
        name = c.read_name()
        if name is None or c.peek_word() != "(":
            raise NotUnderstood("CALL without a procedure and its arguments")
        return [Step(Action.CALL, function=name)]
    if first == "EXECUTE":
        c.accept("EXECUTE")
        name = c.read_name()
        if name is None:
            raise NotUnderstood("EXECUTE without a prepared statement's name")
        return [Step(Action.EXECUTE, name=name)]
    if c.at("IMPORT", "FOREIGN", "SCHEMA"):
        # Creates foreign tables (the foreign server's), locks no existing table
        words = c.words(0, c.stop)
        if "SERVER" not in words or "INTO" not in words:
            raise NotUnderstood("IMPORT FOREIGN SCHEMA without FROM SERVER ... INTO")
        return [Step(Action.OTHER, text="IMPORT FOREIGN SCHEMA")]
    raise NotUnderstood(f"unknown statement {' '.join(w for w in pair if w)}: "
                        + _near(c.source, c.tokens[c.pos]))


def _prepare(c: Cursor) -> list[Step]:
    """``PREPARE q [(types)] AS statement``: the statement is parsed and analysed now
    (ACCESS SHARE on what it reads, ROW EXCLUSIVE on its target, views expanded; not
    planned: no partitions), and runs at ``EXECUTE q``."""
    c.accept("PREPARE")
    name = c.read_name()
    if name is None:
        raise NotUnderstood("PREPARE without a name")
    if c.peek_word() == "(":
        c.skip_group()
    if not c.accept("AS") or c.done:
        raise NotUnderstood("PREPARE without AS <statement>")
    inner = c.text_of(c.pos, c.stop)
    syntax = read(inner)
    if not syntax.understood:
        raise NotUnderstood(f"the prepared statement cannot be read: {syntax.error}")
    head = Step(Action.PREPARE, name=name, definition_sql=inner)
    return [head, *(dataclasses.replace(step, target_kind="function-body")
                    for step in syntax.steps if step.table and step.action in _BODY_DML)]


def _dml(c: Cursor) -> list[Step]:
    if len(c.source) > LIMITS.parse_bytes:
        raise NotUnderstood(f"a query of {len(c.source):,} characters is longer than the "
                            f"{LIMITS.parse_bytes:,} safeddl parses")
    tree = _parse(number_positional(c.source, c.tokens))
    if isinstance(tree, exp.Command) or tree is None:
        tree = _insert_without_columns(c)
    if isinstance(tree, exp.Command) or tree is None:
        raise NotUnderstood(_parse_error(c.source) or "sqlglot could not read this statement")
    steps = dml_steps(tree)
    if not steps:
        return [Step(Action.SELECT)]  # SELECT 1, VALUES (...): no relation
    return steps


def _insert_without_columns(c: Cursor) -> exp.Expr | None:
    """``INSERT INTO t (f.sub, a[1]) ...``: target columns sqlglot cannot parse (fields
    of a composite column, array elements) are read as if the list were not written
    (the steps are the same; the columns left NULL are then not known)."""
    sub = c.sub(0, c.stop)
    if not sub.accept("INSERT", "INTO") or sub.read_name() is None:
        return None
    if sub.accept("AS"):
        sub.read_name()
    if sub.peek_word() != "(":
        return None
    start = sub.pos
    sub.skip_group()
    if sub.done:
        return None
    text = c.source[:c.tokens[start].start] + c.source[c.tokens[sub.pos].start:]
    return _parse(number_positional(text, tokenize(text)))


def _copy(c: Cursor) -> list[Step]:
    """``COPY t [(cols)] FROM|TO ...`` or ``COPY (query) TO ...``, from tokens (sqlglot
    cannot parse every option list)."""
    c.accept("COPY")
    c.accept("BINARY")  # the form before PostgreSQL 7.3, still accepted
    if c.peek() is not None and c.peek().kind == "L_PAREN":  # type: ignore[union-attr]
        start, stop = c.read_group()
        query = c.text_of(start, stop)
        return [Step(Action.COPY_TO)] + [s for s in read(query).steps if s.table]
    only = c.accept("ONLY")
    table = c.read_name()
    if table is None:
        raise NotUnderstood("COPY without a table or a query")
    if c.peek() is not None and c.peek().kind == "L_PAREN":  # type: ignore[union-attr]
        c.skip_group()
    direction = c.accept_any("FROM", "TO")
    if direction is None:
        raise NotUnderstood("COPY without FROM or TO")
    action = Action.COPY_FROM if direction == "FROM" else Action.COPY_TO
    return [Step(action, table=table, only=only)]


def _explain(c: Cursor) -> list[Step]:
    c.accept("EXPLAIN")
    if c.peek() is not None and c.peek().kind == "L_PAREN":  # type: ignore[union-attr]
        options = c.words(*c.read_group())
        analyze = "ANALYZE" in options
    else:
        analyze = bool(c.accept_any("ANALYZE", "ANALYSE"))
        c.accept("VERBOSE")
    inner = c.text_of(c.pos, c.stop)
    steps = list(read(inner).steps)
    if not analyze:
        # Planning locks what the statement would lock, rows are not touched.
        return [s for s in steps if s.action in (
            Action.SELECT, Action.SELECT_FOR_UPDATE, Action.INSERT, Action.UPDATE,
            Action.DELETE, Action.MERGE)] or [Step(Action.SELECT)]
    return steps


_BODY_DML = frozenset({Action.SELECT, Action.SELECT_FOR_UPDATE, Action.INSERT, Action.UPDATE,
                       Action.DELETE, Action.MERGE})


# Objects that live in the system catalogs only: creating, altering or dropping one
# takes no lock on a table (DROP ... CASCADE may reach columns, indexes or foreign
# tables that depend on it: not known, so not read).
_CATALOG_OBJECTS = frozenset({
    "AGGREGATE", "OPERATOR", "COLLATION", "CONVERSION", "TEXT", "EVENT", "SERVER",
    "LANGUAGE", "PROCEDURAL", "TRUSTED", "ACCESS", "CAST", "GROUP", "ROUTINE", "TRANSFORM",
    "DATA",  # (FOREIGN) DATA WRAPPER
    "MAPPING",  # USER MAPPING
    "LARGE",  # ALTER LARGE OBJECT
})


# DROP <kind> of objects other than relations that CASCADE may take tables with
_DROPPED_KINDS = frozenset({
    "TYPE", "DOMAIN", "SCHEMA", "EXTENSION", "SEQUENCE", "PROCEDURE", "ROUTINE",
    "AGGREGATE", "OPERATOR", "COLLATION", "CONVERSION", "TEXT", "EVENT", "SERVER",
    "LANGUAGE", "PROCEDURAL", "TRUSTED", "ACCESS", "CAST", "TRANSFORM", "FOREIGN",
    "ROLE", "USER", "GROUP",
})
# words between DROP and the dropped object's name
_KIND_WORDS = frozenset({"TYPE", "DOMAIN", "SCHEMA", "EXTENSION", "SEQUENCE", "PROCEDURE",
                         "ROUTINE", "AGGREGATE", "OPERATOR", "CLASS", "FAMILY", "COLLATION",
                         "CONVERSION", "TEXT", "SEARCH", "CONFIGURATION", "DICTIONARY",
                         "PARSER", "TEMPLATE", "EVENT", "TRIGGER", "SERVER", "LANGUAGE",
                         "PROCEDURAL", "TRUSTED", "ACCESS", "METHOD", "CAST", "TRANSFORM",
                         "FOREIGN", "DATA", "WRAPPER", "IF", "EXISTS"})


def _drop_cascade(c: Cursor) -> list[Step] | None:
    """``DROP <object> ... CASCADE`` of an object other than a relation, ``DROP OWNED``
    and ``REASSIGN OWNED``: they drop or change the tables, columns, indexes and
    constraints that depend on the object (or that a role owns), under ACCESS
    EXCLUSIVE on each table; which ones is known only to the catalog. None when the
    statement is not one of those."""
    words = c.words(0, c.stop)
    if words[:2] in (["DROP", "OWNED"], ["REASSIGN", "OWNED"]):
        text = " ".join(words[:2])
        return [Step(Action.DROP_CASCADE, target_kind=text, text=text, cascade=True)]
    if len(words) < 3 or words[1] not in _DROPPED_KINDS or words[-1] != "CASCADE":
        return None
    if words[1] in ("ROLE", "USER", "GROUP"):
        return None  # DROP ROLE has no CASCADE: not valid SQL, left to the caller
    i = 1
    while i < c.stop and c.tokens[i].word in _KIND_WORDS:
        i += 1
    kind = " ".join(words[1:i]).replace(" IF EXISTS", "")
    if kind == "FOREIGN TABLE":
        return None
    names = []
    for start, stop in split_top_level(c.tokens, i, c.stop - 1):  # (not the CASCADE)
        name = c.sub(start, stop).read_name() if c.tokens[start].is_name else None
        names.append(name or c.text_of(start, stop))  # an operator: ``=== (int, int)``
    if not names:
        raise NotUnderstood(f"DROP {kind} without a name")
    return [Step(Action.DROP_CASCADE, name=name, target_kind=kind, text=f"DROP {kind}",
                 cascade=True) for name in names]


def _catalog_object(c: Cursor) -> bool:
    words = c.words(0, min(c.stop, 4))
    kind = words[1] if len(words) > 1 else ""
    if kind in ("OR",) and len(words) > 3:  # CREATE OR REPLACE AGGREGATE ...
        kind = words[3]
    if kind == "FOREIGN" and len(words) > 2:
        kind = words[2]
    if kind == "USER" and len(words) > 2:
        kind = words[2]
    if kind == "DEFAULT" and len(words) > 2:  # CREATE DEFAULT CONVERSION
        kind = words[2]
    if kind == "TABLESPACE" and words[0] == "ALTER":
        return True
    if kind not in _CATALOG_OBJECTS:
        return False
    return True


def _do_block(c: Cursor) -> list[Step]:
    """``DO [LANGUAGE plpgsql] $$ ... $$``: the steps of the static SQL it may run. A
    block that may COMMIT or ROLLBACK cannot run inside a transaction block (PostgreSQL
    raises "invalid transaction termination" there when it reaches one): a step marked
    ``outside-transaction`` says so."""
    from safeddl.sql.plpgsql import read_block

    body = next((tok.text for tok in c.tokens[c.pos:c.stop]
                 if tok.kind in ("STRING", "HEREDOC_STRING", "RAW_STRING")), None)
    words = c.words(0, c.stop)
    if "LANGUAGE" in words and words.index("LANGUAGE") + 1 < len(words) and words[
            words.index("LANGUAGE") + 1].strip("'\"").upper() != "PLPGSQL":
        raise NotUnderstood("DO in another language than plpgsql runs code safeddl cannot see")
    if body is None:
        raise NotUnderstood("DO without a body")
    texts, commits = read_block(body)
    leading, steps = _body_steps(texts, "DO block", commits)
    do = Step(Action.OTHER, text="DO", target_kind="outside-transaction" if commits else None)
    # The statement's kind is that of the one such statement, so that its rules apply
    if leading:
        return [*leading, *steps, do] if commits else [*leading, *steps]
    return [do, *steps]


def call_steps(call: Step, language: str, body: str) -> list[Step] | None:
    """``CALL p(...)`` of a procedure whose LANGUAGE and body are known: read like a DO
    block (the static SQL it may run, the kind of its one statement judged as a whole,
    so that its rules apply); the CALL step itself stays, marked ``body-read`` (or
    ``body-commits``: it may COMMIT, so it cannot run in a transaction block). None when
    the body cannot be read that way (:func:`procedure_statements`)."""
    try:
        texts, commits = procedure_statements(language, body)
        leading, steps = _body_steps(texts, "procedure's body", commits)
    except NotUnderstood:
        return None
    head = dataclasses.replace(call, target_kind="body-commits" if commits else "body-read")
    return [*leading, head, *steps]


def _body_steps(texts: list[str], what: str, commits: bool,
                ) -> tuple[list[Step], list[Step]]:
    """The steps of the statements of a body: the one statement of a kind judged as a
    whole (index builds, drops, TRUNCATE...), and the others'. ``commits``: the body may
    COMMIT (what a :class:`NotUnderstood` raised here says all the same)."""
    leading: list[Step] = []
    steps: list[Step] = []
    for sql in texts:
        syntax = read(sql)
        if not syntax.understood:
            raise NotUnderstood(f"a statement of the {what} cannot be read: {syntax.error}",
                                commits)
        own = [step for step in syntax.steps if step.action is not Action.OTHER
               and not (step.action is Action.SELECT and _system_catalog(step.table))]
        if own and own[0].action in (Action.CALL, Action.EXECUTE, Action.PREPARE):
            raise NotUnderstood(f"the {what} runs {own[0].action.value.upper()}", commits)
        if own and own[0].action in _WHOLE_STATEMENT_KINDS:
            if leading:
                raise NotUnderstood(f"a {what} that runs several statements of kinds "
                                    "judged one statement at a time (index builds, drops, "
                                    "TRUNCATE...): not read", commits)
            leading = own
        else:
            steps.extend(own)
    return leading, steps


# Statements whose rules look at the statement as a whole (its kind), not at its steps.
_WHOLE_STATEMENT_KINDS = frozenset({
    Action.CREATE_INDEX, Action.DROP_INDEX, Action.DROP_TABLE, Action.DROP_VIEW,
    Action.DROP_MATERIALIZED_VIEW, Action.TRUNCATE, Action.CLUSTER, Action.REINDEX,
    Action.REFRESH_MATERIALIZED_VIEW, Action.VACUUM, Action.VACUUM_FULL, Action.ANALYZE,
    Action.LOCK_TABLE, Action.CREATE_TABLE, Action.CREATE_VIEW,
    Action.CREATE_MATERIALIZED_VIEW, Action.COPY_FROM, Action.COPY_TO,
})


def _system_catalog(written: str | None) -> bool:
    """``pg_constraint``, ``pg_catalog.pg_class``, ``information_schema.columns``: what an
    idempotent migration looks up (a lock on them is of no concern here)."""
    if not written:
        return False
    parts = [part.lower() for part, _quoted in split_name(written)]
    if len(parts) >= 2:
        return parts[-2] in ("pg_catalog", "information_schema")
    return parts[-1].startswith("pg_")


def procedure_statements(language: str, body: str) -> tuple[list[str], bool]:
    """The statements a procedure's body runs when it is CALLed (each statement of a
    LANGUAGE sql body, the static SQL of a plpgsql one), and whether it may COMMIT or
    ROLLBACK. Raises :class:`NotUnderstood` for dynamic SQL, for a body that does not
    read, and for other languages."""
    from safeddl.sql.plpgsql import read_block

    if language == "sql":
        raws = split_script(body)
        unread = next((raw for raw in raws if raw.error), None)
        if unread is not None:
            raise NotUnderstood(f"its body cannot be read: {unread.error}")
        return [raw.text for raw in raws], False
    if language == "plpgsql":
        try:  # (dynamic SQL: NotUnderstood, which says all the same whether it may COMMIT)
            return read_block(body)
        except SqlTokenError as exc:
            raise NotUnderstood(f"its body cannot be read: {exc}") from None
    raise NotUnderstood(f"its body is in LANGUAGE {language or '(none given)'}, which "
                        "safeddl does not read")


def _function_body_reads(head: Step) -> list[Step]:
    """A LANGUAGE sql function: its body is parsed and analysed when it is created
    (check_function_bodies, on by default), which locks the relations its statements
    name. They come as steps marked ``target_kind="function-body"``. A body safeddl
    cannot read is said so (``body-unread``) rather than refusing the statement: what
    it misses is a brief ACCESS SHARE / ROW EXCLUSIVE."""
    procedure = head.action is Action.CREATE_FUNCTION and head.definition_sql is not None
    out = [dataclasses.replace(head, target_kind="procedure:sql" if procedure else None,
                               definition_sql=head.definition_sql if procedure else None,
                               text="" if head.action is Action.CREATE_FUNCTION else head.text)]
    body = head.definition_sql if head.action is not Action.CREATE_FUNCTION else head.text
    for raw in split_script(body or ""):
        syntax = read(raw.text)
        if not syntax.understood or raw.error:
            if head.action is not Action.CREATE_FUNCTION:  # a rule's action
                raise NotUnderstood(f"the rule's action cannot be read: {syntax.error}")
            return [dataclasses.replace(head, target_kind="body-unread", text="")]
        out.extend(dataclasses.replace(step, target_kind="function-body")
                   for step in syntax.steps if step.table and step.action in _BODY_DML)
    return out


def _query_reads(c: Cursor, steps: list[Step]) -> list[Step]:
    """Reads of ``CREATE TABLE / VIEW / MATERIALIZED VIEW ... AS <query>``."""
    if steps[0].action not in (Action.CREATE_TABLE, Action.CREATE_VIEW,
                               Action.CREATE_MATERIALIZED_VIEW):
        return []
    depth = 0
    for i in range(c.stop):
        tok = c.tokens[i]
        if tok.kind == "L_PAREN":
            depth += 1
        elif tok.kind == "R_PAREN":
            depth -= 1
        elif depth == 0 and tok.word == "AS" and i + 1 < c.stop and (
            c.tokens[i + 1].word in _DML_WORDS
        ):
            query = c.source[c.tokens[i + 1].start :]
            words = c.words(i + 1, c.stop)
            if len(words) >= 2 and words[-2:] in (["NO", "DATA"],):
                query = c.text_of(i + 1, c.stop - 3)
            elif words[-2:] == ["WITH", "DATA"]:
                query = c.text_of(i + 1, c.stop - 2)
            return [s for s in read(query).steps if s.table]
    return []


_SQLGLOT_LOGGER = logging.getLogger("sqlglot")
_PARSING = threading.local()


def _parse_one(text: str) -> exp.Expr:
    """``sqlglot.parse_one(text, read="postgres")`` with one dialect, tokenizer and
    parser per thread (building them costs about as much as parsing a short
    statement; both reset their state on every call)."""
    try:
        tokenizer, parser = _PARSING.tools
    except AttributeError:
        dialect = Postgres()
        tokenizer, parser = _PARSING.tools = (dialect.tokenizer(), dialect.parser())
    try:
        result = parser.parse(tokenizer.tokenize(text), text)
    finally:  # the shared tools keep nothing of the statement
        tokenizer.tokenize("")
        parser.reset()
    if not result or result[0] is None:
        raise ParseError(f"No expression was parsed from '{text}'")
    return exp.Block(expressions=result) if len(result) > 1 else result[0]


def _parse(text: str) -> exp.Expr | None:
    previous = _SQLGLOT_LOGGER.level
    _SQLGLOT_LOGGER.setLevel(logging.ERROR)  # sqlglot warns when it falls back to Command
    try:
        return _parse_one(text)
    except ParseError:
        return None
    except TokenError:
        if "$" not in text:
            raise
        # ``$1+$2``: sqlglot takes ``$1+$`` for a dollar quote; a space after each
        # positional parameter reads the same statement.
        return _parse(_SPACED_POSITIONAL.sub(r"$\1 ", text))
    finally:
        _SQLGLOT_LOGGER.setLevel(previous)


_SPACED_POSITIONAL = re.compile(r"(?<![\w$])\$(\d+)(?! )")


def _parse_error(text: str) -> str | None:
    """Where sqlglot's parser stopped, as PostgreSQL would say it."""
    try:
        _parse_one(text)
    except ParseError as exc:
        for error in exc.errors[:1]:
            near = str(error.get("highlight") or "").strip()
            where = f"line {error.get('line')}, column {error.get('col')}"
            return (f'syntax error at or near "{near}" ({where}): '
                    f"{error.get('description') or 'cannot parse'}")
    except SqlglotError:
        return None
    return None


def sqlglot_form(text: str) -> str:
    """The node type sqlglot gives this statement (``Alter``, ``Command``...) or
    ``ParseError``: pinned by a test so a sqlglot upgrade cannot change it silently."""
    tree = _parse(text)
    return "ParseError" if tree is None else type(tree).__name__


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__

