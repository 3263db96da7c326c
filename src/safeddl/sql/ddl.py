"""DDL and maintenance statements, read from sqlglot's tokens.

sqlglot gives a typed tree for some DDL and a generic ``Command`` (or a parse error)
for much of PostgreSQL's: ALTER TABLE ... VALIDATE CONSTRAINT, ATTACH PARTITION,
REINDEX, VACUUM, CLUSTER, LOCK, ... Reading every DDL statement from tokens gives
one path for all of them, whatever form a sqlglot release returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from safeddl.locks import LockMode
from safeddl.model import Action, Step
from safeddl.sql.alter_table import read_alter_table
from safeddl.sql.clauses import NotUnderstood, require_name, storage_options
from safeddl.sql.columns import (
    TABLE_CONSTRAINT_WORDS,
    read_column_def,
    read_table_constraint,
)
from safeddl.sql.tokens import Cursor, split_top_level

Reader = Callable[[Cursor], list[Step]]


def read_ddl(cursor: Cursor) -> list[Step] | None:
    """Steps for a DDL/maintenance statement, or None when it is not DDL."""
    for words, reader in _BY_FIRST_WORD.get(cursor.peek_word(), ()):
        if cursor.at(*words):
            return reader(cursor)
    return None


# -- CREATE INDEX / DROP INDEX / REINDEX / ALTER INDEX ----------------------------

def _create_index(c: Cursor) -> list[Step]:
    c.accept("CREATE")
    unique = c.accept("UNIQUE")
    c.accept("INDEX")
    concurrently = c.accept("CONCURRENTLY")
    if_not_exists = c.accept("IF", "NOT", "EXISTS")
    name = None if c.at("ON") else c.read_name()
    if not c.accept("ON"):
        raise NotUnderstood("CREATE INDEX without ON <table>")
    only = c.accept("ONLY")
    table = require_name(c, "table")
    return [Step(Action.CREATE_INDEX, table=table, name=name, unique=unique,
                 concurrently=concurrently, if_not_exists=if_not_exists, only=only,
                 columns=_index_columns(c), text=c.text_of(0, c.stop))]


def _index_columns(c: Cursor) -> tuple[str, ...]:
    """The key columns of ``... ON t [USING m] (a, "B" DESC, ...)``, case folded, when
    every key is a plain column (an expression key gives ())."""
    if c.accept("USING"):
        c.advance()
    tok = c.peek()
    if tok is None or tok.kind != "L_PAREN":
        return ()
    names = []
    for start, stop in split_top_level(c.tokens, *c.read_group()):
        first = c.tokens[start]
        rest = c.words(start + 1, stop)
        if not first.is_name or first.kind == "L_PAREN" or any(
                w not in ("ASC", "DESC", "NULLS", "FIRST", "LAST") for w in rest):
            return ()
        names.append(first.text if first.kind == "IDENTIFIER" else first.text.lower())
    return tuple(names)


def _drop_index(c: Cursor) -> list[Step]:
    c.accept("DROP", "INDEX")
    concurrently = c.accept("CONCURRENTLY")
    if_exists = c.accept("IF", "EXISTS")
    cascade = c.words(c.pos, c.stop)[-1:] == ["CASCADE"]
    return [Step(Action.DROP_INDEX, name=name, concurrently=concurrently, cascade=cascade,
                 if_not_exists=if_exists) for name in _name_list(c)]


def _reindex(c: Cursor) -> list[Step]:
    c.accept("REINDEX")
    if c.peek() is not None and c.peek().kind == "L_PAREN":  # type: ignore[union-attr]
        options = c.words(*c.read_group())
        concurrently = "CONCURRENTLY" in options
    else:
        concurrently = False
    target_kind = c.accept_any("INDEX", "TABLE", "SCHEMA", "DATABASE", "SYSTEM")
    if target_kind is None:
        raise NotUnderstood("REINDEX of an unknown kind of object")
    concurrently = c.accept("CONCURRENTLY") or concurrently
    name = c.read_name()
    step = Step(Action.REINDEX, concurrently=concurrently, target_kind=target_kind.lower(),
                name=name, table=name if target_kind == "TABLE" else None)
    return [step]


def _alter_index(c: Cursor) -> list[Step]:
    c.accept("ALTER", "INDEX")
    c.accept("IF", "EXISTS")
    if c.at("ALL", "IN", "TABLESPACE"):
        return [Step(Action.ALTER_INDEX, text=c.text_of(0, c.stop))]
    name = require_name(c, "index")
    rest = c.text_of(c.pos, c.stop)
    if c.accept("ATTACH", "PARTITION"):  # the partition's index, as ``using_index``
        return [Step(Action.ALTER_INDEX, name=name, text=rest,
                     using_index=require_name(c, "index"))]
    options = storage_options(c) if c.at("SET", "(") or c.at("RESET") else ()
    return [Step(Action.ALTER_INDEX, name=name, text=rest, options=options)]


# -- TRUNCATE / LOCK / VACUUM / ANALYZE / CLUSTER / REFRESH ----------------------

def _truncate(c: Cursor) -> list[Step]:
    c.accept("TRUNCATE")
    c.accept("TABLE")
    if c.done:
        raise NotUnderstood("TRUNCATE without a table")
    steps = []
    cascade = "CASCADE" in c.words(c.pos, c.stop)
    for start, stop in split_top_level(c.tokens, c.pos, c.stop):
        item = c.sub(start, stop)
        only = item.accept("ONLY")
        name = item.read_name()
        if name is None:
            raise NotUnderstood("TRUNCATE without a table name")
        steps.append(Step(Action.TRUNCATE, table=name, only=only, cascade=cascade))
    return steps


def _lock(c: Cursor) -> list[Step]:
    c.accept("LOCK")
    c.accept("TABLE")
    if c.done:
        raise NotUnderstood("LOCK without a table")
    words = c.words(c.pos, c.stop)
    mode = LockMode.ACCESS_EXCLUSIVE
    if "IN" in words:
        i = words.index("IN")
        j = words.index("MODE") if "MODE" in words else len(words)
        mode = LockMode.from_sql_name(" ".join(words[i + 1 : j]))
        stop = c.pos + i
    else:
        stop = c.stop - (1 if words and words[-1] == "NOWAIT" else 0)
    steps = []
    for start, end in split_top_level(c.tokens, c.pos, stop):
        item = c.sub(start, end)
        only = item.accept("ONLY")
        name = require_name(item, "table")
        steps.append(Step(Action.LOCK_TABLE, table=name, mode=mode, only=only))
    return steps


def _vacuum(c: Cursor) -> list[Step]:
    c.accept("VACUUM")
    full = False
    if c.peek() is not None and c.peek().kind == "L_PAREN":  # type: ignore[union-attr]
        g0, g1 = c.read_group()
        options = c.words(g0, g1)
        full = "FULL" in options and not _option_off(options, "FULL")
    while c.accept_any("FULL", "FREEZE", "VERBOSE", "ANALYZE", "ANALYSE"):
        full = full or c.tokens[c.pos - 1].word == "FULL"
    action = Action.VACUUM_FULL if full else Action.VACUUM
    tables = _table_list(c)
    return [Step(action, table=t, only=only) for t, only in tables] or [Step(action)]


def _analyze(c: Cursor) -> list[Step]:
    c.accept_any("ANALYZE", "ANALYSE")
    if c.peek() is not None and c.peek().kind == "L_PAREN":  # type: ignore[union-attr]
        c.skip_group()
    c.accept("VERBOSE")
    tables = _table_list(c)
    return [Step(Action.ANALYZE, table=t, only=only) for t, only in tables] or [
        Step(Action.ANALYZE)]


def _cluster(c: Cursor) -> list[Step]:
    c.accept("CLUSTER")
    if c.peek() is not None and c.peek().kind == "L_PAREN":  # type: ignore[union-attr]
        c.skip_group()
    c.accept("VERBOSE")
    if c.done:
        return [Step(Action.CLUSTER)]
    first = require_name(c, "table")
    if c.accept("ON"):  # CLUSTER index ON table (old syntax)
        return [Step(Action.CLUSTER, table=require_name(c, "table"), using_index=first)]
    using = c.read_name() if c.accept("USING") else None
    return [Step(Action.CLUSTER, table=first, using_index=using)]


def _refresh(c: Cursor) -> list[Step]:
    c.accept("REFRESH", "MATERIALIZED", "VIEW")
    concurrently = c.accept("CONCURRENTLY")
    name = require_name(c, "materialized view")
    no_data = c.at("WITH", "NO", "DATA")
    return [Step(Action.REFRESH_MATERIALIZED_VIEW, table=name, concurrently=concurrently,
                 target_kind="no-data" if no_data else None)]


# -- CREATE TABLE / VIEW / MATERIALIZED VIEW; DROP ---------------------------------

def _create_table(c: Cursor) -> list[Step]:
    c.accept("CREATE")
    foreign = False
    while word := c.accept_any("GLOBAL", "LOCAL", "TEMPORARY", "TEMP", "UNLOGGED", "FOREIGN"):
        foreign = foreign or word == "FOREIGN"
    c.accept("TABLE")
    if_not_exists = c.accept("IF", "NOT", "EXISTS")
    table = require_name(c, "table")
    steps: list[Step] = []
    parent = None
    default_partition = False
    if c.accept("PARTITION", "OF"):
        parent = require_name(c, "table")
        default_partition = "DEFAULT" in c.words(c.pos, c.stop) and "FOR" not in c.words(c.pos, c.stop)
    elif c.accept("OF"):
        c.read_name()
    if c.peek() is not None and c.peek().kind == "L_PAREN":  # type: ignore[union-attr]
        g0, g1 = c.read_group()
        for start, stop in split_top_level(c.tokens, g0, g1):
            steps.extend(_table_element(c, table, start, stop))
    parents = []
    if c.accept("INHERITS"):
        g0, g1 = c.read_group()
        parents = [c.text_of(s, e) for s, e in split_top_level(c.tokens, g0, g1)]
    # CREATE TABLE ... AS query: the query's reads are found by the caller (DML reader).
    create = Step(Action.CREATE_TABLE, table=table, parent=parent or (parents[0] if parents else None),
                  if_not_exists=if_not_exists, text=c.text_of(0, c.stop),
                  target_kind="default-partition" if default_partition else (
                      "foreign-table" if foreign else
                      "partitioned" if "PARTITION" in c.words(c.pos, c.stop) else None))
    extra = [Step(Action.INHERIT, table=table, references=p) for p in parents[1:]]
    return [create, *steps, *extra]


def _table_element(c: Cursor, table: str, start: int, stop: int) -> list[Step]:
    item = c.sub(start, stop)
    if item.at("LIKE"):
        item.advance()
        return [Step(Action.SELECT, table=require_name(item, "table"), text="LIKE")]
    if item.peek_word() in TABLE_CONSTRAINT_WORDS or item.at("NOT", "NULL"):
        return [read_table_constraint(c, table, start, stop)]
    column = read_column_def(c, table, start, stop)
    return [column.step, *column.constraints]


def _create_view(c: Cursor) -> list[Step]:
    c.accept("CREATE")
    replace = c.accept("OR", "REPLACE")
    while c.accept_any("TEMPORARY", "TEMP", "RECURSIVE"):
        pass
    materialized = c.accept("MATERIALIZED")
    c.accept("VIEW")
    if_not_exists = c.accept("IF", "NOT", "EXISTS")
    name = require_name(c, "view")
    action = Action.CREATE_MATERIALIZED_VIEW if materialized else Action.CREATE_VIEW
    return [Step(action, table=name, if_not_exists=if_not_exists, cascade=replace)]


def _drop_relation(action: Action, *words: str) -> Reader:
    def read(c: Cursor) -> list[Step]:
        c.accept(*words)
        if_exists = c.accept("IF", "EXISTS")
        all_words = c.words(c.pos, c.stop)
        cascade = bool(all_words) and all_words[-1] == "CASCADE"
        return [Step(action, table=name, cascade=cascade, if_not_exists=if_exists)
                for name in _name_list(c)]
    return read


# -- triggers, policies, statistics, comments, grants --------------------------

def _create_trigger(c: Cursor) -> list[Step]:
    words = c.words(c.pos, c.stop)
    i = _index_of_on(c)
    item = c.sub(i + 1, c.stop)
    table = require_name(item, "table")
    name_pos = words.index("TRIGGER") + 1
    function = None
    for i in range(c.pos, c.stop - 2):
        if c.tokens[i].word == "EXECUTE" and c.tokens[i + 1].word in ("FUNCTION", "PROCEDURE"):
            function = c.sub(i + 2, c.stop).read_name()
    return [Step(Action.CREATE_TRIGGER, table=table, name=c.tokens[name_pos].text,
                 function=function)]


def _drop_trigger(c: Cursor) -> list[Step]:
    c.accept("DROP", "TRIGGER")
    if_exists = c.accept("IF", "EXISTS")
    name = c.read_name()
    if not c.accept("ON"):
        raise NotUnderstood("DROP TRIGGER without ON <table>")
    return [Step(Action.DROP_TRIGGER, table=require_name(c, "table"), name=name,
                 if_not_exists=if_exists)]


def _policy(c: Cursor) -> list[Step]:
    c.advance()  # CREATE / ALTER / DROP
    c.accept("POLICY")
    c.accept("IF", "EXISTS")
    name = c.read_name()
    if not c.accept("ON"):
        raise NotUnderstood("POLICY without ON <table>")
    return [Step(Action.CREATE_POLICY, table=require_name(c, "table"), name=name)]


def _create_statistics(c: Cursor) -> list[Step]:
    words = c.words(c.pos, c.stop)
    if "FROM" not in words:
        raise NotUnderstood("CREATE STATISTICS without FROM <table>")
    item = c.sub(c.pos + words.index("FROM") + 1, c.stop)
    c.accept("CREATE", "STATISTICS")
    c.accept("IF", "NOT", "EXISTS")
    name = None if c.at("ON") or c.at("(") else c.read_name()
    return [Step(Action.CREATE_STATISTICS, table=require_name(item, "table"), name=name)]


def _drop_statistics(c: Cursor) -> list[Step]:
    """``DROP STATISTICS [IF EXISTS] s, ...``: SHARE UPDATE EXCLUSIVE on each one's table."""
    c.accept("DROP", "STATISTICS")
    if_exists = c.accept("IF", "EXISTS")
    return [Step(Action.DROP_STATISTICS, name=name, if_not_exists=if_exists)
            for name in _name_list(c)]


