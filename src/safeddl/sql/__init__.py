"""Everything safeddl knows about SQL syntax; the only place that imports sqlglot.

``read(text)`` turns one statement into :class:`Syntax`: the steps it performs on
which relations, with identifiers as written. It never raises: what cannot be read
comes back with ``error`` set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError

from safeddl.model import Action, Step
from safeddl.sql.clauses import NotUnderstood
from safeddl.sql.ddl import read_ddl
from safeddl.sql.dml import dml_steps, number_positional
from safeddl.sql.names import local_name, qualified_name, quote_ident, schema_of, split_name
from safeddl.sql.split import RawStatement, split_script
from safeddl.sql.tokens import Cursor, SqlTokenError, tokenize

__all__ = [
    "RawStatement",
    "Syntax",
    "local_name",
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
    ("SECURITY", "LABEL"), ("REASSIGN", "OWNED"), ("DROP", "OWNED"),
}
_OUTSIDE_TRANSACTION = {
    ("CREATE", "DATABASE"), ("DROP", "DATABASE"), ("ALTER", "SYSTEM"),
    ("CREATE", "TABLESPACE"), ("DROP", "TABLESPACE"), ("CREATE", "SUBSCRIPTION"),
}


@dataclass(frozen=True)
class Syntax:
    """What a statement does, as steps on relations named as written."""

    steps: tuple[Step, ...]
    error: str | None = None  # why the statement could not be read

    @property
    def understood(self) -> bool:
        return self.error is None


def read(text: str) -> Syntax:
    """Read one statement. Never raises."""
    try:
        tokens = tokenize(text)
    except SqlTokenError as exc:
        return Syntax((Step(Action.UNPARSED, text=text),), f"cannot tokenize: {exc}")
    if not tokens:
        return Syntax((Step(Action.OTHER, text=""),))
    try:
        return Syntax(tuple(_read_tokens(Cursor(tokens, text))))
    except NotUnderstood as exc:
        return Syntax((Step(Action.UNPARSED, text=text),), str(exc))
    except IndexError:
        return Syntax((Step(Action.UNPARSED, text=text),), "the statement is incomplete")
    except (SqlglotError, ValueError, KeyError, AttributeError, TypeError,
            RecursionError) as exc:
        return Syntax((Step(Action.UNPARSED, text=text),), f"cannot parse: {_short(exc)}")


def _read_tokens(c: Cursor) -> list[Step]:
    first = c.peek_word()
    pair = (first, c.peek_word(1))
    if first in _DML_WORDS:
        return _dml(c)
    if first == "COPY":
        return _copy(c)
    if first == "EXPLAIN":
        return _explain(c)
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
    if first in ("CREATE", "ALTER", "DROP") and _catalog_object(c):
        return [Step(Action.OTHER, text=" ".join(c.words(0, min(3, c.stop))))]
    if pair in _OUTSIDE_TRANSACTION:
        return [Step(Action.OTHER, target_kind="outside-transaction",
                     text=" ".join(pair))]
    if pair in _NO_TABLE_LOCK or pair[:1] == ("COMMENT",):
        return [Step(Action.OTHER, text=" ".join(pair))]
    if first == "DO":
        return _do_block(c)
    if first in ("DO", "CALL", "EXECUTE", "IMPORT"):
        raise NotUnderstood(f"{first} runs code whose statements safeddl cannot see")
    raise NotUnderstood(f"unknown statement {' '.join(w for w in pair if w)}")


def _dml(c: Cursor) -> list[Step]:
    tree = _parse(number_positional(c.source, c.tokens))
    if isinstance(tree, exp.Command) or tree is None:
        raise NotUnderstood("sqlglot could not read this statement")
    steps = dml_steps(tree)
    if not steps:
        return [Step(Action.SELECT)]  # SELECT 1, VALUES (...): no relation
    return steps


def _copy(c: Cursor) -> list[Step]:
    """``COPY t [(cols)] FROM|TO ...`` or ``COPY (query) TO ...``, from tokens (sqlglot
    cannot parse every option list)."""
    c.accept("COPY")
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
})


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
    if words[0] == "DROP" and c.words(c.pos, c.stop)[-1:] == ["CASCADE"]:
        raise NotUnderstood(f"DROP {kind} ... CASCADE also drops what depends on it "
                            "(columns, indexes, foreign tables): not known here")
    return True


def _do_block(c: Cursor) -> list[Step]:
    """``DO [LANGUAGE plpgsql] $$ ... $$``: the steps of the static SQL it may run."""
    from safeddl.sql.plpgsql import static_statements

    body = next((tok.text for tok in c.tokens[c.pos:c.stop]
                 if tok.kind in ("STRING", "HEREDOC_STRING", "RAW_STRING")), None)
    words = c.words(0, c.stop)
    if "LANGUAGE" in words and words.index("LANGUAGE") + 1 < len(words) and words[
            words.index("LANGUAGE") + 1].strip("'\"").upper() != "PLPGSQL":
        raise NotUnderstood("DO in another language than plpgsql runs code safeddl cannot see")
    if body is None:
        raise NotUnderstood("DO without a body")
    leading: list[Step] = []
    steps: list[Step] = []
    for sql in static_statements(body):
        syntax = read(sql)
        if not syntax.understood:
            raise NotUnderstood(f"a statement of the DO block cannot be read: {syntax.error}")
        own = [step for step in syntax.steps if step.action is not Action.OTHER
               and not (step.action is Action.SELECT and _system_catalog(step.table))]
        if own and own[0].action in _WHOLE_STATEMENT_KINDS:
            if leading:
                raise NotUnderstood("a DO block that runs several statements of kinds "
                                    "judged one statement at a time (index builds, drops, "
                                    "TRUNCATE...): not read")
            leading = own
        else:
            steps.extend(own)
    # The statement's kind is that of the one such statement, so that its rules apply
    return [*leading, *steps] if leading else [Step(Action.OTHER, text="DO"), *steps]


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


def _function_body_reads(head: Step) -> list[Step]:
    """A LANGUAGE sql function: its body is parsed and analysed when it is created
    (check_function_bodies, on by default), which locks the relations its statements
    name. They come as steps marked ``target_kind="function-body"``. A body safeddl
    cannot read is said so (``body-unread``) rather than refusing the statement: what
    it misses is a brief ACCESS SHARE / ROW EXCLUSIVE."""
    out = [dataclasses.replace(head, target_kind=None, definition_sql=None,
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


def _parse(text: str) -> exp.Expr | None:
    import logging

    logger = logging.getLogger("sqlglot")
    previous = logger.level
    logger.setLevel(logging.ERROR)  # sqlglot warns when it falls back to Command
    try:
        return sqlglot.parse_one(text, read="postgres")
    except ParseError:
        return None
    finally:
        logger.setLevel(previous)


def sqlglot_form(text: str) -> str:
    """The node type sqlglot gives this statement (``Alter``, ``Command``...) or
    ``ParseError``: pinned by a test so a sqlglot upgrade cannot change it silently."""
    tree = _parse(text)
    return "ParseError" if tree is None else type(tree).__name__


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__

