"""The pytest plugin's user fixtures, run the way users run them: small test files executed
by pytester against this session's server (``--safeddl-dsn``, so no inner run starts a
server of its own).

Each inner test file would behave differently if the fixture were broken: a refused
statement must fail the inner test with the rule's message, the marker must change the
policy, the tracer must see the modes the server took, the blocker must make a guarded
ALTER give up fast naming its pid, and the report must list what the guard did.
"""

from __future__ import annotations

import pytest

import safeddl.integrations.psycopg
import safeddl.integrations.sqlalchemy
import safeddl.observe.lock_tracer

# Imported here, before any inner run: pytester unloads after each in-process run the
# modules first imported during it, and classes cached from an unloaded module (the
# package's lazy ``safeddl.Policy``) would no longer match a re-imported one.
import safeddl.runtime.guard
import safeddl.runtime.policy
from safeddl.observe.lock_blocker import active_blocker_pids

assert safeddl.runtime.guard and safeddl.integrations and safeddl.observe.lock_tracer and safeddl.runtime.policy

pytestmark = [pytest.mark.timeout(120)]

SETUP = '''
import time
import psycopg
import pytest
from sqlalchemy import text

import safeddl
from safeddl import Policy
from safeddl.observe.lock_blocker import active_blocker_pids
from safeddl.locks import LockMode


def make_orders(dsn, rows=20_000):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total int)")
        conn.execute(f"INSERT INTO orders SELECT g, g FROM generate_series(1, {rows}) g")
        conn.execute("ANALYZE orders")


def index_exists(dsn, name):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()[0]
'''


@pytest.fixture
def run_inner(pytester: pytest.Pytester, safeddl_server: object):
    """Write ``source`` as a test module and run it in-process against our server."""
    dsn = safeddl_server.dsn  # type: ignore[attr-defined]

    def run(source: str, *extra: str) -> pytest.RunResult:
        pytester.makepyfile(test_inner=SETUP + source)
        return pytester.runpytest("-p", "safeddl", "--safeddl-dsn", dsn, "--timeout", "60",
                                  "-p", "no:cacheprovider", "-rA", *extra)

    return run


# --------------------------------------------------------------------------- guarded fixtures


def test_guarded_engine_and_connection_refuse_with_the_rules_message(run_inner) -> None:
    result = run_inner('''
def test_engine_refuses(safeddl_db, safeddl_engine):
    make_orders(safeddl_db)
    with safeddl_engine.begin() as conn:
        conn.execute(text("CREATE INDEX orders_total ON orders (total)"))


def test_connection_refuses(safeddl_db, safeddl_guarded_conn):
    make_orders(safeddl_db)
    safeddl_guarded_conn.execute("CREATE INDEX orders_total ON orders (total)")


def test_nothing_was_sent(safeddl_db, safeddl_engine):
    make_orders(safeddl_db)
    with pytest.raises(safeddl.UnsafeStatement):
        with safeddl_engine.begin() as conn:
            conn.execute(text("CREATE INDEX orders_total ON orders (total)"))
    assert not index_exists(safeddl_db, "orders_total")
''')
    result.assert_outcomes(passed=1, failed=2)
    output = result.stdout.str()
    raised = [line for line in output.splitlines()  # the failures' own "E" lines (the short
              if line.startswith("E ")              # summary depends on the terminal width)
              and "UnsafeStatement: safeddl refused this statement" in line]
    assert len(raised) == 2, raised
    assert "create-index:" in output
    assert "CREATE INDEX CONCURRENTLY" in output  # the safe alternative, in the user's names


def test_marker_sets_the_policy_per_test(run_inner) -> None:
    result = run_inner('''
pytestmark = pytest.mark.safeddl(lock_timeout="700ms")


def test_module_marker(safeddl_policy):
    assert safeddl_policy.lock_timeout_ms == 700


@pytest.mark.safeddl(actions={"create-index": "warn"})
def test_keyword_marker_lets_the_index_through(safeddl_db, safeddl_engine, safeddl_policy):
    assert safeddl_policy.lock_timeout_ms == 700  # the module's marker still applies
    make_orders(safeddl_db)
    with safeddl_engine.begin() as conn:
        conn.execute(text("CREATE INDEX orders_total ON orders (total)"))
    assert index_exists(safeddl_db, "orders_total")


@pytest.mark.safeddl(policy=Policy(actions={"create-index": "allow"}, lock_timeout="250ms"))
def test_policy_marker(safeddl_db, safeddl_guarded_conn, safeddl_policy):
    assert safeddl_policy.lock_timeout_ms == 250
    make_orders(safeddl_db)
    safeddl_guarded_conn.execute("CREATE INDEX orders_total ON orders (total)")
    safeddl_guarded_conn.commit()
    assert index_exists(safeddl_db, "orders_total")


class TestClosestMarkerWins:
    pytestmark = pytest.mark.safeddl(lock_timeout="2s")

    @pytest.mark.safeddl(lock_timeout="300ms")
    def test_function_over_class(self, safeddl_policy):
        assert safeddl_policy.lock_timeout_ms == 300

    def test_class_over_module(self, safeddl_policy):
        assert safeddl_policy.lock_timeout_ms == 2000


@pytest.mark.safeddl(lock_timeout="soon")
def test_bad_setting_is_an_error(safeddl_policy):
    pass
''')
    result.assert_outcomes(passed=5, errors=1)
    assert "lock_timeout" in result.stdout.str() and "soon" in result.stdout.str()