_COMMENT_ON_RELATION = {"TABLE", "VIEW", "MATERIALIZED", "FOREIGN"}


def _comment(c: Cursor) -> list[Step]:
    c.accept("COMMENT", "ON")
    kind = c.peek_word()
    if kind in _COMMENT_ON_RELATION:
        while c.accept_any("TABLE", "VIEW", "MATERIALIZED", "FOREIGN"):
            pass
        return [Step(Action.COMMENT, table=require_name(c, "table"), target_kind="table")]
    if kind == "COLUMN":
        c.advance()
        full = require_name(c, "column")
        table, _, column = full.rpartition(".")
        if not table:
            raise NotUnderstood("COMMENT ON COLUMN needs <table>.<column>")
        return [Step(Action.COMMENT, table=table, column=column, target_kind="column")]
    if kind == "CONSTRAINT":
        c.advance()
        name = c.read_name()
        if c.accept("ON"):
            c.accept("DOMAIN")
            return [Step(Action.COMMENT, table=require_name(c, "table"), name=name,
                         target_kind="constraint")]
    if kind == "INDEX":
        c.advance()
        return [Step(Action.COMMENT, name=require_name(c, "index"), target_kind="index")]
    return [Step(Action.COMMENT, target_kind=kind.lower() or None)]


def _grant(c: Cursor) -> list[Step]:
    words = c.words(c.pos, c.stop)
    if "ON" not in words:
        return [Step(Action.GRANT, target_kind="role")]  # GRANT role TO role
    item = c.sub(c.pos + words.index("ON") + 1, c.stop)
    if item.at("ALL", "TABLES", "IN", "SCHEMA"):
        return [Step(Action.GRANT, target_kind="schema")]
    kind = item.accept_any("TABLE") or ("TABLE" if item.peek_word() not in (
        "SEQUENCE", "DATABASE", "DOMAIN", "FUNCTION", "PROCEDURE", "ROUTINE", "SCHEMA",
        "LANGUAGE", "TYPE", "TABLESPACE", "FOREIGN", "LARGE", "PARAMETER", "ALL") else None)
    if kind is None:
        return [Step(Action.GRANT, target_kind=item.peek_word().lower())]
    stop_word = "TO" if words[0] == "GRANT" else "FROM"
    names_stop = item.pos
    while names_stop < item.stop and c.tokens[names_stop].word != stop_word:
        names_stop += 1
    names = item.sub(item.pos, names_stop)
    return [Step(Action.GRANT, table=name, target_kind="table") for name in _name_list(names)]


