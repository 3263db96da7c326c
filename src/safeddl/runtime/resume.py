"""What a rewrite plan looks at on the server so that it resumes instead of undoing,
and so that several sessions running the same plan at once all end well.

- :func:`holds`: a step's ``done_if`` (its effect is already there: skip it).
- :func:`busy` / :func:`wait_while_busy`: another backend runs the very same step (plans
  are generated deterministically, so the text is identical; ``pg_stat_activity``) or
  builds the step's index (``pg_stat_progress_create_index``). Waiting for it works
  through a transaction-mode pooler, where session advisory locks would not.
- :func:`check_expectations`: an object of the plan's name already there must have the
  plan's definition, rendered by the server on a rolled-back temporary copy.
"""

from __future__ import annotations

import logging
import re
import time

from safeddl.model import shorten
from safeddl.runtime.errors import UnsafeStatement, is_lock_timeout
from safeddl.runtime.plan import Check, Decision, Expectation, PlanStep
from safeddl.runtime.session import Session

logger = logging.getLogger("safeddl")

POLL_SECONDS = 0.2
PROBE_TABLE = "safeddl_probe"
PROBE_REFERENCED = "safeddl_probe_ref"

_BUSY = """SELECT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid <> pg_backend_pid()
  AND a.state = 'active' AND a.query = %s)
  OR EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.pid <> pg_backend_pid()
  AND p.index_relid = to_regclass(%s)::oid)"""

_CONSTRAINT_DEF = """SELECT pg_get_constraintdef(k.oid),
  coalesce(k.contype <> 'f' OR k.confrelid = to_regclass(%s), false)
FROM pg_constraint k WHERE k.conrelid = to_regclass(%s) AND k.conname = %s"""

_PROBE_CONSTRAINT_DEF = """SELECT pg_get_constraintdef(k.oid) FROM pg_constraint k
WHERE k.conrelid = 'pg_temp.safeddl_probe'::regclass AND k.conname = %s"""

_INDEX_DEF = """SELECT pg_get_indexdef(c.oid), i.indrelid = to_regclass(%s)
FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
WHERE c.relname = %s
  AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = to_regclass(%s))"""

_PROBE_INDEX_DEF = """SELECT pg_get_indexdef(c.oid) FROM pg_class c
WHERE c.relname = %s AND c.relnamespace = pg_my_temp_schema()"""

_REFERENCES = re.compile(r"\bREFERENCES\s+.*?\(")
_ON_TABLE = re.compile(r" ON (ONLY )?\S+ USING ")


def holds(session: Session, check: Check) -> bool:
    rows = session.run(check.sql, list(check.params))
    return bool(rows and rows[0][0])


def step_index(step: PlanStep) -> str | None:
    """The index the step builds or drops, if any."""
    return step.leftover_index or step.only_if_invalid_index


def busy(session: Session, step: PlanStep) -> bool:
    """Another backend runs this very step, or builds its index, right now."""
    rows = session.run(_BUSY, [step.sql, step_index(step)])
    return bool(rows and rows[0][0])


def wait_while_busy(session: Session, step: PlanStep, limit_s: float | None = None) -> bool:
    """Wait while another session runs the same step (or builds its index); True when
    it waited."""
    if not busy(session, step):
        return False
    logger.info("safeddl: another session is running `%s`; waiting for it to finish",
                shorten(step.sql))
    deadline = None if limit_s is None else time.monotonic() + limit_s
    while busy(session, step):
        if deadline is not None and time.monotonic() > deadline:
            break
        time.sleep(POLL_SECONDS)
    return True


