"""The lock ledger, the canonical order, row keys and their findings, without a server.

What the server really does with savepoints is checked in
tests/integration/test_lock_order.py; here the bookkeeping that models it."""

from __future__ import annotations

from pathlib import Path

import pytest

from safeddl import ConfigError, Policy, lock_ordered
from safeddl.analysis import analyze_statement
from safeddl.locks import LockMode
from safeddl.model import KeyTerm
from safeddl.ordering import (
    HeldLock,
    LockOrder,
    already_holds,
    first_out_of_order,
    greatest_keys,
    relation_key,
    row_locks,
)
from safeddl.rules import lint_script
from safeddl.rules.lock_order import order_findings
from safeddl.rules.row_lock_order import row_order_findings
from safeddl.runtime.ledger import Ledger
from safeddl.sql import read

M = LockMode


def statement(sql: str):  # type: ignore[no-untyped-def]
    return analyze_statement(sql)


def held(relation: str, mode: LockMode, sql: str = "") -> HeldLock:
    return HeldLock(relation, relation_key(relation), mode, sql or f"-- {relation}")


# --------------------------------------------------------------------------- order


def test_canonical_order_is_by_qualified_name_after_the_policys_list() -> None:
    default = LockOrder()
    assert default.sorted(["orders", "app.z", "Customers", "public.b"]) == [
        "app.z", "public.b", "Customers", "orders"]
    assert relation_key("Orders") == relation_key("public.orders") == "public.orders"
    assert relation_key('app."Orders"') == "app.Orders"
    policy = LockOrder(["orders", "app.z"])
    assert policy.sorted(["customers", "app.z", "orders", "b"]) == [
        "orders", "app.z", "b", "customers"]
    assert policy.before("public.orders", "app.a")
    assert "orders, app.z" in policy.describe()


@pytest.mark.parametrize(("holding", "asking", "waits"), [
    (M.ROW_EXCLUSIVE, M.ROW_EXCLUSIVE, False),
    (M.SHARE_ROW_EXCLUSIVE, M.ROW_EXCLUSIVE, False),  # everything RE conflicts with, SRE too
    (M.ACCESS_EXCLUSIVE, M.SHARE, False),
    (M.SHARE, M.ROW_EXCLUSIVE, True),  # others may hold SHARE too: an upgrade
    (M.ROW_EXCLUSIVE, M.SHARE_ROW_EXCLUSIVE, True),
    (M.ROW_EXCLUSIVE, M.SHARE_UPDATE_EXCLUSIVE, True),
])
def test_already_holds_follows_the_conflict_matrix(holding: LockMode, asking: LockMode,
                                                   waits: bool) -> None:
    locks = [held("t", holding)]
    assert already_holds(locks, "public.t", asking) is not waits
    ledger = Ledger()
    ledger.record(statement(f"LOCK TABLE t IN {holding.sql_name} MODE"), 0.0)
    assert ledger.holds("public.t", asking) is not waits
    assert not ledger.holds("public.other", asking)


def test_out_of_order_and_upgrade_findings() -> None:
    order = LockOrder()
    taken = [held("orders", M.ROW_EXCLUSIVE, "UPDATE orders SET x = 1 WHERE id = 2")]
    found = order_findings(taken, statement("UPDATE customers SET y = 2 WHERE id = 7"), order)
    assert [f.rule for f in found] == ["lock-order"]
    message = found[0].message
    assert "ROW EXCLUSIVE on customers, which comes before orders" in message
    assert "`UPDATE orders SET x = 1 WHERE id = 2`" in message
    assert found[0].relation == "customers"
    assert not order_findings(taken, statement("UPDATE orders SET x = 2 WHERE id = 3"), order)
    assert not order_findings(taken, statement("UPDATE zebras SET x = 2"), order)
    assert not order_findings(taken, statement("SELECT * FROM customers"), order)  # reads
    assert not order_findings(taken, statement("UPDATE customers SET y = 2"), order,
                              skip={"public.customers"})  # created in the transaction
    upgrade = order_findings(taken, statement(
        "ALTER TABLE orders ADD FOREIGN KEY (c) REFERENCES zz (id) NOT VALID"), order)
    assert "lock upgrade" in upgrade[0].message
    assert "LOCK TABLE orders IN SHARE ROW EXCLUSIVE MODE;" in (upgrade[0].safe_alternative or "")


def test_lint_reports_a_migration_that_alters_tables_out_of_order() -> None:
    script = """
SET lock_timeout = '2s';
BEGIN;
ALTER TABLE orders ADD COLUMN a int;
ALTER TABLE customers ADD COLUMN b int;
COMMIT;
ALTER TABLE orders ADD COLUMN c int;
ALTER TABLE customers ADD COLUMN d int;
"""
    results = lint_script(script)
    flagged = [r.statement.sql for r in results for f in r.findings if f.rule == "lock-order"]
    assert flagged == ["ALTER TABLE customers ADD COLUMN b int"]  # outside BEGIN: own txns