# -- small statements -----------------------------------------------------------------

def _alter_sequence(c: Cursor) -> list[Step]:
    c.accept("ALTER", "SEQUENCE")
    c.accept("IF", "EXISTS")
    name = c.read_name()
    owner = None
    words = c.words(c.pos, c.stop)
    if "OWNED" in words:
        item = c.sub(c.pos + words.index("OWNED") + 2, c.stop)  # OWNED BY
        column = item.read_name()
        if column is not None and column.upper() != "NONE" and "." in column:
            owner = column.rpartition(".")[0]
    return [Step(Action.ALTER_SEQUENCE, name=name, table=owner, text=c.text_of(0, c.stop))]


def _alter_trigger(c: Cursor) -> list[Step]:
    c.accept("ALTER", "TRIGGER")
    name = c.read_name()
    if not c.accept("ON"):
        raise NotUnderstood("ALTER TRIGGER without ON <table>")
    return [Step(Action.ALTER_TABLE_OTHER, table=require_name(c, "table"), name=name,
                 target_kind="trigger", text=c.text_of(0, c.stop))]


def _alter_type(c: Cursor) -> list[Step]:
    words = c.words(c.pos, c.stop)
    if "ADD" in words and "VALUE" in words:
        c.accept("ALTER", "TYPE")
        return [Step(Action.ALTER_TYPE_ADD_VALUE, name=c.read_name())]
    return [Step(Action.OTHER, text=c.text_of(0, c.stop))]