# --------------------------------------------------------------------------- lock_tracer


def test_lock_tracer_records_modes_per_statement(run_inner) -> None:
    result = run_inner('''
import threading


def test_precise_through_the_engine(safeddl_db, safeddl_engine, lock_tracer):
    make_orders(safeddl_db, rows=100)
    with lock_tracer(safeddl_engine) as trace:
        with safeddl_engine.begin() as conn:
            conn.execute(text("SELECT count(*) FROM orders"))
            conn.execute(text("UPDATE orders SET total = 0 WHERE id = 1"))
            conn.execute(text("ALTER TABLE orders ADD COLUMN note text"))
    assert trace.strongest("orders") == LockMode.ACCESS_EXCLUSIVE
    assert trace.strongest("public.orders") == LockMode.ACCESS_EXCLUSIVE
    assert trace.strongest("other") is None
    taking = [(s.sql.split()[0], s.locks, s.precise) for s in trace.statements if s.locks]
    assert taking == [
        ("SELECT", {"public.orders": LockMode.ACCESS_SHARE}, True),
        ("UPDATE", {"public.orders": LockMode.ROW_EXCLUSIVE}, True),
        ("ALTER", {"public.orders": LockMode.ACCESS_EXCLUSIVE}, True),
    ]
    with pytest.raises(AssertionError, match="ALTER TABLE orders ADD COLUMN note"):
        trace.assert_at_most("orders", LockMode.SHARE_UPDATE_EXCLUSIVE)
    trace.assert_at_most("orders", LockMode.ACCESS_EXCLUSIVE)


def test_precise_through_psycopg_connections(safeddl_db, safeddl_guarded_conn, lock_tracer):
    make_orders(safeddl_db, rows=100)
    conn = safeddl_guarded_conn
    with lock_tracer(conn, sample=False) as trace:
        conn.execute("UPDATE orders SET total = 0 WHERE id = 1")
        conn.execute("LOCK TABLE orders IN SHARE ROW EXCLUSIVE MODE")
        conn.commit()
    assert [(s.sql.split()[0], s.locks) for s in trace.statements] == [
        ("UPDATE", {"public.orders": LockMode.ROW_EXCLUSIVE}),
        ("LOCK", {"public.orders": LockMode.SHARE_ROW_EXCLUSIVE}),
    ]
    assert trace.samples == 0 and all(lock.precise for lock in trace.locks)
    assert "Traced" not in type(conn.cursor()).__name__  # unhooked after the block
    tracer = lock_tracer(safeddl_db, sample=False)
    with tracer as given:
        own = tracer.connect()
        own.execute("DELETE FROM orders WHERE id = 3")
        own.commit()
    assert own.closed
    assert [s.locks for s in given.statements] == [{"public.orders": LockMode.ROW_EXCLUSIVE}]


def test_sampling_sees_any_connection(safeddl_db, lock_tracer):
    make_orders(safeddl_db, rows=100)

    def worker():
        with psycopg.connect(safeddl_db) as conn:
            conn.execute("UPDATE orders SET total = 0 WHERE id = 1")
            time.sleep(0.2)
            conn.execute("LOCK TABLE orders IN SHARE MODE")
            time.sleep(0.2)

    with lock_tracer() as trace:  # default target: the test database
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert trace.strongest("orders") == LockMode.SHARE
    modes = {lock.mode: lock for lock in trace.locks_on("orders")}
    assert set(modes) == {LockMode.ROW_EXCLUSIVE, LockMode.SHARE}
    # held to the end of the transaction (0.4 s), measured to within a few samples
    assert modes[LockMode.ROW_EXCLUSIVE].held_for >= 0.2
    assert 0.05 <= modes[LockMode.SHARE].held_for < 5
    assert modes[LockMode.SHARE].statement == "LOCK TABLE orders IN SHARE MODE"
    assert not any(lock.precise for lock in trace.locks)
    assert trace.held_for("orders", LockMode.SHARE) == modes[LockMode.SHARE].held_for
''')
    result.assert_outcomes(passed=3)


