"""From SQL text to :class:`Statement` facts: read (cached by text), then map each
step to the locks it takes on this server version, with what the catalog knows."""

from __future__ import annotations

import dataclasses
import logging

from safeddl.analysis.catalog import Catalog
from safeddl.analysis.locktable import (
    NEWEST,
    OLDEST,
    Take,
    effect,
    effect_in_new_table,
    effect_in_view_query,
)
from safeddl.caches import LARGEST_SHARE, MiB, TextCache
from safeddl.locks import Holds
from safeddl.model import Action, RelationLock, Statement, Step, evolve
from safeddl.sql import RawStatement, Syntax, call_steps, quote_ident, read, split_script
from safeddl.sql.tokens import Token
from safeddl.sql.psql import split_psql

logger = logging.getLogger("safeddl")

_CREATES = (Action.CREATE_TABLE, Action.CREATE_VIEW, Action.CREATE_MATERIALIZED_VIEW)
_HOLD_ORDER = [Holds.BRIEF, Holds.SCAN, Holds.REWRITE]


def check_version(version: int) -> int:
    if not OLDEST <= version <= NEWEST:
        raise ValueError(
            f"PostgreSQL {version} is not supported: safeddl knows {OLDEST} to {NEWEST}"
        )
    return version


# a reading holds about 6 bytes per character of its text, plus 800 (measured)
READINGS: TextCache[str, Syntax] = TextCache("readings of statement texts", entries=8_192,
                                        max_bytes=16 * MiB, per_char=9.0, overhead=800)


def read_cached(text: str, tokens: list[Token] | None = None) -> Syntax:
    """Reading is the expensive part and depends on the text only (``tokens``: the
    text's tokens when the caller has them, see :func:`safeddl.sql.read`; a text too
    large to be kept is not looked up either: hashing megabytes costs milliseconds)."""
    if READINGS.cost(text) > READINGS.max_bytes // LARGEST_SHARE:
        return read(text, tokens)
    syntax = READINGS.get(text)
    if syntax is None:
        syntax = READINGS.put(text, read(text, tokens), text)
    return syntax


def analyze_statement(text: str, *, version: int = NEWEST, catalog: Catalog | None = None,
                      line: int = 1, tokens: list[Token] | None = None) -> Statement:
    """The facts of one statement. Never raises for any input text. ``tokens``: those
    of ``text`` when known already (a :class:`RawStatement`'s ``tokens``)."""
    check_version(version)
    catalog = catalog if catalog is not None else Catalog()
    key = text.strip().rstrip(";").strip() if ";" in text[-3:] else text.strip()
    syntax = read_cached(key, tokens if key == text else None)
    return _facts(text.strip(), line, syntax, version, catalog)


def analyze_script(script: str, *, version: int = NEWEST, catalog: Catalog | None = None,
                   learn: bool = True, psql: bool = True) -> list[Statement]:
    """The facts of every statement of a script, in order.

    ``catalog`` is what is known before the script; each statement's effect on the
    schema (a new table, a column, an index...) is learnt for the next ones. The
    given catalog is updated in place when ``learn`` is true. With ``psql`` (a
    migration file written for psql) a meta-command is an item of its own and the
    inline data of ``COPY ... FROM stdin`` is skipped.
    """
    check_version(version)
    catalog = catalog if catalog is not None else Catalog()
    out = []
    for raw in split_script_items(script, psql):
        if raw.psql:
            statement = analyze_meta_command(raw, version, catalog)
            out.append(statement)
            if learn and statement.understood:
                catalog.learn(statement.steps)
            continue
        if raw.error:
            syntax = Syntax((Step(Action.UNPARSED, text=raw.text),), f"cannot tokenize: {raw.error}")
        else:
            syntax = read_cached(raw.text, raw.tokens)
        statement = _facts(raw.text, raw.line, syntax, version, catalog)
        statement = dataclasses.replace(statement, leading_comments=raw.comments)
        out.append(statement)
        if learn and syntax.understood:
            catalog.learn(syntax.steps)
    return out


def split_script_items(script: str, psql: bool = True) -> list[RawStatement]:
    """The statements of a script; with ``psql`` also its meta-commands, as items."""
    return split_psql(script) if psql else split_script(script)


# Meta-commands that run statements safeddl does not see.
_HIDING_META = {"\\i", "\\ir", "\\include", "\\include_relative", "\\gexec"}


def analyze_meta_command(raw: RawStatement, version: int, catalog: Catalog) -> Statement:
    """A psql meta-command: psql runs it, the server never sees it. ``\\copy`` takes the
    locks of the COPY it runs; ``\\i`` and ``\\gexec`` run statements safeddl cannot see."""
    command = (raw.psql or "").lower()
    note = f"psql meta-command {command}: psql runs it, the server never sees it"
    if command == "\\copy":
        copy = analyze_statement("COPY " + raw.text[len(command):].strip(), version=version,
                                 catalog=catalog, line=raw.line)
        return dataclasses.replace(copy, sql=raw.text, notes=(*copy.notes, note))
    if command in _HIDING_META:
        return Statement(raw.text, raw.line, Action.UNPARSED,
                         (Step(Action.UNPARSED, text=raw.text),), (), True, understood=False,
                         reason=f"psql meta-command {command} runs statements safeddl "
                                "does not see")
    return Statement(raw.text, raw.line, Action.OTHER, (Step(Action.OTHER, text=command),),
                     (), True, notes=(note,))