def _rule(c: Cursor) -> list[Step]:
    """``CREATE [OR REPLACE] RULE r AS ON event TO t ... DO [ALSO | INSTEAD] action``,
    ``DROP RULE [IF EXISTS] r ON t``, ``ALTER RULE r ON t RENAME TO s``: ACCESS
    EXCLUSIVE on the table; the action's statements are analysed when the rule is
    created (like a SQL function body: see safeddl.sql.read)."""
    verb = c.advance().word
    c.accept("OR", "REPLACE")
    c.accept("RULE")
    if_exists = c.accept("IF", "EXISTS")
    name = c.read_name()
    if verb != "CREATE":
        if not c.accept("ON"):
            raise NotUnderstood(f"{verb} RULE without ON <table>")
        return [Step(Action.ALTER_TABLE_OTHER, table=require_name(c, "table"), name=name,
                     if_not_exists=if_exists, text=f"{verb} RULE")]
    words = c.words(c.pos, c.stop)
    if "TO" not in words or "DO" not in words:
        raise NotUnderstood("CREATE RULE without ON <event> TO <table> ... DO")
    c.pos += words.index("TO") + 1
    table = require_name(c, "table")
    do = c.pos + c.words(c.pos, c.stop).index("DO") + 1
    while do < c.stop and c.tokens[do].word in ("ALSO", "INSTEAD"):
        do += 1
    head = Step(Action.ALTER_TABLE_OTHER, table=table, name=name, text="CREATE RULE")
    if do >= c.stop or c.tokens[do].word == "NOTHING":
        return [head]
    if c.tokens[do].kind == "L_PAREN":
        body = c.text_of(do + 1, c.stop - 1)
    else:
        body = c.text_of(do, c.stop)
    return [dataclasses.replace(head, target_kind="sql-body", definition_sql=body)]


