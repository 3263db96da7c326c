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

The hot path: what a statement text can do to the ledger is worked out once
(:class:`Tracked`: the tables and modes it locks, their rank in the canonical order,
where its row key sits among the parameters). Per execution, :meth:`LockTracker.fast`
then costs a few dictionary lookups and proves that no finding is possible (a table
already held, or one that comes after every table written so far; a row key above the
greatest one locked in its table); only when it cannot, the statement goes through the
full check (:meth:`LockTracker.before`), which is what refuses in refuse mode. Nothing is
checked later than today: the fast path only skips work whose answer is known. The
table-lock part of that proof depends only on which texts ran before in the
transaction, so the tracker remembers it in a trie of transaction shapes
(:class:`~safeddl.runtime.ledger.Tables`): a statement of a shape seen before moves the
ledger to the next shared value with one lookup; row keys are checked per execution.

Warnings: a finding in warn mode is logged at WARNING once per pattern (the rule and
the statement texts involved, not the key values), its message built only then;
repeats are counted and summarized at most once a minute per pattern, and new patterns
beyond :data:`WARNINGS_PER_MINUTE` a minute are rate-limited (DEBUG) with a count.
"""

from __future__ import annotations

import logging
import sys
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from safeddl.analysis import Action, Catalog, Statement
from safeddl.caches import MiB, TextCache
from safeddl.locks import LockMode
from safeddl.model import shorten
from safeddl.ordering import (
    ROW_LOCKING,
    WRITE,
    HeldLock,
    LockOrder,
    RowLock,
    key_values,
    relation_key,
    row_locks,
)
from safeddl.rules.base import Context, Finding
from safeddl.rules.lock_order import RULE_ID as LOCK_ORDER
from safeddl.rules.lock_order import order_findings
from safeddl.rules.row_lock_order import RULE_ID as ROW_LOCK_ORDER
from safeddl.rules.row_lock_order import row_order_findings
from safeddl.rules.statements_after_access_exclusive import RULE as AFTER_ACCESS_EXCLUSIVE
from safeddl.runtime.errors import UnsafeStatement
from safeddl.runtime.ledger import STRONG, Ledger, Tables, report_long_held, shape_of
from safeddl.runtime.policy import Policy, RuleAction, as_timedelta

if TYPE_CHECKING:
    from safeddl.runtime.session import ConnectionState

logger = logging.getLogger("safeddl")

_CHECKED_RULES = (LOCK_ORDER, ROW_LOCK_ORDER, AFTER_ACCESS_EXCLUSIVE.id)
_PENDING = "\x00safeddl-statement"  # a savepoint of the ledger only, while checking
_AE = LockMode.ACCESS_EXCLUSIVE

WARNINGS_PER_MINUTE = 10  # new patterns logged at WARNING per minute and tracker
REPEAT_SUMMARY_SECONDS = 60.0  # a pattern's repeats are summarized at most this often
PATTERNS_LIMIT = 1_000  # patterns remembered (the oldest forgotten first) ...
PATTERNS_BYTES = 1 * MiB  # ... and the bytes they may hold

Pattern = tuple[str, ...]  # (rule, statement texts involved)

# The trie of transaction shapes (LockTracker._follow): at most this many nodes and
# about this many bytes per tracker (then it starts afresh), each node of at most
# TRIE_DEPTH table locks (a transaction that takes more goes on with a ledger of its own,
# checked the same way).
TRIE_NODES = 4_096
TRIE_BYTES = 4 * MiB
TRIE_DEPTH = 32
_NODE_BYTES, _LOCK_BYTES = 900, 250  # a node, and each lock it holds (dict entries...)
_RETIRED: dict[object, Tables | None] = {}  # the ``after`` of a node of a retired trie


class Tracked:
    """What the ledger needs of one statement text, worked out once per Guard: the
    statements, and for the fast path the locks it takes (relation key, mode, rank in
    the canonical order, the lock as held) and the one row key it picks rows by."""

    __slots__ = ("fast", "row", "statements", "step", "takes")

    def __init__(self, statements: tuple[Statement, ...], order: LockOrder) -> None:
        self.statements = statements
        # what the trie of Tables knows this text by (the text's Tracked can be dropped
        # from its cache and made again: the trie keeps this small key, not the analysis)
        self.step = object()
        self.takes: tuple[tuple[str, LockMode, tuple[int, str], HeldLock], ...] = ()
        self.row: RowKey | None = None
        self.fast = False
        if len(statements) != 1:
            return
        statement = statements[0]
        shape = shape_of(statement)
        if (statement.kind is Action.TRANSACTION_CONTROL or not statement.understood
                or shape.is_ddl or shape.creates or shape.exclusive
                or any(mode >= STRONG for _r, _k, mode in shape.takes)):
            return  # the full check every time (and long-held locks need the time)
        self.takes = tuple((key, mode, order.rank(key),
                            HeldLock(relation, key, mode, statement.sql))
                           for relation, key, mode in shape.takes)
        keyed = [step for step in statement.steps
                 if step.key and step.table and step.action in ROW_LOCKING]
        if len(keyed) > 1:
            return
        if keyed:
            step = keyed[0]
            assert step.table is not None
            self.row = RowKey(step.key, RowLock(
                step.table, relation_key(step.table), tuple(t.column for t in step.key), (),
                statement.sql))
        self.fast = True


class RowKey:
    """Where a statement's row key sits: one bound parameter (the usual case) or the
    general terms; ``lock`` is its row lock without values."""

    __slots__ = ("index", "lock", "name", "slot", "terms")

    def __init__(self, terms: Sequence[Any], lock: RowLock) -> None:
        self.terms = tuple(terms)
        self.lock = lock
        self.slot = (lock.key, lock.columns)
        only = self.terms[0] if len(self.terms) == 1 else None
        parameter = only.parameter if only is not None else None
        self.index = parameter if type(parameter) is int else -1
        self.name = parameter if type(parameter) is str else None

    def values(self, params: Any) -> tuple[Any, ...] | None:
        index = self.index
        if index >= 0 and (type(params) is tuple or type(params) is list):
            if index < len(params):
                value = params[index]
                return None if value is None else (value,)
            return None
        if self.name is not None and type(params) is dict:
            value = params.get(self.name)
            return None if value is None else (value,)
        return key_values(self.terms, params)


class LockTracker:
    """What one Guard (one policy) does with the ledgers of the connections it guards."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.order = LockOrder(policy.lock_order)
        self.long_lock_seconds = as_timedelta(policy.long_lock_threshold).total_seconds()
        self.rules = {rule: policy.action_for(rule) for rule in _CHECKED_RULES}
        self.check_order = self.rules[LOCK_ORDER] is not RuleAction.ALLOW
        self.check_rows = self.rules[ROW_LOCK_ORDER] is not RuleAction.ALLOW
        self.enabled = (self.long_lock_seconds > 0
                        or any(a is not RuleAction.ALLOW for a in self.rules.values()))
        # pattern -> [repeats since last logged, when last logged]
        self._patterns: TextCache[Pattern, list[float]] = TextCache(
            "warning patterns", PATTERNS_LIMIT, PATTERNS_BYTES, per_char=1.0, overhead=300)
        # the trie of the table locks of transactions that ran only fast-path statements
        # (see safeddl.runtime.ledger.Tables): its root, its nodes, about the bytes they hold
        self._root = Tables(self.order).share()
        self._trie: list[Tables] = [self._root]
        self._trie_bytes = 0
        self._budget = float(WARNINGS_PER_MINUTE)
        self._budget_at = time.monotonic()
        self._limited = 0  # new patterns not logged at WARNING since the last one

    def compile(self, statements: tuple[Statement, ...]) -> Tracked:
        """What the fast path needs of these statements (one text), once."""
        return Tracked(statements, self.order)

    def fast(self, state: ConnectionState, tracked: Tracked, params: Any) -> bool:
        """Check and record one execution when no finding is possible; False (nothing
        recorded) when the full check must run: :meth:`before`."""
        if not tracked.fast:
            return False  # (before() drops the ledger of a transaction that ended unseen)
        ledger = state.ledger
        if ledger.used:
            pgconn = state._pgconn
            if (pgconn.transaction_status == 0 if pgconn is not None  # libpq: IDLE
                    else state.transaction_idle()):
                ledger.clear()  # the last transaction ended without the ledger seeing it
            elif ledger.tables.strongest is _AE:
                return False
        tables = ledger.tables
        following: Tables | None = None  # the shared Tables after this statement
        taking: list[tuple[HeldLock, tuple[int, str]]] | None = None
        if tables.shared and not ledger.new:  # the usual case: one lookup
            following = tables.after.get(tracked.step) if tables.order is self.order else None
            if following is None:
                following = self._follow(tables, tracked)
                if following is None:
                    return False
        else:
            found = self._taking(tables, ledger.new, tracked)
            if found is False:
                return False
            taking = found
        row = tracked.row
        values = None
        if row is not None and self.check_rows:
            index = row.index
            if index >= 0 and type(params) is tuple and index < len(params):
                value = params[index]  # the usual case, inlined
                values = None if value is None else (value,)
            else:
                values = row.values(params)
            if values is not None:
                current = ledger.rows.get(row.slot)
                if current is not None:
                    try:
                        if current[0] > values:
                            return False  # below a key already locked
                        if not values > current[0]:
                            values = None  # the same key again
                    except TypeError:  # keys of different types: no order to keep
                        values = None
        if following is not None:
            if following is not tables:
                ledger.tables = following
                ledger.used = True
        elif taking is not None:
            for lock, rank in taking:
                ledger.take(lock, rank)  # (copied first when shared)
        if values is not None and row is not None:
            ledger.rows[row.slot] = (values, row.lock)
            ledger.used = True
        return True

    def _taking(self, tables: Tables, new: set[str] | tuple[()], tracked: Tracked,
                ) -> list[tuple[HeldLock, tuple[int, str]]] | None | Literal[False]:
        """The locks of ``tracked`` not held yet (with their rank), None when every one
        is, False when a finding is possible (the full check must run)."""
        taking: list[tuple[HeldLock, tuple[int, str]]] | None = None
        modes = tables.modes
        for key, mode, rank, lock in tracked.takes:
            have = modes.get(key)
            if have is not None:
                if mode in have:
                    continue  # the table is held in this mode already
                if tables.holds(key, mode):
                    continue
            if key in new:
                continue
            if mode >= WRITE and self.check_order:
                top = tables.top_rank(self.order)
                if key in tables.writes or (top is not None and rank < top):
                    return False  # an upgrade, or before a table already written
            if taking is None:
                taking = [(lock, rank)]
            else:
                taking.append((lock, rank))
        return taking

    def _follow(self, tables: Tables, tracked: Tracked) -> Tables | None:
        """The shared Tables a transaction holds after ``tracked`` ran when it held
        ``tables`` (shared), remembered in the trie; None when a finding is possible."""
        if tables.order is not self.order:
            if tables.locks:  # taken under another guard's order: no trie of ours
                return None
            tables = self._root
            following = tables.after.get(tracked.step)
            if following is not None:
                return following
        taking = self._taking(tables, (), tracked)
        if taking is False:
            return None
        if taking is None:
            following = tables
        else:
            following = tables.copy()
            for lock, rank in taking:
                following.take(lock, rank)
            if tables.after is _RETIRED or len(following.locks) > TRIE_DEPTH:
                return following  # private: this transaction goes on in place
            self._trie_bytes += _NODE_BYTES + _LOCK_BYTES * len(following.locks) + sum(
                sys.getsizeof(lock.statement) for lock, _rank in taking)
            if len(self._trie) >= TRIE_NODES or self._trie_bytes > TRIE_BYTES:
                self._retire()
                return following
            self._trie.append(following.share())
        if tables.after is not _RETIRED:
            tables.after[tracked.step] = following
        return following

    def _retire(self) -> None:
        """Start the trie afresh: its nodes stay valid for the ledgers that hold them,
        but learn nothing more (what a long-running application's first shapes filled
        it with does not keep out the shapes it runs now)."""
        for node in self._trie:
            node.after = _RETIRED
        self._root = Tables(self.order).share()
        self._trie = [self._root]
        self._trie_bytes = 0

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
        if ledger.used and state.transaction_idle():
            ledger.clear()  # the last transaction ended without the ledger seeing it
        if len(statements) == 1 and statements[0].kind is Action.TRANSACTION_CONTROL:
            report_long_held(ledger.command(text, time.monotonic()))
            return
        ledger.long_lock_seconds = self.long_lock_seconds
        ledger.pid = state.pid
        now = time.monotonic()
        if len(statements) == 1:  # the usual case: nothing to undo when it is refused
            statement = statements[0]
            rows = row_locks(statement, params, many=many) if self._keyed(statement) else []
            found = self._findings(ledger, statement, rows, version, allowed)
            if found:
                self._act(found, dict(allowed), text, ledger)
            ledger.record(statement, now, rows)
            return
        ledger.savepoint(_PENDING)
        try:
            for statement in statements:
                if statement.kind is Action.TRANSACTION_CONTROL:
                    ledger.command(statement.sql, now)
                    continue
                found = self._findings(ledger, statement, (), version, allowed)
                if found:
                    self._act(found, dict(allowed), text, ledger)
                ledger.record(statement, now)
        except BaseException:
            ledger.rollback_to(_PENDING)
            ledger.release(_PENDING)
            raise
        ledger.release(_PENDING)

    def _keyed(self, statement: Statement) -> bool:
        return self.rules[ROW_LOCK_ORDER] is not RuleAction.ALLOW and shape_of(statement).keyed

    def findings(self, ledger: Ledger, statement: Statement, rows: Sequence[Any],
                 version: int, allowed: Sequence[tuple[str, str]] = ()) -> list[Finding]:
        """The findings of the rules the ledger checks; a warning whose pattern was
        logged already is counted, and its message not built."""
        return [finding for finding, _pattern in self._findings(ledger, statement, rows,
                                                                 version, allowed)]

    def _findings(self, ledger: Ledger, statement: Statement, rows: Sequence[Any],
                  version: int, allowed: Sequence[tuple[str, str]],
                  ) -> list[tuple[Finding, Pattern | None]]:
        out: list[tuple[Finding, Pattern | None]] = []
        if self.rules[LOCK_ORDER] is not RuleAction.ALLOW and ledger.locks and any(
                mode >= WRITE and not ledger.holds(key, mode)
                for _relation, key, mode in shape_of(statement).takes):
            pattern = self._order_pattern(ledger, statement)
            if pattern is not None and not self._repeated(pattern, allowed):
                out.extend(_patterned(order_findings(ledger.locks, statement, self.order,
                                                     skip=ledger.new), pattern))
        if self.rules[ROW_LOCK_ORDER] is not RuleAction.ALLOW and rows and (
                ledger.rows or len(rows) > 1):
            pattern = self._row_pattern(ledger, statement, rows)
            if pattern is not None and not self._repeated(pattern, allowed):
                out.extend(_patterned(row_order_findings(ledger.greatest, rows, statement),
                                      pattern))
        if (ledger.strongest is LockMode.ACCESS_EXCLUSIVE and not ledger.exclusive_reported
                and self.rules[AFTER_ACCESS_EXCLUSIVE.id] is not RuleAction.ALLOW):
            out.extend((f, None) for f in _after_access_exclusive(ledger, statement, version))
        return out

    def _order_pattern(self, ledger: Ledger, statement: Statement) -> Pattern | None:
        """The statements a lock-order finding would name (None: no finding)."""
        for lock in statement.locks:
            if lock.mode < WRITE:
                continue
            key = relation_key(lock.relation)
            if key in ledger.new or ledger.holds(key, lock.mode):
                continue
            for held in ledger.locks:
                if held.mode >= WRITE and (held.key == key or self.order.before(key, held.key)):
                    return (LOCK_ORDER, held.statement, statement.sql)
        return None

    @staticmethod
    def _row_pattern(ledger: Ledger, statement: Statement, rows: Sequence[RowLock],
                     ) -> Pattern | None:
        """The statements a row-lock-order finding would name (None: no finding)."""
        seen: dict[tuple[str, tuple[str, ...]], tuple[Any, ...]] = {
            slot: entry[0] for slot, entry in ledger.rows.items()}
        for row in rows:
            slot = (row.key, row.columns)
            current = seen.get(slot)
            if current is not None and _after(current, row.values):
                entry = ledger.rows.get(slot)
                earlier = entry[1].statement if entry is not None and \
                    entry[0] == current else statement.sql
                return (ROW_LOCK_ORDER, earlier, statement.sql)
            if current is None or _after(row.values, current):
                seen[slot] = row.values
        return None

    def _repeated(self, pattern: Pattern, allowed: Sequence[tuple[str, str]]) -> bool:
        """A warning of a pattern logged before: count it (no message is built)."""
        entry = self._patterns.get(pattern)
        if entry is None or self.rules.get(pattern[0]) is not RuleAction.WARN or any(
                rule == pattern[0] for rule, _reason in allowed):
            return False
        entry[0] += 1
        now = time.monotonic()
        if now - entry[1] >= REPEAT_SUMMARY_SECONDS:
            logger.warning("safeddl: %s seen %d more times in the last %.0f s: `%s` after "
                           "`%s` (logged once per pattern; see the first warning)",
                           pattern[0], int(entry[0]), now - entry[1], shorten(pattern[-1], 80),
                           shorten(pattern[1], 80))
            entry[0], entry[1] = 0, now
        return True

    def _warn(self, finding: Finding, pattern: Pattern | None) -> None:
        """WARNING once per pattern (its repeats are counted: :meth:`_repeated`), within
        :data:`WARNINGS_PER_MINUTE`; the rest at DEBUG, with a count."""
        if pattern is None:
            pattern = (finding.rule, finding.message)
        if pattern in self._patterns:
            self._repeated(pattern, ())
            return
        now = time.monotonic()
        self._patterns.put(pattern, [0, now], "".join(pattern))
        self._budget = min(float(WARNINGS_PER_MINUTE),
                           self._budget + (now - self._budget_at) * WARNINGS_PER_MINUTE / 60)
        self._budget_at = now
        if self._budget < 1:
            self._limited += 1
            logger.debug("safeddl: %s", finding.message)
            return
        self._budget -= 1
        note = ""
        if self._limited:
            note = (f"\n({self._limited} other warnings of new patterns were logged at DEBUG "
                    f"only: at most {WARNINGS_PER_MINUTE} a minute)")
            self._limited = 0
        logger.warning("safeddl: %s%s", finding.message, note)

    def _act(self, findings: list[tuple[Finding, Pattern | None]], allowed: dict[str, str],
             text: str, ledger: Ledger) -> None:
        refused = []
        for finding, pattern in findings:
            if finding.rule in allowed:
                logger.info("safeddl: %s not enforced: allowed: %s", finding.rule,
                            allowed[finding.rule])
                continue
            action = self.rules.get(finding.rule, RuleAction.WARN)
            if action.strictness >= RuleAction.REWRITE.strictness:
                refused.append(finding)
            elif action is RuleAction.WARN:
                self._warn(finding, pattern)
        if refused:
            first = refused[0]
            raise UnsafeStatement(
                first.rule, text, first.safe_alternative,
                "safeddl refused this statement (it was not sent):\n"
                + "\n\n".join(f.message for f in refused), refused)
        if any(f.rule == AFTER_ACCESS_EXCLUSIVE.id for f, _pattern in findings):
            ledger.exclusive_reported = True  # once per transaction, as the rule says