def check_expectations(decision: Decision, session: Session) -> None:
    """Refuse (before any step runs) when an object of a name the plan uses exists with
    another definition."""
    plan = decision.plan
    if plan is None:
        return
    for check, reason in plan.refuse_if:
        if holds(session, check):
            raise _refused(decision, reason)
    for expected in plan.expects:
        there = _existing(session, expected)
        if there is None:
            continue
        definition, same_target = there
        wanted = _wanted(session, expected)
        if wanted is not None and same_target and _normal(expected, wanted) == _normal(
                expected, definition):
            logger.info("safeddl: %s %s is already there with the same definition: the "
                        "plan resumes", expected.kind, expected.name)
            continue
        raise _taken(decision, expected, definition, wanted)


def _existing(session: Session, expected: Expectation) -> tuple[str, bool] | None:
    if expected.kind == "index":
        rows = session.run(_INDEX_DEF, [expected.table, expected.name, expected.table])
    else:
        rows = session.run(_CONSTRAINT_DEF, [expected.references, expected.table,
                                             expected.name])
    if not rows:
        return None
    return str(rows[0][0]), bool(rows[0][1])


def _wanted(session: Session, expected: Expectation) -> str | None:
    """The definition the plan would create, rendered by the server on a temporary copy
    of the table inside a transaction that is rolled back (None: could not be done)."""
    try:
        session.run("BEGIN")
    except Exception as exc:  # noqa: BLE001 - reported as "could not be checked"
        logger.warning("safeddl: could not check the definition of %s (%s)", expected.name, exc)
        return None
    try:
        for sql in expected.probe:
            session.run(sql)
        query = _PROBE_INDEX_DEF if expected.kind == "index" else _PROBE_CONSTRAINT_DEF
        rows = session.run(query, [expected.name])
        return str(rows[0][0]) if rows else None
    except Exception as exc:  # noqa: BLE001 - reported as "could not be checked"
        if is_lock_timeout(exc):
            raise  # waiting behind another session: retryable, not a refusal
        logger.warning("safeddl: could not check the definition of %s (%s)", expected.name, exc)
        return None
    finally:
        session.run("ROLLBACK")


def _normal(expected: Expectation, definition: str) -> str:
    text = definition.strip()
    if expected.kind == "index":
        return _ON_TABLE.sub(" ON ? USING ", text, count=1)
    text = text.removesuffix(" NOT VALID")
    return _REFERENCES.sub("REFERENCES ?(", text, count=1)


def _refused(decision: Decision, reason: str) -> UnsafeStatement:
    first = decision.deciding[0] if decision.deciding else None
    rule = first.rule if first else "unknown"
    return UnsafeStatement(rule, decision.statement.sql,
                           first.safe_alternative if first else None,
                           f"safeddl refused this statement (it was not sent): {rule}: {reason}",
                           decision.deciding)


def _taken(decision: Decision, expected: Expectation, definition: str,
           wanted: str | None) -> UnsafeStatement:
    first = decision.deciding[0] if decision.deciding else None
    rule = first.rule if first else "unknown"
    wanted_text = (_normal(expected, wanted).replace("?", expected.references or "?", 1)
                   if wanted and expected.kind == "constraint" and expected.references
                   else wanted or "(could not be rendered on this server)")
    if expected.kind == "index":
        drop = f"DROP INDEX CONCURRENTLY {expected.name}"
    else:
        drop = f"ALTER TABLE {expected.table} DROP CONSTRAINT {expected.name}"
    message = (
        f"safeddl refused this statement (it was not sent): {rule}: the rewrite creates "
        f"{expected.kind} {expected.name} on {expected.table}, and one of that name is "
        f"already there with another definition:\n"
        f"  there:   {definition}\n  planned: {wanted_text}\n"
        f"Give the new one another name, or remove the old one first ({drop};) if it is a "
        f"leftover. To run the statement as written, allow the rule: "
        f"safeddl.allow(\"{rule}\", reason=\"...\").")
    return UnsafeStatement(rule, decision.statement.sql, first.safe_alternative if first
                           else None, message, decision.deciding)


__all__ = ["busy", "check_expectations", "holds", "step_index", "wait_while_busy"]