def _facts(text: str, line: int, syntax: Syntax, version: int, catalog: Catalog) -> Statement:
    try:
        return _locks_of(text, line, syntax, version, catalog)
    except Exception as exc:  # a gap in safeddl must never break the caller
        logger.warning("safeddl could not analyse %r: %r", text[:200], exc)
        return Statement(text, line, Action.UNPARSED, syntax.steps, (), True, understood=False,
                         reason=f"internal error in safeddl's analysis: {exc!r}")


def _locks_of(text: str, line: int, syntax: Syntax, version: int,
              catalog: Catalog) -> Statement:
    steps = syntax.steps
    head = steps[0]
    if not syntax.understood:  # (a DO block that may COMMIT: outside a transaction)
        outside = any(step.target_kind == "outside-transaction" for step in steps)
        return Statement(text, line, Action.UNPARSED, steps, (), not outside,
                         understood=False, reason=syntax.error)
    if head.action is Action.CALL:
        steps = tuple(_call_steps(head, catalog) or steps)
        head = steps[0]
    created = None
    if head.action in _CREATES and head.table:
        existing = catalog.get(head.table) is not None or (
            # CREATE OR REPLACE VIEW of a view the catalog does not know: it may exist
            head.action is Action.CREATE_VIEW and head.cascade and not catalog.complete)
        # CREATE OR REPLACE VIEW of an existing view, CREATE ... IF NOT EXISTS of an
        # existing table: nothing new is created.
        if not existing:
            created = catalog.key(head.table)
        elif head.if_not_exists:
            return Statement(text, line, head.action, steps, (), True,
                             notes=(f"{head.table} exists already: nothing is done",))
    takes: list[Take] = []
    filled: list[Step] = []
    transactional = True
    notes: list[str] = []
    unknown: str | None = None
    for step in steps:
        if created and step is not head and step.table and catalog.key(step.table) == created:
            # A column or constraint of the table being created: only what it
            # references elsewhere is locked.
            result = effect_in_new_table(step)
        elif head.action is Action.CREATE_VIEW and step is not head:
            # the view's query is parsed, not planned: the relations it names only
            result = effect_in_view_query(step)
        else:
            result = effect(step, version, catalog)
        takes.extend(result.takes)
        transactional = transactional and result.transactional
        notes.extend(n for n in result.notes if n not in notes)
        unknown = unknown or result.unknown
        own = [t.mode for t in result.takes if step.table and t.relation == step.table]
        mode = step.mode or (max(own) if own else None)
        filled.append(step if step.holds is result.holds and step.mode is mode
                      else evolve(step, holds=result.holds, mode=mode))
    locks = _merge(takes, catalog, exclude=created)
    return Statement(
        sql=text, line=line, kind=head.action, steps=tuple(filled), locks=locks,
        transactional=transactional, creates=(head.table,) if created and head.table else (),
        notes=tuple(notes), unknown_locks=unknown,
    )


def _call_steps(call: Step, catalog: Catalog) -> list[Step] | None:
    """A CALL of the one procedure of that name the catalog knows (created earlier in
    the script, or read from the live database): the steps of its body."""
    bodies = catalog.procedure_bodies(call.function)
    return call_steps(call, *bodies[0]) if len(bodies) == 1 else None


def _merge(takes: list[Take], catalog: Catalog, exclude: str | None) -> tuple[RelationLock, ...]:
    """One lock per relation: the strongest mode, the longest hold, first-seen order."""
    merged: dict[str, RelationLock] = {}
    for take in takes:
        key = catalog.key(take.relation)
        if key == exclude:
            continue
        current = merged.get(key)
        if current is None:
            merged[key] = RelationLock(_display(take.relation, catalog), take.mode, take.holds,
                                       take.object)
        else:
            merged[key] = evolve(
                current,
                mode=max(current.mode, take.mode),
                holds=max(current.holds, take.holds, key=_HOLD_ORDER.index),
            )
    return tuple(merged.values())


def _display(relation: str, catalog: Catalog) -> str:
    """Names come as written; names from the catalog come qualified: show those the
    way a user would write them (``public.`` dropped, quoted where needed)."""
    if relation not in catalog.relations:
        return relation
    schema, _, name = relation.partition(".")
    if schema == (catalog.search_path[0] if catalog.search_path else "public"):
        return quote_ident(name)
    return f"{quote_ident(schema)}.{quote_ident(name)}"

def catalog_from_script(sql: str, version: int = NEWEST) -> Catalog:
    """The catalog a script leaves behind (its relations count as existing, and what
    it does not create does not exist)."""
    catalog = Catalog()
    analyze_script(sql, version=version, catalog=catalog, learn=True)
    for relation in catalog.relations.values():
        relation.new = False
    catalog.complete = True
    return catalog

