"""The exact rewrites as pure plans: from SQL and a catalog to the statements the guard
runs (no database; the end states are checked against real servers in
tests/integration/test_rewrites.py)."""

from __future__ import annotations

import pytest

from safeddl.analysis import Catalog, catalog_from_script
from safeddl.runtime.decision import decide
from safeddl.runtime.plan import Decision, Plan, SessionFacts
from safeddl.runtime.policy import Policy, RuleAction
from safeddl.runtime.rewrite import pg_object_name

SCHEMA = """
CREATE TABLE parent (id int PRIMARY KEY, z int);
CREATE TABLE big (id int, x int, y int, z int);
CREATE INDEX big_old ON big (y);
CREATE TABLE parted (id int, x int) PARTITION BY RANGE (id);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
CREATE TABLE referenced (id int PRIMARY KEY);
CREATE TABLE referencing (id int, FOREIGN KEY (id) REFERENCES referenced);
"""
POLICY = Policy(actions={"truncate": "rewrite", "drop-index": "rewrite"})


def catalog(invalid: tuple[str, ...] = ()) -> Catalog:
    cat = catalog_from_script(SCHEMA, version=15)
    for relation in cat.relations.values():
        relation.rows = 10**6
    cat.invalid_indexes.update(invalid)
    return cat


def decision(sql: str, *, in_transaction: bool = False, version: int = 15,
             invalid: tuple[str, ...] = ()) -> Decision:
    facts = SessionFacts(version, in_transaction, catalog(invalid), live=True)
    return decide(sql, facts, POLICY)


def plan_of(sql: str, **kwargs: object) -> Plan:
    result = decision(sql, **kwargs)  # type: ignore[arg-type]
    assert result.action is RuleAction.REWRITE, result.refusal_note
    assert result.plan is not None
    return result.plan


def statements(plan: Plan) -> list[str]:
    return [step.sql for step in plan.steps]


def test_create_index_becomes_concurrent_after_comments() -> None:
    plan = plan_of("-- add it\nCREATE UNIQUE INDEX IF NOT EXISTS big_x ON big (x) WHERE x > 0")
    assert statements(plan) == [
        "-- add it\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS big_x ON big (x) WHERE x > 0"]
    step = plan.steps[0]
    assert step.needs_autocommit and step.leftover_index == "big_x"
    assert step.statement_timeout_ms == 0  # the concurrently group: no limit


def test_an_invalid_index_of_that_name_is_dropped_first() -> None:
    plan = plan_of("CREATE INDEX big_old ON big (y)", invalid=("public.big_old",))
    assert statements(plan) == ["DROP INDEX CONCURRENTLY big_old",
                                "CREATE INDEX CONCURRENTLY big_old ON big (y)"]
    assert plan.steps[0].only_if_invalid_index == "big_old"
    assert "-- only if big_old exists and is INVALID:" in plan.render()


def test_concurrent_if_not_exists_as_written_gets_the_drop_too() -> None:
    sql = "CREATE INDEX CONCURRENTLY IF NOT EXISTS big_old ON big (y)"
    result = decision(sql, invalid=("public.big_old",))
    assert result.action is not RuleAction.REFUSE and result.plan is not None
    assert statements(result.plan) == ["DROP INDEX CONCURRENTLY big_old", sql]
    assert decision(sql).plan is None  # a valid one: nothing to do


def test_drop_and_reindex() -> None:
    assert statements(plan_of("DROP INDEX IF EXISTS big_old")) == [
        "DROP INDEX CONCURRENTLY IF EXISTS big_old"]
    plan = plan_of("REINDEX (VERBOSE) INDEX big_old")
    assert statements(plan) == ["DROP INDEX CONCURRENTLY big_old_ccnew",  # if INVALID
                                "DROP INDEX CONCURRENTLY big_old_ccold",  # if INVALID
                                "REINDEX (VERBOSE) INDEX CONCURRENTLY big_old"]
    assert [s.only_if_invalid_index for s in plan.steps[:2]] == ["big_old_ccnew",
                                                                 "big_old_ccold"]
    assert plan.steps[-1].leftover_index == "big_old_ccnew"


def test_foreign_key_gets_the_name_postgres_would_choose() -> None:
    plan = plan_of("ALTER TABLE big ADD FOREIGN KEY (x, y) REFERENCES parent (id, z)")
    assert statements(plan) == [
        ("ALTER TABLE big ADD CONSTRAINT big_x_y_fkey FOREIGN KEY (x, y) REFERENCES parent "
         "(id, z) NOT VALID"),
        "ALTER TABLE big VALIDATE CONSTRAINT big_x_y_fkey"]
    assert not plan.steps[0].undo  # resumed by the next run, never undone
    assert plan.steps[0].done_if is not None and "pg_constraint" in plan.steps[0].done_if.sql
    assert [e.name for e in plan.expects] == ["big_x_y_fkey"]
    assert plan.steps[1].statement_timeout_ms == 0  # validate-constraint: no limit


@pytest.mark.parametrize(("check", "name"), [
    ("CHECK (x > 0)", "big_x_check"), ("CHECK (length(x::text) > 0)", "big_x_check"),
    ("CHECK (x > 0 AND y < 3) NO INHERIT", "big_check"), ("CHECK (true)", "big_check")])
def test_unnamed_check_names(check: str, name: str) -> None:
    plan = plan_of(f"ALTER TABLE big ADD {check}")
    assert statements(plan) == [f"ALTER TABLE big ADD CONSTRAINT {name} {check} NOT VALID",
                                f"ALTER TABLE big VALIDATE CONSTRAINT {name}"]


