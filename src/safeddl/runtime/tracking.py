"""The guard's side of the lock ledger: before each statement of an open transaction,
check it against the locks the transaction holds (rules ``lock-order``,
``row-lock-order`` and, at runtime, ``statements-after-access-exclusive``), act on
what is found as the policy says (warn, or refuse before the statement is sent), and
record its locks; follow COMMIT, ROLLBACK and savepoints, and report strong locks held
long when the transaction ends.

Transaction control reaches the ledger two ways: statements the guard sees (``SAVEPOINT
x``, ``COMMIT`` sent as SQL, SQLAlchemy's savepoints), and the driver's own commands
(``conn.commit()``, ``conn.rollback()``, psycopg's ``conn.transaction()`` blocks,
SQLAlchemy's commit and rollback), which psycopg sends through its connection's
``_exec_command``; :func:`watch_commands` puts a thin wrapper there, once per connection.
A transaction that ended unseen is noticed at the next statement (the connection is idle
again) and its ledger dropped.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from safeddl.analysis import Action, Catalog, Statement
from safeddl.locks import LockMode
from safeddl.ordering import WRITE, LockOrder, row_locks
from safeddl.rules.base import Context, Finding
from safeddl.rules.lock_order import RULE_ID as LOCK_ORDER
from safeddl.rules.lock_order import order_findings
from safeddl.rules.row_lock_order import RULE_ID as ROW_LOCK_ORDER
from safeddl.rules.row_lock_order import row_order_findings
from safeddl.rules.statements_after_access_exclusive import RULE as AFTER_ACCESS_EXCLUSIVE
from safeddl.runtime.errors import UnsafeStatement
from safeddl.runtime.ledger import Ledger, report_long_held, shape_of
from safeddl.runtime.policy import Policy, RuleAction, as_timedelta

if TYPE_CHECKING:
    from safeddl.runtime.session import ConnectionState

logger = logging.getLogger("safeddl")

_CHECKED_RULES = (LOCK_ORDER, ROW_LOCK_ORDER, AFTER_ACCESS_EXCLUSIVE.id)
_WARNED_LIMIT = 1_000
_PENDING = "\x00safeddl-statement"  # a savepoint of the ledger only, while checking


class LockTracker:
    """What one Guard (one policy) does with the ledgers of the connections it guards."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.order = LockOrder(policy.lock_order)
        self.long_lock_seconds = as_timedelta(policy.long_lock_threshold).total_seconds()
        self.rules = {rule: policy.action_for(rule) for rule in _CHECKED_RULES}
        self._warned: set[str] = set()  # messages already logged at WARNING
        self.enabled = (self.long_lock_seconds > 0
                        or any(a is not RuleAction.ALLOW for a in self.rules.values()))

    def tracks(self, statements: Sequence[Statement]) -> bool:
        """Must the guard see this statement in a transaction even when nothing else
        about it needs doing (plain DML that writes, transaction control)?"""
        if not self.enabled:
            return False
        for statement in statements:
            if statement.kind is Action.TRANSACTION_CONTROL:
                return True
            for lock in statement.locks:
                if lock.mode > LockMode.ACCESS_SHARE:
                    return True
        return False

    def before(self, state: ConnectionState, statements: Sequence[Statement], text: str,
               params: Any, many: bool, allowed: Sequence[tuple[str, str]], version: int,
               ) -> None:
        """Check and record a statement about to run in an open transaction; raises
        UnsafeStatement (nothing sent) when the policy refuses what it finds."""
        ledger = state.ledger
        if ledger and state.transaction_idle():
            ledger.clear()  # the last transaction ended without the ledger seeing it
        if len(statements) == 1 and statements[0].kind is Action.TRANSACTION_CONTROL:
            report_long_held(ledger.command(text, time.monotonic()))
            return
        ledger.long_lock_seconds = self.long_lock_seconds
        ledger.pid = state.pid
        ledger.mark = len(ledger.locks)  # what this statement adds comes after it
        now = time.monotonic()
        if len(statements) == 1:  # the usual case: nothing to undo when it is refused
            statement = statements[0]
            rows = row_locks(statement, params, many=many) if self._keyed(statement) else []
            found = self.findings(ledger, statement, rows, version)
            if found:
                self._act(found, dict(allowed), text)
            ledger.record(statement, now, rows)
            return
        ledger.savepoint(_PENDING)
        try:
            for statement in statements:
                if statement.kind is Action.TRANSACTION_CONTROL:
                    ledger.command(statement.sql, now)
                    continue
                found = self.findings(ledger, statement, (), version)
                if found:
                    self._act(found, dict(allowed), text)
                ledger.record(statement, now)
        except BaseException:
            ledger.rollback_to(_PENDING)
            ledger.release(_PENDING)
            raise
        ledger.release(_PENDING)

    def _keyed(self, statement: Statement) -> bool:
        return self.rules[ROW_LOCK_ORDER] is not RuleAction.ALLOW and shape_of(statement).keyed

    def findings(self, ledger: Ledger, statement: Statement, rows: Sequence[Any],
                 version: int) -> list[Finding]:
        out: list[Finding] = []
        if self.rules[LOCK_ORDER] is not RuleAction.ALLOW and ledger.locks and any(
                mode >= WRITE and not ledger.holds(key, mode)
                for _relation, key, mode in shape_of(statement).takes):
            out.extend(order_findings(ledger.locks, statement, self.order, skip=ledger.new))
        if self.rules[ROW_LOCK_ORDER] is not RuleAction.ALLOW and rows and (
                ledger.greatest or len(rows) > 1):
            out.extend(row_order_findings(ledger.greatest, rows, statement))
        if (ledger.strongest is LockMode.ACCESS_EXCLUSIVE
                and self.rules[AFTER_ACCESS_EXCLUSIVE.id] is not RuleAction.ALLOW):
            out.extend(_after_access_exclusive(ledger, statement, version))
        return out

    def _warn(self, finding: Finding) -> None:
        """A warning at WARNING level the first time, at DEBUG when it comes back (the
        same statements in the same order: an application's every transaction)."""
        if finding.message in self._warned:
            logger.debug("safeddl: %s", finding.message)
            return
        if len(self._warned) >= _WARNED_LIMIT:
            self._warned.clear()
        self._warned.add(finding.message)
        logger.warning("safeddl: %s", finding.message)

    def _act(self, findings: list[Finding], allowed: dict[str, str], text: str) -> None:
        refused = []
        for finding in findings:
            if finding.rule in allowed:
                logger.info("safeddl: %s not enforced: allowed: %s", finding.rule,
                            allowed[finding.rule])
                continue
            action = self.rules.get(finding.rule, RuleAction.WARN)
            if action.strictness >= RuleAction.REWRITE.strictness:
                refused.append(finding)
            elif action is RuleAction.WARN:
                self._warn(finding)
        if refused:
            first = refused[0]
            raise UnsafeStatement(
                first.rule, text, first.safe_alternative,
                "safeddl refused this statement (it was not sent):\n"
                + "\n\n".join(f.message for f in refused), refused)