def _patterned(findings: list[Finding], pattern: Pattern) -> list[tuple[Finding, Pattern | None]]:
    return [(finding, pattern) for finding in findings]


def _after(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    try:
        return bool(a > b)
    except TypeError:  # keys of different types: no order to keep
        return False


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
    if function is None or getattr(getattr(conn, "_exec_command", None), "_safeddl", False):
        return  # (not conn.__dict__: see safeddl.runtime.guard.STATES)
    ref = weakref.ref(conn)

    def exec_command(command: Any, *args: Any, **kwargs: Any) -> Any:
        owner = ref()
        try:  # also when the ledger is empty: a SAVEPOINT may come first
            # (bytes cache their hash: one lookup tells psycopg's own BEGIN, COMMIT and
            # ROLLBACK apart)
            known = _KNOWN.get(command) if type(command) is bytes else None
            if known:  # conn.commit() / rollback()
                ledger = state.ledger
                strongest = ledger.tables.strongest
                if strongest is not None and strongest >= STRONG:  # may be reported
                    reports = ledger.end(time.monotonic(), known)
                    if reports:
                        report_long_held(reports)
                else:
                    ledger.clear()  # (what end() does when nothing can be held long)
            elif known is None and (type(command) is not bytes or command[:5] != b"BEGIN"):
                _follow(state.ledger, _command_text(command, owner))
        except Exception:
            logger.debug("safeddl: could not follow %r", command, exc_info=True)
        if args or kwargs:
            return function(owner, command, *args, **kwargs)
        return function(owner, command)

    exec_command._safeddl = True  # type: ignore[attr-defined]
    conn._exec_command = exec_command


# what psycopg sends by itself: how each one ends the transaction ("": it begins one)
_KNOWN = {b"COMMIT": "commit", b"ROLLBACK": "rollback", b"BEGIN": ""}


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


__all__ = ["PATTERNS_BYTES", "PATTERNS_LIMIT", "REPEAT_SUMMARY_SECONDS", "WARNINGS_PER_MINUTE",
           "LockTracker", "RowKey", "Tracked", "watch_commands"]