# --------------------------------------------------------------------------- the ledger


def test_savepoints_forget_what_came_after_them() -> None:
    ledger = Ledger()
    ledger.record(statement("UPDATE a SET v = 1"), 0.0)
    ledger.command("SAVEPOINT s1", 0.0)
    ledger.record(statement("UPDATE b SET v = 1"), 0.0)
    ledger.command('SAVEPOINT "S2"', 0.0)
    ledger.record(statement("LOCK TABLE c IN SHARE MODE"), 0.0)
    assert [lock.relation for lock in ledger.locks] == ["a", "b", "c"]
    ledger.command("ROLLBACK TO SAVEPOINT s1", 0.0)
    assert [lock.relation for lock in ledger.locks] == ["a"]
    assert not ledger.holds("public.b", M.ROW_EXCLUSIVE)
    ledger.record(statement("UPDATE b SET v = 2"), 0.0)  # s1 still exists
    ledger.command("ROLLBACK TO s1", 0.0)
    assert [lock.relation for lock in ledger.locks] == ["a"]
    ledger.command("SAVEPOINT _pg3_1", 0.0)
    ledger.record(statement("UPDATE d SET v = 2"), 0.0)
    ledger.command('RELEASE "_pg3_1"', 0.0)
    ledger.command("ROLLBACK TO _pg3_1", 0.0)  # released: nothing to go back to
    assert [lock.relation for lock in ledger.locks] == ["a", "d"]
    ledger.command("COMMIT PREPARED 'x'", 0.0)  # another transaction's
    assert ledger.locks
    ledger.command("END", 0.0)
    assert not ledger


def test_rows_are_forgotten_with_their_savepoint() -> None:
    ledger = Ledger()
    update = statement("UPDATE a SET v = 1 WHERE id = %s")
    ledger.record(update, 0.0, row_locks(update, [5]))
    ledger.savepoint("s")
    ledger.record(update, 0.0, row_locks(update, [9]))
    assert ledger.greatest[("public.a", ("id",))].values == (9,)
    ledger.rollback_to("s")
    assert ledger.greatest[("public.a", ("id",))].values == (5,)


def test_long_held_strong_locks_are_reported_when_the_transaction_ends() -> None:
    ledger = Ledger(long_lock_seconds=1.0)
    ledger.record(statement("TRUNCATE staging"), 10.0)
    ledger.record(statement("UPDATE a SET v = 1"), 10.0)  # ROW EXCLUSIVE: never
    ledger.record(statement("LOCK TABLE b IN SHARE MODE"), 11.5)
    reports = ledger.command("COMMIT", 12.0)
    assert [(r.relation, r.mode, r.held_seconds, r.outcome) for r in reports] == [
        ("staging", M.ACCESS_EXCLUSIVE, 2.0, "commit")]
    assert "held ACCESS EXCLUSIVE on staging for 2.000 s" in reports[0].describe()
    assert "`TRUNCATE staging`" in reports[0].describe()
    assert not ledger.locks
    off = Ledger(long_lock_seconds=0.0)
    off.record(statement("TRUNCATE staging"), 0.0)
    assert off.command("ROLLBACK", 100.0) == []


# --------------------------------------------------------------------------- row keys


@pytest.mark.parametrize(("sql", "key"), [
    ("UPDATE t SET a = %s, b = %s WHERE id = %s AND k = %s",
     (KeyTerm("id", parameter=2), KeyTerm("k", parameter=3))),
    ("WITH c AS (SELECT %s) SELECT * FROM t WHERE id = %s FOR UPDATE OF t",
     (KeyTerm("id", parameter=1),)),
    ("SELECT '%s', x FROM t WHERE t.id = %s LIMIT %s FOR UPDATE", (KeyTerm("id", parameter=0),)),
    ("UPDATE t SET v = :v WHERE id = :id", (KeyTerm("id", parameter="id"),)),
    ("DELETE FROM t WHERE id = $2", (KeyTerm("id", parameter=1),)),
    ("UPDATE t SET v = 1 WHERE \"Code\" = 'world'", (KeyTerm("Code", literal="world"),)),
    ("UPDATE t SET v = 1 WHERE 7 = id", (KeyTerm("id", literal=7),)),
    ("UPDATE t SET v = 1 WHERE id > 3", ()),
    ("UPDATE t SET v = 1 WHERE id = 3 OR id = 4", ()),
    ("UPDATE t SET v = 1 FROM u WHERE t.id = u.id AND u.k = %s", ()),
    ("SELECT * FROM t JOIN u ON t.id = u.id WHERE t.id = %s FOR UPDATE", ()),
])
def test_the_key_a_statement_picks_rows_by(sql: str, key: tuple[KeyTerm, ...]) -> None:
    steps = [step for step in read(sql).steps if step.table == "t"]
    assert steps[0].key == key