def _publication(c: Cursor) -> list[Step]:
    """``CREATE PUBLICATION p FOR TABLE a, b ...`` / ``ALTER PUBLICATION p ADD | SET |
    DROP TABLE a ...``: SHARE UPDATE EXCLUSIVE on each table named (not on a schema's
    tables, nor for ALL TABLES); ``DROP PUBLICATION`` and option changes take none."""
    words = c.words(0, c.stop)
    steps = [Step(Action.OTHER, text=" ".join(words[:2]))]
    i = 0
    while i < c.stop:
        if c.tokens[i].word == "TABLE" and (i == 0 or c.tokens[i - 1].word != "ALL"):
            for start, stop in split_top_level(c.tokens, i + 1, c.stop):
                item = c.sub(start, stop)
                if item.at("TABLE"):
                    item.advance()
                if item.at("TABLES", "IN", "SCHEMA") or item.at("CURRENT_SCHEMA"):
                    break
                only = item.accept("ONLY")
                table = item.read_name()
                if table is None:
                    break
                steps.append(Step(Action.PUBLISH_TABLE, table=table, only=only))
            break
        i += 1
    return steps


_FALSE = ("FALSE", "OFF", "0", "'FALSE'", "'OFF'", "'0'", "NONE")


def _with_options(c: Cursor, opener: str = "WITH") -> dict[str, str]:
    """``WITH (name = value, name, ...)`` (or ``SET (...)``) at the end of the statement:
    upper-cased names -> upper-cased values (a bare name is TRUE)."""
    words = c.words(0, c.stop)
    options: dict[str, str] = {}
    for i in range(c.stop - 1, -1, -1):
        if c.tokens[i].word == opener and i + 1 < c.stop and c.tokens[i + 1].kind == "L_PAREN":
            for start, stop in split_top_level(c.tokens, i + 2, c.stop - 1):
                parts = words[start:stop]
                if parts:
                    value = c.tokens[stop - 1].text.upper() if len(parts) > 1 else "TRUE"
                    options[parts[0]] = value if len(parts) > 1 else "TRUE"
            break
    return options