def _after_access_exclusive(ledger: Ledger, statement: Statement, version: int,
                            ) -> list[Finding]:
    """The lint rule, run over the statements the transaction ran so far."""
    catalog = Catalog()
    for earlier in ledger.statements:
        if earlier.understood:
            catalog.learn(earlier.steps)
    context = Context(version=version, catalog=catalog, in_transaction=True,
                      transaction=list(ledger.statements), lock_timeout_set=True, runtime=True)
    return list(AFTER_ACCESS_EXCLUSIVE.check(statement, context))


def watch_commands(conn: Any, state: ConnectionState) -> None:
    """Follow the transaction commands psycopg sends by itself on this connection
    (commit, rollback, ``conn.transaction()`` savepoints): once per connection."""
    function = getattr(type(conn), "_exec_command", None)
    if function is None or "_exec_command" in getattr(conn, "__dict__", {}):
        return
    ref = weakref.ref(conn)

    def exec_command(command: Any, *args: Any, **kwargs: Any) -> Any:
        owner = ref()
        try:  # also when the ledger is empty: a SAVEPOINT may come first
            _follow(state.ledger, _command_text(command, owner))
        except Exception:
            logger.debug("safeddl: could not follow %r", command, exc_info=True)
        return function(owner, command, *args, **kwargs)

    conn._exec_command = exec_command


def _follow(ledger: Ledger, text: str) -> None:
    if text.lstrip()[:5].upper() == "BEGIN":
        return  # psycopg's implicit BEGIN goes out after the first statement was recorded
    report_long_held(ledger.command(text, time.monotonic()))


def _command_text(command: Any, conn: Any) -> str:
    if isinstance(command, bytes):
        return command.decode("utf-8", errors="replace")
    if isinstance(command, str):
        return command
    as_string = getattr(command, "as_string", None)
    return str(as_string(conn)) if callable(as_string) else str(command)


__all__ = ["LockTracker", "watch_commands"]