def test_set_not_null_sequence() -> None:
    assert statements(plan_of("ALTER TABLE big ALTER COLUMN x SET NOT NULL")) == [
        "ALTER TABLE big ADD CONSTRAINT big_x_is_not_null CHECK (x IS NOT NULL) NOT VALID",
        "ALTER TABLE big VALIDATE CONSTRAINT big_x_is_not_null",
        "ALTER TABLE big ALTER COLUMN x SET NOT NULL",
        "ALTER TABLE big DROP CONSTRAINT IF EXISTS big_x_is_not_null"]
    assert decision("ALTER TABLE big ALTER COLUMN x SET NOT NULL", version=11).action \
        is RuleAction.REFUSE  # SET NOT NULL would scan again before 12


def test_unique_and_primary_key_through_a_concurrent_index() -> None:
    plan = plan_of("ALTER TABLE big ADD UNIQUE NULLS NOT DISTINCT (x, y) INCLUDE (z) "
                   "WITH (fillfactor=70) DEFERRABLE")
    assert statements(plan)[0] == "DROP INDEX CONCURRENTLY big_x_y_z_key"  # if INVALID
    assert plan.steps[0].only_if_invalid_index == "big_x_y_z_key"
    assert statements(plan)[1:] == [
        ("CREATE UNIQUE INDEX CONCURRENTLY big_x_y_z_key ON big (x, y) INCLUDE (z) "
         "NULLS NOT DISTINCT WITH (fillfactor=70)"),
        ("ALTER TABLE big ADD CONSTRAINT big_x_y_z_key UNIQUE USING INDEX big_x_y_z_key "
         "DEFERRABLE")]
    primary = statements(plan_of("ALTER TABLE big ADD PRIMARY KEY (id)"))
    assert primary[1] == "CREATE UNIQUE INDEX CONCURRENTLY big_pkey ON big (id)"
    assert "ALTER TABLE big ALTER COLUMN id SET NOT NULL" in primary  # id is nullable
    assert primary[-1] == "ALTER TABLE big ADD CONSTRAINT big_pkey PRIMARY KEY USING INDEX big_pkey"


def test_truncate_becomes_delete_only_where_exact() -> None:
    plan = plan_of("TRUNCATE ONLY big", in_transaction=True)
    assert statements(plan) == ["DELETE FROM ONLY big"] and not plan.needs_autocommit
    for sql in ("TRUNCATE big RESTART IDENTITY", "TRUNCATE referenced"):
        assert decision(sql, in_transaction=True).action is RuleAction.REFUSE, sql
    assert decide("TRUNCATE big", SessionFacts(15, True, catalog(), live=True),
                  Policy()).action is RuleAction.REFUSE  # not rewritten by default


@pytest.mark.parametrize("sql", [
    "CREATE INDEX ON big (x)",  # unnamed: a failed build could not be cleaned up
    "ALTER TABLE parted ADD CHECK (x > 0)",
    "ALTER TABLE big ALTER COLUMN x SET NOT NULL, ALTER COLUMN y SET NOT NULL",
    "DROP INDEX big_old CASCADE",
    "REINDEX TABLE big",
])
def test_no_exact_rewrite_refuses(sql: str) -> None:
    result = decision(sql)
    assert result.action is RuleAction.REFUSE
    assert result.refusal_note is not None and "no exact rewrite" in result.refusal_note


def test_index_on_a_partitioned_table_goes_partition_by_partition() -> None:
    plan = plan_of("CREATE INDEX parted_x ON parted USING btree (x, lower(x::text)) "
                   "INCLUDE (id) WHERE x > 0")
    tail = " USING btree (x, lower(x::text)) INCLUDE (id) WHERE x > 0"
    assert statements(plan) == [
        f"CREATE INDEX parted_x ON ONLY parted{tail}",
        "DROP INDEX CONCURRENTLY public.parted_1_x_lower_id_idx",  # only if INVALID
        f"CREATE INDEX CONCURRENTLY parted_1_x_lower_id_idx ON public.parted_1{tail}",
        "ALTER INDEX parted_x ATTACH PARTITION public.parted_1_x_lower_id_idx"]
    assert plan.steps[2].leftover_index == "public.parted_1_x_lower_id_idx"
    assert all(step.done_if is not None for step in plan.steps)
    assert plan.refuse_if  # a partition's own unattached index: refused at run time


@pytest.mark.parametrize(("element", "name"), [
    ("x", "x"), ("x DESC NULLS LAST", "x"), ("x text_pattern_ops", "x"), ("(x::text)", "x"),
    ('"Mixed" COLLATE "C"', "Mixed"), ("lower(x)", "lower"), ("public.f(x, y)", "f"),
    ("(x + 1)", "expr"), ("(lower(x) || 'a')", "expr"), ("(CASE WHEN x > 0 THEN 1 END)", "case")])
def test_partition_index_column_names_like_postgres(element: str, name: str) -> None:
    from safeddl.runtime.rewrite import _index_column_names

    assert _index_column_names(f" ({element})") == [name]
    assert _index_column_names(f" ({element}, {element})") == [name, f"{name}1"]


def test_inside_a_transaction_the_plan_is_refused_and_spelled_out() -> None:
    result = decision("ALTER TABLE big ADD CHECK (x > 0)", in_transaction=True)
    assert result.action is RuleAction.REFUSE and result.plan is not None
    message = str(result.refusal())
    assert "autocommit_block()" in message
    assert "ALTER TABLE big VALIDATE CONSTRAINT big_x_check;" in message


def test_names_are_cut_like_postgres() -> None:
    long = "t" * 60
    assert pg_object_name(long, "column", "fkey") == "t" * 51 + "_column_fkey"
    assert len(pg_object_name(long, "c" * 60, "key").encode()) == 63
    assert pg_object_name("big", None, "pkey") == "big_pkey"