def _subscription(c: Cursor) -> list[Step]:
    """``CREATE / ALTER / DROP SUBSCRIPTION``: no lock on a table, unless it connects to
    the publisher to list its tables (CREATE with ``connect``, the default; ALTER ...
    REFRESH PUBLICATION, and SET / ADD / DROP PUBLICATION with ``refresh``, the
    default): then ACCESS SHARE on each local table of that list, which only the
    publisher knows. Creating a replication slot (CREATE's default ``create_slot``)
    and refreshing cannot run inside a transaction block."""
    verb = c.advance().word
    c.accept("SUBSCRIPTION")
    c.accept("IF", "EXISTS")
    name = c.read_name()
    if name is None:
        raise NotUnderstood(f"{verb} SUBSCRIPTION without a name")
    words = c.words(c.pos, c.stop)
    options = _with_options(c, "SET" if verb == "ALTER" and c.at("SET", "(") else "WITH")
    connects, outside = False, False
    if verb == "CREATE":
        if "CONNECTION" not in words or "PUBLICATION" not in words:
            raise NotUnderstood("CREATE SUBSCRIPTION without CONNECTION ... PUBLICATION")
        connects = options.get("CONNECT", "TRUE") not in _FALSE
        outside = connects and options.get("CREATE_SLOT", "TRUE") not in _FALSE \
            and options.get("SLOT_NAME", "") != "NONE"
    elif verb == "ALTER":
        if not words:
            raise NotUnderstood("ALTER SUBSCRIPTION without an action")
        refresh = words[0] == "REFRESH" or (
            words[1:2] == ["PUBLICATION"] and words[0] in ("SET", "ADD", "DROP")
            and options.get("REFRESH", "TRUE") not in _FALSE)
        connects = outside = refresh
    kind = ("subscription-connects-outside" if outside
            else "subscription-connects" if connects else "subscription")
    if verb == "DROP":
        kind = "subscription-drop"  # outside a transaction block, if it has a slot
    # ``slot_name``, when the statement sets it: "NONE" (no replication slot) or a name
    slot = ("NONE" if options["SLOT_NAME"] == "NONE" else "named",) \
        if "SLOT_NAME" in options else ()
    return [Step(Action.OTHER, name=name, target_kind=kind, text=f"{verb} SUBSCRIPTION",
                 options=slot)]


def _drop_function(c: Cursor) -> list[Step]:
    """``DROP FUNCTION [IF EXISTS] f [(args)], ... [CASCADE | RESTRICT]``."""
    c.accept("DROP", "FUNCTION")
    if_exists = c.accept("IF", "EXISTS")
    cascade = c.words(c.pos, c.stop)[-1:] == ["CASCADE"]
    steps = []
    for start, stop in split_top_level(c.tokens, c.pos, c.stop):
        name = c.sub(start, stop).read_name()
        if name is None:
            raise NotUnderstood("DROP FUNCTION without a function name")
        steps.append(Step(Action.DROP_FUNCTION, function=name, cascade=cascade,
                          if_not_exists=if_exists))
    return steps