def test_row_locks_take_values_from_the_parameters() -> None:
    update = statement("UPDATE t SET v = %s WHERE id = %s")
    assert [r.values for r in row_locks(update, ["x", 4])] == [(4,)]
    assert [r.values for r in row_locks(update, [["x", 4], ["y", 2]], many=True)] == [(4,), (2,)]
    assert row_locks(update, (p for p in [["x", 1]]), many=True) == []  # not consumed
    assert row_locks(update, ["x", None]) == []  # NULL matches no row
    assert row_locks(update, ["x"]) == []
    named = statement("UPDATE t SET v = %(v)s WHERE tenant = %(t)s AND id = %(id)s")
    assert [r.values for r in row_locks(named, {"v": 1, "t": "acme", "id": 3})] == [("acme", 3)]


def test_row_order_findings() -> None:
    update = statement("UPDATE t SET v = v + 1 WHERE id = %s")
    index = greatest_keys(row_locks(update, [7]) + row_locks(update, [3]))
    assert index[("public.t", ("id",))].values == (7,)
    found = row_order_findings(index, row_locks(update, [5]), update)
    assert [f.rule for f in found] == ["row-lock-order"]
    assert "where id = 5 after the transaction locked those where id = 7" in found[0].message
    assert not row_order_findings(index, row_locks(update, [7]), update)  # the same row
    batch = row_locks(update, [[1], [2], [1]], many=True)
    assert "earlier in this batch" in row_order_findings({}, batch, update)[0].message
    other = row_locks(statement("UPDATE t SET v = v + 1 WHERE code = %s"), ["a"])
    assert first_out_of_order(index, other[0]) is None  # other key columns: not compared
    mixed = row_locks(update, ["seven"])
    assert first_out_of_order(index, mixed[0]) is None  # incomparable: no order to keep


def test_lock_ordered_sorts_tables_then_keys() -> None:
    changes = [("orders", 9), ("customers", 5), ("orders", 2), ("customers", 1)]
    assert lock_ordered(changes, key=lambda c: c[1], table=lambda c: c[0]) == [
        ("customers", 1), ("customers", 5), ("orders", 2), ("orders", 9)]
    assert lock_ordered(changes, key=lambda c: c[1], table=lambda c: c[0],
                        order=["orders"]) == [
        ("orders", 2), ("orders", 9), ("customers", 1), ("customers", 5)]
    assert lock_ordered([{"id": 3}, {"id": 1}], key=lambda r: r["id"]) == [{"id": 1}, {"id": 3}]


# --------------------------------------------------------------------------- policy


def test_policy_lock_order_and_threshold_from_every_source(tmp_path: Path) -> None:
    assert Policy().lock_order == ()
    assert Policy(lock_order=["accounts", "app.ledger"]).lock_order == ("accounts", "app.ledger")
    empty = tmp_path / "pyproject.toml"
    empty.write_text("[project]\nname = 'x'\n")
    env = Policy.from_sources(pyproject_path=empty, env={
        "SAFEDDL_LOCK_ORDER": "accounts, ledger", "SAFEDDL_LONG_LOCK_THRESHOLD": "250ms"})
    assert env.lock_order == ("accounts", "ledger")
    assert env.long_lock_threshold.total_seconds() == 0.25  # type: ignore[union-attr]
    pyproject = empty
    pyproject.write_text('[tool.safeddl]\nlock_order = ["b", "a"]\nlong_lock_threshold = 0\n')
    toml = Policy.from_sources(pyproject_path=pyproject, env={})
    assert toml.lock_order == ("b", "a")
    assert toml.long_lock_threshold.total_seconds() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"lock_order": ["accounts", "Accounts"]},
     "lock_order = ['accounts', 'Accounts']: 'Accounts' is listed twice"),
    ({"lock_order": ["a.b.c"]}, "'a.b.c' is not a table name"),
    ({"lock_order": 3}, "lock_order = 3: expected a list of table names"),
    ({"long_lock_threshold": "soon"}, "long_lock_threshold = 'soon'"),
])
def test_policy_rejects_bad_values_naming_the_key(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match="invalid setting") as info:
        Policy(**kwargs)  # type: ignore[arg-type]
    assert words in str(info.value)
    with pytest.raises(ConfigError, match="SAFEDDL_LOCK_ORDER"):
        Policy.from_strings({"lock_order": "a, A"}, "environment SAFEDDL_LOCK_ORDER")
