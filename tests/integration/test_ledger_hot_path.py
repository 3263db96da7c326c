"""The lock ledger's hot path against a real server: the fast check finds exactly what
the full check finds (random transactions compared with an independent model of the two
order rules, with savepoints), a long transaction after ACCESS EXCLUSIVE keeps O(1)
state, and warnings come once per pattern, rate-limited, not once per transaction."""

from __future__ import annotations

import gc
import logging
import random
import tracemalloc
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

import safeddl
import safeddl.psycopg
from safeddl import Policy
from safeddl.integrations.psycopg import slot_of
from safeddl.runtime import tracking
from safeddl.runtime.guard import state_of

pytestmark = [pytest.mark.timeout(120)]

REFUSE = Policy(actions={"lock-order": "refuse", "row-lock-order": "refuse"})


def own_policy(name: str) -> Policy:
    """The default policy, on a Guard of its own (its warning patterns and rate limit
    are not shared with other tests)."""
    return Policy(lock_order=[f"{name}_only"])
TABLES = ("a", "b", "c")


@pytest.fixture
def db(safeddl_db: str) -> str:
    with psycopg.connect(safeddl_db, autocommit=True) as conn:
        for table in TABLES + tuple(f"x_{t}" for t in TABLES):  # x_: SQLAlchemy's own
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)")
            conn.execute(f"INSERT INTO {table} (id) SELECT g FROM generate_series(1, 3000) g")
    return safeddl_db


@pytest.fixture
def engine(db: str, safeddl_db_url: str) -> Iterator[Engine]:
    eng = create_engine(safeddl_db_url, pool_size=1, max_overflow=0,
                        connect_args={"options": "-c statement_timeout=10s"})
    try:
        yield eng
    finally:
        eng.dispose()


class Model:
    """The two order rules, written down independently of safeddl: a write to a table
    that comes before one already written is out of order; a key below the greatest one
    locked in its table is out of order; ROLLBACK TO SAVEPOINT forgets what came after."""

    def __init__(self) -> None:
        self.tables: list[str] = []
        self.greatest: dict[str, int] = {}
        self.saved: tuple[list[str], dict[str, int]] | None = None

    def refuses(self, table: str, key: int) -> bool:
        if table not in self.tables and any(table < other for other in self.tables):
            return True
        return table in self.greatest and key < self.greatest[table]

    def run(self, table: str, key: int) -> None:
        if table not in self.tables:
            self.tables.append(table)
        self.greatest[table] = max(key, self.greatest.get(table, key))

    def savepoint(self) -> None:
        self.saved = (list(self.tables), dict(self.greatest))

    def rollback_to(self) -> None:
        assert self.saved is not None
        self.tables, self.greatest = list(self.saved[0]), dict(self.saved[1])


def random_transaction(rng: random.Random) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = []
    saved = False
    for _ in range(rng.randint(1, 8)):
        roll = rng.random()
        if roll < 0.1 and not saved:
            steps.append(("savepoint", None))
            saved = True
        elif roll < 0.2 and saved:
            steps.append(("rollback_to", None))
        else:
            steps.append(("update", (rng.choice(TABLES), rng.randint(1, 20))))
    return steps


def test_fast_check_finds_what_the_model_finds(db: str, engine: Engine) -> None:
    rng = random.Random(13)
    safeddl.install(engine, REFUSE)
    raw = safeddl.psycopg.connect(db, policy=REFUSE)
    try:
        checked = refused = 0
        for number in range(150):
            model = Model()
            steps = random_transaction(rng)
            with engine.connect() as sa:
                for kind, args in steps:
                    if kind == "savepoint":
                        model.savepoint()
                        raw.execute("SAVEPOINT s")
                        sa.execute(text("SAVEPOINT s"))
                        continue
                    if kind == "rollback_to":
                        model.rollback_to()
                        raw.execute("ROLLBACK TO SAVEPOINT s")
                        sa.execute(text("ROLLBACK TO SAVEPOINT s"))
                        continue
                    table, key = args
                    expected = model.refuses(table, key)
                    outcomes = []
                    for run in (
                        lambda: raw.execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s",
                                            (key,)),
                        lambda: sa.execute(text(f"UPDATE x_{table} SET v = v + 1 "
                                                "WHERE id = :id"), {"id": key}),
                    ):
                        try:
                            run()
                            outcomes.append(False)
                        except safeddl.UnsafeStatement as refusal:
                            assert refusal.rule in ("lock-order", "row-lock-order")
                            outcomes.append(True)
                    assert outcomes == [expected, expected], (number, steps, table, key)
                    checked += 1
                    refused += expected
                    if not expected:
                        model.run(table, key)
                if number % 2:
                    sa.commit()
                    raw.commit()
                else:
                    sa.rollback()
                    raw.rollback()
        assert checked > 300 and 0 < refused < checked  # both outcomes were exercised
    finally:
        raw.close()