def _create_function(c: Cursor) -> list[Step]:
    """``CREATE [OR REPLACE] FUNCTION|PROCEDURE ...``: a body in LANGUAGE sql is parsed
    and analysed when the function is created (check_function_bodies, on by default),
    which locks the tables its statements name; other languages take no table lock."""
    c.accept("CREATE")
    c.accept("OR", "REPLACE")
    procedure = c.accept_any("FUNCTION", "PROCEDURE") == "PROCEDURE"
    name = c.read_name()
    head = Step(Action.CREATE_FUNCTION, function=name)
    signature = ""
    if not c.done and c.tokens[c.pos].kind == "L_PAREN":
        signature = " ".join(t.text for t in c.tokens[c.pos:_after_group(c, c.pos)]).lower()
    language, body = None, None
    atomic = None
    i = c.pos
    while i < c.stop:
        tok = c.tokens[i]
        if tok.kind == "L_PAREN":
            i = _after_group(c, i)
            continue
        if tok.word == "LANGUAGE" and i + 1 < c.stop:
            language = c.tokens[i + 1].text.strip("'\"").lower()
        elif tok.word == "AS" and i + 1 < c.stop and c.tokens[i + 1].kind in (
                "STRING", "HEREDOC_STRING", "RAW_STRING"):
            body = c.tokens[i + 1].text
        elif tok.word == "BEGIN" and i + 1 < c.stop and c.tokens[i + 1].word == "ATOMIC":
            atomic = i + 2
            break
        i += 1
    if atomic is not None:
        end = c.stop - 1 if c.stop - 1 > atomic and c.tokens[c.stop - 1].word == "END" else c.stop
        body = c.text_of(atomic, end)
        language = "sql"
    if procedure and body is not None:
        # What a later CALL runs: the catalog learns it (``type_sql``: the arguments)
        head = dataclasses.replace(head, target_kind=f"procedure:{language or ''}",
                                   definition_sql=body, type_sql=signature)
    if language != "sql" or not body:
        return [head]
    # the body's statements are read by safeddl.sql.read
    return [dataclasses.replace(head, target_kind="sql-body", text=body)]


def _after_group(c: Cursor, i: int) -> int:
    sub = c.sub(i, c.stop)
    sub.skip_group()
    return sub.pos


def _other(c: Cursor) -> list[Step]:
    return [Step(Action.OTHER, text=" ".join(c.words(0, min(3, c.stop))))]


def _alter_table(c: Cursor) -> list[Step]:
    return read_alter_table(c)


# -- helpers ------------------------------------------------------------------------

def _name_list(c: Cursor) -> list[str]:
    """``a, s.b, "C"`` up to the end or CASCADE/RESTRICT."""
    names = []
    for start, stop in split_top_level(c.tokens, c.pos, c.stop):
        item = c.sub(start, stop)
        item.accept("ONLY")
        name = item.read_name()
        if name is not None and name.upper() not in ("CASCADE", "RESTRICT"):
            names.append(name)
    return names


def _table_list(c: Cursor) -> list[tuple[str, bool]]:
    """``ONLY t (a, b), u`` for VACUUM / ANALYZE: (name, only) pairs."""
    names = []
    for start, stop in split_top_level(c.tokens, c.pos, c.stop):
        item = c.sub(start, stop)
        only = item.accept("ONLY")
        name = item.read_name()
        if name is not None:
            names.append((name, only))
    return names


def _option_off(options: list[str], name: str) -> bool:
    i = options.index(name)
    return i + 1 < len(options) and options[i + 1] in ("FALSE", "OFF", "0")


def _index_of_on(c: Cursor) -> int:
    for i in range(c.pos, c.stop):
        if c.tokens[i].word == "ON":
            return i
    raise NotUnderstood("expected ON <table>")