# --------------------------------------------------------------------------- lock_blocker


def test_lock_blocker_makes_a_guarded_alter_fail_fast(run_inner) -> None:
    result = run_inner('''
@pytest.mark.safeddl(lock_timeout="200ms")
def test_blocked(safeddl_db, safeddl_engine, lock_blocker, lock_tracer):
    make_orders(safeddl_db, rows=100)
    with lock_blocker("orders", "ACCESS SHARE") as blocker:
        assert blocker.held and blocker.relation == "public.orders"
        with lock_tracer(safeddl_engine) as trace:
            started = time.monotonic()
            with pytest.raises(safeddl.LockTimeout) as info:
                with safeddl_engine.begin() as conn:
                    conn.execute(text("ALTER TABLE orders ADD COLUMN note text"))
            waited = time.monotonic() - started
        assert waited < 5, waited  # 200 ms lock_timeout; the rest is slack for a busy machine
        assert f"pid {blocker.pid}" in str(info.value)
        assert [b.pid for b in info.value.blockers] == [blocker.pid], str(info.value)
        # the ALTER's request was seen queued, never granted; the blocker's lock is left out
        assert len(trace.locks_on("orders")) == 1, trace.describe()
        [request] = trace.locks_on("orders")
        assert request.mode == LockMode.ACCESS_EXCLUSIVE
        assert request.waited and not request.granted
        assert blocker.pid not in {lock.pid for lock in trace.locks}
    assert not blocker.held
    with safeddl_engine.begin() as conn:  # released: now it goes through
        conn.execute(text("ALTER TABLE orders ADD COLUMN note text"))


def test_released_at_the_end_of_the_test(safeddl_db, lock_blocker):
    make_orders(safeddl_db, rows=10)
    blocker = lock_blocker("public.orders", "share row exclusive")
    assert blocker.mode == LockMode.SHARE_ROW_EXCLUSIVE
    assert active_blocker_pids() == {blocker.pid}


def test_unknown_table(safeddl_db, lock_blocker):
    with pytest.raises(ValueError, match="nosuch"):
        lock_blocker("nosuch")
''')
    result.assert_outcomes(passed=3)
    assert active_blocker_pids() == frozenset()  # the fixture released every blocker


# --------------------------------------------------------------------------- --safeddl-report


REPORTED = '''
def test_refused(safeddl_db, safeddl_engine):
    make_orders(safeddl_db)
    with safeddl_engine.begin() as conn:
        conn.execute(text("CREATE INDEX orders_total ON orders (total)"))


@pytest.mark.safeddl(actions={"create-index": "warn"})
def test_warned(safeddl_db, safeddl_engine):
    make_orders(safeddl_db)
    with safeddl_engine.begin() as conn:
        conn.execute(text("CREATE INDEX orders_total ON orders (total)"))


def test_allowed(safeddl_db, safeddl_engine):
    make_orders(safeddl_db)
    with safeddl.allow("create-index", reason="built before the table is used"):
        with safeddl_engine.begin() as conn:
            conn.execute(text("CREATE INDEX orders_total ON orders (total)"))


@pytest.mark.safeddl(lock_timeout="100ms")
def test_lock_timeout(safeddl_db, safeddl_engine, lock_blocker):
    make_orders(safeddl_db, rows=10)
    lock_blocker("orders")
    with pytest.raises(safeddl.LockTimeout):
        with safeddl_engine.begin() as conn:
            conn.execute(text("ALTER TABLE orders ADD COLUMN note text"))
'''


def test_report_lists_what_the_guard_did(run_inner) -> None:
    result = run_inner(REPORTED, "--safeddl-report")
    result.assert_outcomes(passed=3, failed=1)
    output = result.stdout.str()
    section = output[output.index("safeddl report"):]
    assert "1 refused, 1 lock timeout, 1 warning, 1 waived" in section
    assert "refused [create-index]: CREATE INDEX orders_total ON orders (total)" in section
    assert "test_inner.py::test_refused" in section
    assert "warning [create-index]" in section and "test_inner.py::test_warned" in section
    assert "waived [create-index]" in section and "built before the table is used" in section
    assert "lock timeout: `ALTER TABLE orders ADD COLUMN note text` on orders" in section
    assert "test_inner.py::test_lock_timeout" in section


def test_no_report_without_the_option(run_inner) -> None:
    result = run_inner(REPORTED)
    result.assert_outcomes(passed=3, failed=1)
    assert "safeddl report" not in result.stdout.str()