def test_long_transaction_after_access_exclusive_keeps_constant_state(
        db: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="safeddl")
    with safeddl.psycopg.connect(db, policy=own_policy("long_transaction")) as conn:
        ledger = state_of(conn).ledger
        conn.execute("ALTER TABLE a ADD COLUMN note text")
        sizes = []
        for i in range(1, 3001):
            conn.execute("UPDATE a SET v = v + 1 WHERE id = %s", (i,))
            if i in (10, 3000):
                sizes.append((len(ledger.statements), len(ledger.locks), len(ledger.rows)))
        locks = conn.execute("SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() "
                             "AND relation = 'a'::regclass").fetchall()
        assert ("AccessExclusiveLock",) in locks  # held all along: the finding is real
        conn.rollback()
    assert sizes[0] == sizes[1] == (1, 1, 1)  # the ALTER, its lock, the greatest key
    found = [r for r in caplog.records
             if "statements-after-access-exclusive" in r.getMessage()]
    assert len(found) == 1  # once per transaction, on the first statement under the lock


def test_a_flood_of_row_order_findings_is_one_warning_per_pattern(
        db: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG, logger="safeddl")
    rng = random.Random(5)
    update = "UPDATE b SET v = v + 1 WHERE id = %s"
    delete = "DELETE FROM c WHERE id = %s"
    out_of_order = 0
    with safeddl.psycopg.connect(db, policy=own_policy("flood")) as conn:
        for _transaction in range(60):
            greatest: dict[str, int] = {}
            for _statement in range(20):
                table, sql = rng.choice((("b", update), ("c", delete)))
                key = rng.randint(1, 3000)
                out_of_order += key < greatest.get(table, 0)
                greatest[table] = max(key, greatest.get(table, 0))
                conn.execute(sql, (key,))
            conn.rollback()
        monkeypatch.setattr(tracking, "REPEAT_SUMMARY_SECONDS", 0.0)
        conn.execute(update, (9,))
        conn.execute(update, (8,))  # a repeat, now summarized at once
        conn.rollback()
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "row-lock-order" in r.getMessage()]
    firsts = [m for m in warnings if m.startswith("safeddl: row-lock-order:")]
    summaries = [m for m in warnings if " more times in the last " in m]
    assert out_of_order > 300
    assert len(firsts) == 2  # the two patterns: b after b, c after c
    assert len(summaries) == 1 and "UPDATE b SET v = v + 1 WHERE id = %s" in summaries[0]
    assert len(warnings) == 3


def test_new_patterns_beyond_the_rate_are_logged_at_debug_with_a_count(
        db: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="safeddl")
    policy = own_policy("rate_limit")
    with safeddl.psycopg.connect(db, policy=policy) as conn:
        for n in range(1, 2 * tracking.WARNINGS_PER_MINUTE + 6):
            conn.execute(f"UPDATE a SET v = v + {n} WHERE id = %s", (9,))
            conn.execute(f"UPDATE a SET v = v + {n} WHERE id = %s", (8,))
            conn.rollback()
    warned = [r for r in caplog.records
              if r.levelno == logging.WARNING and "row-lock-order" in r.getMessage()]
    debug = [r for r in caplog.records
             if r.levelno == logging.DEBUG and "row-lock-order" in r.getMessage()]
    assert len(warned) == tracking.WARNINGS_PER_MINUTE
    assert len(debug) == tracking.WARNINGS_PER_MINUTE + 5


