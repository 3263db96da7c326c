"""Column definitions and table constraints, read from tokens.

Shared by CREATE TABLE and ALTER TABLE ... ADD COLUMN / ADD CONSTRAINT so that both
see a default, a type or a constraint the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from safeddl.model import Action, ConstraintType, Step, Volatility
from safeddl.sql.tokens import Cursor

COLUMN_CONSTRAINT_WORDS = (
    "CONSTRAINT", "NOT", "NULL", "DEFAULT", "PRIMARY", "UNIQUE", "REFERENCES", "CHECK",
    "GENERATED", "COLLATE", "DEFERRABLE", "INITIALLY", "COMPRESSION", "STORAGE",
)
TABLE_CONSTRAINT_WORDS = ("CONSTRAINT", "CHECK", "UNIQUE", "PRIMARY", "FOREIGN", "EXCLUDE")

# What pg_proc.provolatile says of the functions people put in defaults.
_VOLATILE = frozenset(
    """random clock_timestamp timeofday gen_random_uuid uuid_generate_v1 uuid_generate_v1mc
    uuid_generate_v4 uuidv4 uuidv7 nextval setval txid_current pg_current_xact_id
    random_normal gen_random_bytes""".split()
)
_STABLE = frozenset(
    """now current_timestamp transaction_timestamp statement_timestamp localtimestamp
    current_date current_time localtime current_user session_user current_role user
    current_schema current_setting to_char to_timestamp to_date""".split()
)
_IMMUTABLE = frozenset(
    """lower upper abs coalesce nullif length btrim trim ltrim rtrim round floor ceil
    greatest least make_date make_timestamp md5 concat_ws jsonb_build_object
    json_build_object jsonb_build_array array_length substr substring replace
    int4 int8 text numeric""".split()
)
_NO_PAREN_FUNCTIONS = frozenset(
    {"CURRENT_TIMESTAMP", "CURRENT_DATE", "CURRENT_TIME", "LOCALTIMESTAMP", "LOCALTIME",
     "CURRENT_USER", "SESSION_USER", "CURRENT_ROLE", "USER", "CURRENT_SCHEMA",
     "CURRENT_CATALOG"}
)
_SERIAL_TYPES = frozenset({"SERIAL", "BIGSERIAL", "SMALLSERIAL", "SERIAL2", "SERIAL4", "SERIAL8"})


def volatility_of(cursor: Cursor, start: int, stop: int) -> Volatility:
    """The worst volatility of the functions called in tokens[start:stop]."""
    worst = Volatility.IMMUTABLE
    rank = [Volatility.IMMUTABLE, Volatility.STABLE, Volatility.UNKNOWN, Volatility.VOLATILE]
    tokens = cursor.tokens
    for i in range(start, stop):
        tok = tokens[i]
        word = tok.word
        if word in _NO_PAREN_FUNCTIONS:
            found = Volatility.STABLE
        elif tok.is_name and i + 1 < stop and tokens[i + 1].kind == "L_PAREN":
            name = tok.text.lower() if tok.kind != "IDENTIFIER" else tok.text
            if name in _VOLATILE:
                found = Volatility.VOLATILE
            elif name in _STABLE:
                found = Volatility.STABLE
            elif name in _IMMUTABLE or word in ("CAST", "ARRAY", "ROW", "INTERVAL"):
                found = Volatility.IMMUTABLE
            else:
                found = Volatility.UNKNOWN
        else:
            continue
        if rank.index(found) > rank.index(worst):
            worst = found
    return worst


def is_null_literal(cursor: Cursor, start: int, stop: int) -> bool:
    words = [w for w in cursor.words(start, stop) if w not in ("(", ")")]
    return words == ["NULL"] or (len(words) >= 1 and words[0] == "NULL" and "::" not in words)


@dataclass(frozen=True)
class ColumnDef:
    step: Step  # an ADD_COLUMN step
    constraints: tuple[Step, ...]  # inline REFERENCES / UNIQUE / PRIMARY KEY / CHECK


def read_column_def(cursor: Cursor, table: str | None, start: int, stop: int,
                    if_not_exists: bool = False) -> ColumnDef:
    """``name type [constraints...]`` in tokens[start:stop]."""
    c = cursor.sub(start, stop)
    column = c.read_name() or ""
    type_start, type_stop = c.until(*COLUMN_CONSTRAINT_WORDS)
    type_sql = c.text_of(type_start, type_stop)
    type_words = c.words(type_start, type_stop)
    default_sql: str | None = None
    volatility = Volatility.NONE
    generated: str | None = None
    not_null = False
    inline: list[Step] = []
    if type_words and type_words[0] in _SERIAL_TYPES:
        generated = "serial"
        volatility = Volatility.VOLATILE
        not_null = True
    while not c.done:
        constraint_name = None
        if c.accept("CONSTRAINT"):
            constraint_name = c.read_name()
        if c.accept("NOT", "NULL"):
            not_null = True
        elif c.accept("NULL"):
            pass
        elif c.accept("DEFAULT"):
            d0, d1 = c.until(*COLUMN_CONSTRAINT_WORDS)
            default_sql = c.text_of(d0, d1)
            volatility = (
                Volatility.NONE if is_null_literal(c, d0, d1) else volatility_of(c, d0, d1)
            )
        elif c.accept("GENERATED"):
            g0, g1 = c.until(*[w for w in COLUMN_CONSTRAINT_WORDS if w != "GENERATED"])
            words = c.words(g0, g1)
            if "IDENTITY" in words:
                generated = "identity"
                not_null = True
                volatility = Volatility.VOLATILE
            elif "VIRTUAL" in words:
                generated = "virtual"
            elif "STORED" in words:
                generated = "stored"
            else:
                generated = "default-kind"  # STORED before PG 18, VIRTUAL from 18
            default_sql = c.text_of(g0, g1)
        elif c.at("PRIMARY", "KEY") or c.at("UNIQUE"):
            kind = ConstraintType.PRIMARY_KEY if c.accept("PRIMARY", "KEY") else None
            if kind is None:
                c.accept("UNIQUE")
                kind = ConstraintType.UNIQUE
            r0, r1 = c.until(*COLUMN_CONSTRAINT_WORDS)
            if kind is ConstraintType.PRIMARY_KEY:
                not_null = True
            inline.append(Step(Action.ADD_CONSTRAINT, table=table, column=column,
                               name=constraint_name, constraint_type=kind,
                               definition_sql=c.text_of(r0 - (2 if kind is ConstraintType.PRIMARY_KEY else 1), r1)))
        elif c.accept("REFERENCES"):
            ref = c.read_name()
            r0, r1 = c.until(*[w for w in COLUMN_CONSTRAINT_WORDS if w not in ("NOT", "NULL")])
            inline.append(Step(Action.ADD_CONSTRAINT, table=table, column=column,
                               name=constraint_name, constraint_type=ConstraintType.FOREIGN_KEY,
                               references=ref, definition_sql=f"REFERENCES {ref} {c.text_of(r0, r1)}".strip()))
        elif c.accept("CHECK"):
            r0, r1 = c.until(*COLUMN_CONSTRAINT_WORDS)
            no_inherit = "INHERIT" in c.words(r0, r1)
            inline.append(Step(Action.ADD_CONSTRAINT, table=table, column=column,
                               name=constraint_name, constraint_type=ConstraintType.CHECK,
                               definition_sql="CHECK " + c.text_of(r0, r1), cascade=no_inherit))
        else:
            c.advance()  # COLLATE x, DEFERRABLE, INITIALLY ..., COMPRESSION x, STORAGE x
    step = Step(
        Action.ADD_COLUMN, table=table, column=column, type_sql=type_sql,
        default_sql=default_sql, volatility=volatility, not_null=not_null,
        generated=generated, if_not_exists=if_not_exists,
        unique=any(s.constraint_type in (ConstraintType.UNIQUE, ConstraintType.PRIMARY_KEY)
                   for s in inline),
        text=cursor.text_of(start, stop),
    )
    return ColumnDef(step, tuple(inline))


def read_table_constraint(cursor: Cursor, table: str | None, start: int, stop: int,
                          action: Action = Action.ADD_CONSTRAINT) -> Step:
    """``[CONSTRAINT name] CHECK (...) | UNIQUE ... | PRIMARY KEY ... | FOREIGN KEY ...
    | EXCLUDE ... | NOT NULL col`` with NOT VALID / USING INDEX, in tokens[start:stop]."""
    c = cursor.sub(start, stop)
    name = c.read_name() if c.accept("CONSTRAINT") else None
    body_start = c.pos
    kind: ConstraintType | None = None
    references = None
    using_index = None
    column = None
    if c.accept("CHECK"):
        kind = ConstraintType.CHECK
    elif c.accept("UNIQUE"):
        kind = ConstraintType.UNIQUE
    elif c.accept("PRIMARY", "KEY"):
        kind = ConstraintType.PRIMARY_KEY
    elif c.accept("FOREIGN", "KEY"):
        kind = ConstraintType.FOREIGN_KEY
    elif c.accept("EXCLUDE"):
        kind = ConstraintType.EXCLUDE
    elif c.accept("NOT", "NULL"):
        kind = ConstraintType.NOT_NULL
        column = c.read_name()
    words = c.words(c.pos, c.stop)
    while not c.done:
        if c.accept("REFERENCES"):
            references = c.read_name()
        elif c.accept("USING", "INDEX"):
            if c.peek_word() == "TABLESPACE":  # EXCLUDE/UNIQUE ... USING INDEX TABLESPACE x
                c.advance()
                c.read_name()
            else:
                using_index = c.read_name()
        else:
            c.skip_group()
    not_valid = _ends_with_not_valid(words)
    body_stop = stop - 2 if not_valid else stop
    # NOT ENFORCED (PostgreSQL 18): the constraint is never checked, so no scan either
    not_valid = not_valid or _not_enforced(words)
    columns = _first_group_names(cursor, body_start, stop) if kind in (
        ConstraintType.UNIQUE, ConstraintType.PRIMARY_KEY, ConstraintType.FOREIGN_KEY) else ()
    return Step(
        action, table=table, name=name, constraint_type=kind, references=references,
        using_index=using_index, not_valid=not_valid, column=column or (columns[0] if len(columns) == 1 else None),
        definition_sql=cursor.text_of(body_start, body_stop),
        text=cursor.text_of(start, stop),
    )


def _not_enforced(words: list[str]) -> bool:
    return any(a == "NOT" and b == "ENFORCED" for a, b in zip(words, words[1:]))


def _ends_with_not_valid(words: list[str]) -> bool:
    return len(words) >= 2 and words[-2:] == ["NOT", "VALID"]


def _first_group_names(cursor: Cursor, start: int, stop: int) -> tuple[str, ...]:
    """The names in the first parenthesized list: ``UNIQUE (a, b)`` -> (a, b)."""
    for i in range(start, stop):
        if cursor.tokens[i].kind == "L_PAREN":
            c = cursor.sub(i, stop)
            g0, g1 = c.read_group()
            names = []
            for tok in cursor.tokens[g0:g1]:
                if tok.kind != "COMMA" and tok.is_name:
                    names.append(cursor.source[tok.start : tok.end])
            return tuple(names)
    return ()