_DISPATCH: list[tuple[tuple[str, ...], Reader]] = [
    (("CREATE", "INDEX"), _create_index),
    (("CREATE", "UNIQUE", "INDEX"), _create_index),
    (("DROP", "INDEX"), _drop_index),
    (("REINDEX",), _reindex),
    (("ALTER", "INDEX"), _alter_index),
    (("ALTER", "TABLE"), _alter_table),
    (("ALTER", "VIEW"), _alter_table),
    (("ALTER", "MATERIALIZED", "VIEW"), _alter_table),
    (("ALTER", "FOREIGN", "TABLE"), _alter_table),
    (("TRUNCATE",), _truncate),
    (("LOCK",), _lock),
    (("VACUUM",), _vacuum),
    (("ANALYZE",), _analyze),
    (("ANALYSE",), _analyze),
    (("CLUSTER",), _cluster),
    (("REFRESH", "MATERIALIZED", "VIEW"), _refresh),
    (("CREATE", "TABLE"), _create_table),
    (("CREATE", "UNLOGGED", "TABLE"), _create_table),
    (("CREATE", "FOREIGN", "TABLE"), _create_table),
    (("CREATE", "TEMP"), _create_table),
    (("CREATE", "TEMPORARY"), _create_table),
    (("CREATE", "GLOBAL"), _create_table),
    (("CREATE", "LOCAL"), _create_table),
    (("CREATE", "VIEW"), _create_view),
    (("CREATE", "OR", "REPLACE", "VIEW"), _create_view),
    (("CREATE", "OR", "REPLACE", "TEMP"), _create_view),
    (("CREATE", "OR", "REPLACE", "TEMPORARY"), _create_view),
    (("CREATE", "OR", "REPLACE", "RECURSIVE"), _create_view),
    (("CREATE", "RECURSIVE", "VIEW"), _create_view),
    (("CREATE", "MATERIALIZED", "VIEW"), _create_view),
    (("DROP", "TABLE"), _drop_relation(Action.DROP_TABLE, "DROP", "TABLE")),
    (("DROP", "VIEW"), _drop_relation(Action.DROP_VIEW, "DROP", "VIEW")),
    (("DROP", "MATERIALIZED", "VIEW"),
     _drop_relation(Action.DROP_MATERIALIZED_VIEW, "DROP", "MATERIALIZED", "VIEW")),
    (("DROP", "FOREIGN", "TABLE"), _drop_relation(Action.DROP_TABLE, "DROP", "FOREIGN", "TABLE")),
    (("CREATE", "TRIGGER"), _create_trigger),
    (("CREATE", "OR", "REPLACE", "TRIGGER"), _create_trigger),
    (("CREATE", "CONSTRAINT", "TRIGGER"), _create_trigger),
    (("DROP", "TRIGGER"), _drop_trigger),
    (("ALTER", "TRIGGER"), _alter_trigger),
    (("CREATE", "POLICY"), _policy),
    (("ALTER", "POLICY"), _policy),
    (("DROP", "POLICY"), _policy),
    (("CREATE", "STATISTICS"), _create_statistics),
    (("COMMENT", "ON"), _comment),
    (("GRANT",), _grant),
    (("REVOKE",), _grant),
    (("ALTER", "SEQUENCE"), _alter_sequence),
    (("ALTER", "TYPE"), _alter_type),
    (("CREATE", "RULE"), _rule),
    (("CREATE", "OR", "REPLACE", "RULE"), _rule),
    (("DROP", "RULE"), _rule),
    (("ALTER", "RULE"), _rule),
    (("CREATE", "PUBLICATION"), _publication),
    (("ALTER", "PUBLICATION"), _publication),
    (("DROP", "PUBLICATION"), _publication),
    (("DROP", "STATISTICS"), _drop_statistics),
    (("ALTER", "STATISTICS"), _other),
    (("DROP", "FUNCTION"), _drop_function),
    (("CREATE", "SUBSCRIPTION"), _subscription),
    (("ALTER", "SUBSCRIPTION"), _subscription),
    (("DROP", "SUBSCRIPTION"), _subscription),
    (("CREATE", "FUNCTION"), _create_function),
    (("CREATE", "OR", "REPLACE", "FUNCTION"), _create_function),
    (("CREATE", "PROCEDURE"), _create_function),
    (("CREATE", "OR", "REPLACE", "PROCEDURE"), _create_function),
]

# The entries by their first word, in order: only those can match (the first that does
# is the first of _DISPATCH that does).
_BY_FIRST_WORD: dict[str, list[tuple[tuple[str, ...], Reader]]] = {}
for _entry in _DISPATCH:
    _BY_FIRST_WORD.setdefault(_entry[0][0], []).append(_entry)
del _entry