def test_distinct_statements_keep_the_guard_caches_bounded(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from safeddl.analysis.analyzer import READINGS
    from safeddl.caches import MiB
    from safeddl.runtime import guard as guard_module
    from safeddl.runtime.ledger import SHAPES

    bound = MiB // 4
    for name in ("PLAIN_BYTES", "TRACKED_BYTES", "DECISION_BYTES"):
        monkeypatch.setattr(guard_module, name, bound)
    monkeypatch.setattr(tracking, "TRIE_BYTES", bound)
    monkeypatch.setattr(READINGS, "max_bytes", bound)
    monkeypatch.setattr(SHAPES, "max_bytes", bound)
    padding = " AND " + " AND ".join(f"v <> {-j}" for j in range(40))  # ~500 characters

    def statements(conn: psycopg.Connection[Any], first: int, last: int) -> None:
        for i in range(first, last):
            conn.execute(f"SELECT v FROM a WHERE id = {i % 50 + 1}{padding} AND v <> {-i}")
            conn.execute(f"UPDATE b SET v = v + {i} WHERE id = 1{padding}")
            if i % 50 == 0:
                conn.rollback()
        conn.rollback()

    with safeddl.psycopg.connect(db, policy=own_policy("cache_bound")) as conn:
        statements(conn, 0, 100)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            statements(conn, 100, 500)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        slot = slot_of(conn)
        assert slot is not None and slot.guard is not None
        guard, version = slot.guard, slot.server_version
        caches = [guard.plain[version], guard.tracked[version], guard._decisions, READINGS,
                  SHAPES]
    assert all(cache.bytes <= bound for cache in caches), [c.bytes for c in caches]
    assert guard.tracker._trie_bytes <= bound
    assert len(guard._decisions) < 400  # the byte bound, not the entry bound, decided
    assert grown < 6 * bound, grown  # 400 distinct texts more, the caches full already


def test_transactions_of_one_shape_share_their_table_locks(db: str) -> None:
    """A transaction of fast-path statements moves through the tracker's trie: the same
    statements in the same order reach the same shared value, which a statement of the
    full check never changes (the ledger copies it first)."""
    unit = ("INSERT INTO a (id) VALUES (%s)", "UPDATE b SET v = v + 1 WHERE id = %s",
            "DELETE FROM a WHERE id = %s")
    with safeddl.psycopg.connect(db, policy=own_policy("shape")) as conn:
        state = state_of(conn)
        reached = []
        for round_ in range(4):  # (a text's first execution takes the full path)
            for number, sql in enumerate(unit):
                conn.execute(sql, (5_000 + round_ + number,))
            reached.append(state.ledger.tables)
            if round_ == 3:  # then one statement the fast path does not take
                conn.execute("LOCK TABLE c IN SHARE MODE")
                assert state.ledger.tables is not reached[1]
                assert [lock.relation for lock in state.ledger.locks] == ["a", "b", "c"]
            conn.rollback()
        node = reached[1]
        assert reached[1:] == [node] * 3 and node.shared
        assert [(lock.relation, lock.mode.name) for lock in node.locks] == [
            ("a", "ROW_EXCLUSIVE"), ("b", "ROW_EXCLUSIVE")]  # not c: it was copied
        assert not state.ledger.locks  # a fresh transaction holds nothing


def test_a_known_shape_does_not_hide_an_out_of_order_transaction(db: str) -> None:
    forward = ("UPDATE a SET v = v + 1 WHERE id = %s", "UPDATE b SET v = v + 1 WHERE id = %s")
    with safeddl.psycopg.connect(db, policy=REFUSE) as conn:
        for _ in range(3):
            for sql in forward:
                conn.execute(sql, (1,))
            conn.commit()
        conn.execute(forward[1], (1,))
        with pytest.raises(safeddl.UnsafeStatement) as refused:
            conn.execute(forward[0], (1,))  # a after b: against the order
        assert refused.value.rule == "lock-order"
        conn.rollback()


def test_the_trie_starts_afresh_when_full(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "TRIE_NODES", 4)
    policy = Policy(lock_order=["trie_full_only"], actions={"lock-order": "refuse"})
    with safeddl.psycopg.connect(db, policy=policy) as conn:
        state = state_of(conn)
        slot = slot_of(conn)
        assert slot is not None and slot.guard is not None
        tracker = slot.guard.tracker
        sizes = []
        for n in range(1, 12):  # each text a node of its own, more than the trie holds
            for _ in range(2):  # (a text's first execution takes the full path)
                conn.execute(f"UPDATE b SET v = v + {n} WHERE id = 1")
                conn.rollback()
            sizes.append(len(tracker._trie))
        assert max(sizes) == 4 and min(sizes[4:]) < 4  # full, then started afresh
        # a ledger still on a node of the retired trie goes on, checked as before
        conn.execute("UPDATE b SET v = v + 1 WHERE id = 1")
        conn.execute("UPDATE c SET v = v + 1 WHERE id = 1")
        with pytest.raises(safeddl.UnsafeStatement):
            conn.execute("UPDATE a SET v = v + 1 WHERE id = 1")
        assert [lock.relation for lock in state.ledger.locks] == ["b", "c"]
        conn.rollback()
        for _ in range(2):  # and shapes run now are learnt again
            conn.execute("UPDATE a SET v = v + 1 WHERE id = 1")
            first = state.ledger.tables
            conn.rollback()
        assert first.shared and first in tracker._trie
