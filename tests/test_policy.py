"""The runtime policy (parsing, sources, errors) and the pure guard decision: no database."""

from __future__ import annotations

import importlib
import logging
from datetime import timedelta
from pathlib import Path

import pytest

import safeddl
from safeddl.analysis import Catalog, Relation
from safeddl.runtime.decision import decide, looks_like_dml
from safeddl.runtime.errors import (
    ConfigError,
    LockTimeout,
    UnsafeStatement,
    is_lock_timeout,
    sqlstate_of,
)
from safeddl.runtime.plan import SessionFacts
from safeddl.runtime.policy import (
    NO_LIMIT,
    Policy,
    Preflight,
    RuleAction,
    known_rules,
    parse_duration,
)
from safeddl.runtime.scope import allow

# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(("text", "expected"), [
    ("3s", timedelta(seconds=3)),
    ("500ms", timedelta(milliseconds=500)),
    ("1500", timedelta(milliseconds=1500)),
    (250, timedelta(milliseconds=250)),
    ("2min", timedelta(minutes=2)),
    (" 1.5 s ", timedelta(milliseconds=1500)),
    (timedelta(seconds=4), timedelta(seconds=4)),
])
def test_durations(text: object, expected: timedelta) -> None:
    assert parse_duration(text, "lock_timeout") == expected


@pytest.mark.parametrize("bad", [0, "0s", "-1s", -5, "soon", "3 parsecs", True, float("nan")])
def test_lock_timeout_must_be_positive(bad: object) -> None:
    with pytest.raises(ValueError, match="lock_timeout") as info:
        Policy(lock_timeout=bad)  # type: ignore[arg-type]
    assert isinstance(info.value, ConfigError)
    assert repr(bad) in str(info.value)


def test_defaults() -> None:
    policy = Policy()
    assert policy.lock_timeout == timedelta(seconds=3)
    assert policy.lock_timeout_ms == 3000
    assert policy.unparsed_ddl is RuleAction.REFUSE
    assert policy.unparsed_dml is RuleAction.ALLOW
    assert policy.guard_dml_lock_timeout is False
    assert policy.pg_version is None
    assert policy.small_table_rows == 10_000
    assert policy.preflight.enabled is False


def test_default_actions_refuse_long_blocking_errors_and_warn_the_rest() -> None:
    policy = Policy()
    for rule in ("create-index", "reindex", "add-foreign-key", "add-check", "set-not-null",
                 "add-unique"):  # exact rewrites exist: rewrite (refused in a transaction)
        assert policy.action_for(rule) is RuleAction.REWRITE, rule
    for rule in ("truncate", "vacuum-full", "alter-column-type", "add-column-volatile-default"):
        assert policy.action_for(rule) is RuleAction.REFUSE, rule
    for rule in ("drop-index", "detach-partition", "drop-column", "rename-table"):
        assert policy.action_for(rule) is RuleAction.WARN, rule
    # opaque-statement follows unparsed_ddl unless set itself
    assert set(policy.actions) == set(known_rules()) - {"unparsed-statement", "opaque-statement"}
    assert policy.action_for("opaque-statement") is RuleAction.REFUSE
    assert policy.action_for("drop-cascade") is RuleAction.REFUSE
    assert Policy(unparsed_ddl="warn").action_for("opaque-statement") is RuleAction.WARN
    assert Policy(unparsed_ddl="warn", actions={"opaque-statement": "refuse"}).action_for(
        "opaque-statement") is RuleAction.REFUSE


def test_actions_merge_over_defaults() -> None:
    policy = Policy(actions={"create-index": "warn"})
    assert policy.action_for("create-index") is RuleAction.WARN
    assert policy.action_for("truncate") is RuleAction.REFUSE
    changed = policy.with_actions({"truncate": "allow"})
    assert changed.action_for("truncate") is RuleAction.ALLOW
    assert changed.action_for("create-index") is RuleAction.WARN


def test_unknown_rule_ids_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        Policy(actions={"no-such-rule": "warn", "create-index": "refuse", "other-typo": "allow"})
    message = str(info.value)
    assert "no-such-rule" in message and "other-typo" in message
    assert "create-index" not in message


def test_bad_action_value_names_key_and_value() -> None:
    with pytest.raises(ConfigError, match=r"actions\.truncate = 'sometimes'"):
        Policy(actions={"truncate": "sometimes"})


def test_unparsed_rule_is_configured_by_its_own_keys() -> None:
    with pytest.raises(ConfigError, match="unparsed_ddl"):
        Policy(actions={"unparsed-statement": "allow"})
    assert Policy(unparsed_ddl="warn").unparsed_ddl is RuleAction.WARN


def test_policy_is_hashable_and_comparable() -> None:
    assert Policy() == Policy()
    assert hash(Policy(actions={"truncate": "warn"})) == hash(Policy(actions={"truncate": "warn"}))
    assert Policy(lock_timeout="1s") != Policy()
    assert len({Policy(), Policy()}) == 1


def test_statement_timeout_per_kind() -> None:
    from safeddl.analysis import analyze_statement

    policy = Policy(statement_timeout={"default": "30s", "concurrently": "off",
                                       "vacuum": "inherit"})
    concurrent = analyze_statement("CREATE INDEX CONCURRENTLY i ON t (x)")
    validate = analyze_statement("ALTER TABLE t VALIDATE CONSTRAINT c")
    vacuum = analyze_statement("VACUUM t")
    alter = analyze_statement("ALTER TABLE t ADD COLUMN c int")
    assert policy.statement_timeout_ms(concurrent) == 0
    assert policy.statement_timeout_ms(validate) == 0  # default of validate-constraint kept
    assert policy.statement_timeout_ms(vacuum) is None
    assert policy.statement_timeout_ms(alter) == 30_000
    assert Policy().statement_timeout_ms(alter) is None  # by default: the session's own
    assert Policy().statement_timeout["concurrently"] == NO_LIMIT


def test_statement_timeout_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="statement_timeout.create-idx"):
        Policy(statement_timeout={"create-idx": "1s"})


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"small_table_rows": -1}, "small_table_rows"),
    ({"small_table_rows": "many"}, "small_table_rows"),
    ({"pg_version": 9}, "pg_version"),
    ({"pg_version": "eighteen"}, "pg_version"),
    ({"guard_dml_lock_timeout": "perhaps"}, "guard_dml_lock_timeout"),
    ({"unparsed_dml": "ignore"}, "unparsed_dml"),
    ({"preflight": {"enabled": True, "min_age": "-1s"}}, "preflight.min_age"),
    ({"preflight": {"colour": "red"}}, "preflight"),
])
def test_bad_values_name_the_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Policy(**kwargs)  # type: ignore[arg-type]


def test_several_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        Policy(lock_timeout=0, small_table_rows=-3)
    assert len(info.value.problems) == 2


def test_preflight_forms() -> None:
    assert Policy(preflight=True).preflight.enabled  # type: ignore[arg-type]
    options = Policy(preflight={"enabled": True, "min_age": "5s", "wait": "2s"}).preflight  # type: ignore[arg-type]
    assert options == Preflight(enabled=True, min_age=timedelta(seconds=5),
                                wait=timedelta(seconds=2))
    assert options.wait_seconds == 2.0


# --------------------------------------------------------------------------- sources


def _pyproject(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_text("[project]\nname = 'app'\n\n" + body, encoding="utf-8")
    return path


def test_from_pyproject(tmp_path: Path) -> None:
    path = _pyproject(tmp_path, """
[tool.safeddl]
lock_timeout = "750ms"
pg_version = 15
small_table_rows = 500
guard_dml_lock_timeout = true
warn = ["create-index"]
actions = { truncate = "allow" }
statement_timeout = { default = "1min", concurrently = "off" }
preflight = { enabled = true, min_age = "2s" }
unparsed_ddl = "warn"
""")
    policy = Policy.from_sources(path, env={})
    assert policy.lock_timeout_ms == 750
    assert policy.pg_version == 15
    assert policy.small_table_rows == 500
    assert policy.guard_dml_lock_timeout is True
    assert policy.action_for("create-index") is RuleAction.WARN
    assert policy.action_for("truncate") is RuleAction.ALLOW
    assert policy.statement_timeout["default"] == timedelta(minutes=1)
    assert policy.statement_timeout["validate-constraint"] == NO_LIMIT  # default kept
    assert policy.preflight.enabled and policy.preflight.min_age == timedelta(seconds=2)
    assert policy.unparsed_ddl is RuleAction.WARN


def test_pyproject_without_table_gives_defaults(tmp_path: Path) -> None:
    assert Policy.from_sources(_pyproject(tmp_path, ""), env={}) == Policy()


def test_nearest_pyproject_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _pyproject(tmp_path, '[tool.safeddl]\nlock_timeout = "2s"\n')
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    assert Policy.from_sources(env={}).lock_timeout_ms == 2000


def test_environment_overrides_pyproject(tmp_path: Path) -> None:
    path = _pyproject(tmp_path, '[tool.safeddl]\nlock_timeout = "2s"\nrefuse = ["drop-index"]\n')
    env = {"SAFEDDL_LOCK_TIMEOUT": "1s", "SAFEDDL_ALLOW": "create-index, truncate",
           "SAFEDDL_STATEMENT_TIMEOUT": "default=10s,concurrently=off",
           "SAFEDDL_GUARD_DML_LOCK_TIMEOUT": "yes", "SAFEDDL_PREFLIGHT": "on",
           "SAFEDDL_PREFLIGHT_WAIT": "3s", "SAFEDDL_TEST_DSN": "host=/nowhere",
           "SAFEDDL_ACTIONS": "rename-table=refuse"}
    policy = Policy.from_sources(path, env=env)
    assert policy.lock_timeout_ms == 1000
    assert policy.action_for("create-index") is RuleAction.ALLOW
    assert policy.action_for("truncate") is RuleAction.ALLOW
    assert policy.action_for("drop-index") is RuleAction.REFUSE
    assert policy.action_for("rename-table") is RuleAction.REFUSE
    assert policy.statement_timeout["default"] == timedelta(seconds=10)
    assert policy.guard_dml_lock_timeout
    assert policy.preflight.enabled and policy.preflight.wait == timedelta(seconds=3)


def test_overrides_win(tmp_path: Path) -> None:
    path = _pyproject(tmp_path, '[tool.safeddl]\nlock_timeout = "2s"\n')
    policy = Policy.from_sources(path, env={"SAFEDDL_LOCK_TIMEOUT": "1s"}, lock_timeout="250ms")
    assert policy.lock_timeout_ms == 250


def test_errors_name_key_value_and_source(tmp_path: Path) -> None:
    path = _pyproject(tmp_path, '[tool.safeddl]\nlock_timeout = "0s"\nsmall_table_rows = -2\n')
    with pytest.raises(ConfigError) as info:
        Policy.from_sources(path, env={"SAFEDDL_PG_VERSION": "nine", "SAFEDDL_REFUSE": "nope"})
    message = str(info.value)
    assert "lock_timeout = '0s'" in message and str(path) in message
    assert "small_table_rows = -2" in message
    assert "pg_version = 'nine'" in message and "SAFEDDL_PG_VERSION" in message
    assert "actions.nope" in message and "SAFEDDL_REFUSE" in message


def test_unknown_pyproject_key(tmp_path: Path) -> None:
    path = _pyproject(tmp_path, '[tool.safeddl]\nlock_timout = "2s"\n')
    with pytest.raises(ConfigError, match="lock_timout = '2s': unknown setting"):
        Policy.from_sources(path, env={})


def test_unreadable_toml(tmp_path: Path) -> None:
    path = _pyproject(tmp_path, "[tool.safeddl\n")
    with pytest.raises(ConfigError, match="cannot read"):
        Policy.from_sources(path, env={})


def test_from_strings_over_a_base() -> None:
    base = Policy(actions={"truncate": "warn"})
    policy = Policy.from_strings({"lock_timeout": "1500ms", "refuse": "drop-index"}, "URL",
                                 base=base)
    assert policy.lock_timeout_ms == 1500
    assert policy.action_for("truncate") is RuleAction.WARN
    assert policy.action_for("drop-index") is RuleAction.REFUSE


def test_policy_file_for_the_plugin(tmp_path: Path) -> None:
    from safeddl.runtime.policy import read_tool_table

    path = tmp_path / "policy.toml"
    path.write_text('lock_timeout = "900ms"\nallow = ["truncate"]\n', encoding="utf-8")
    assert dict(read_tool_table(path)) == {"lock_timeout": "900ms", "allow": ["truncate"]}


# --------------------------------------------------------------------------- errors


def test_sqlstate_is_found_through_wrappers() -> None:
    class Driver(Exception):
        sqlstate = "55P03"

    class Wrapper(Exception):
        def __init__(self, orig: BaseException) -> None:
            self.orig = orig

    assert sqlstate_of(Wrapper(Driver())) == "55P03"
    assert is_lock_timeout(Wrapper(Driver()))
    assert not is_lock_timeout(ValueError())
    assert is_lock_timeout(LockTimeout("ALTER TABLE t ADD c int", "t", None))


def test_public_names_are_lazy() -> None:
    assert safeddl.Policy is Policy
    assert safeddl.UnsafeStatement is UnsafeStatement
    assert callable(safeddl.guard)
    integrations = importlib.import_module("safeddl.integrations")
    assert safeddl.guard is integrations.guard
    assert "guard" in dir(safeddl)


# --------------------------------------------------------------------------- decisions


def _facts(catalog: Catalog | None = None, in_transaction: bool = True) -> SessionFacts:
    return SessionFacts(18, in_transaction, catalog, live=catalog is not None)


def _catalog(rows: int, new: bool = False) -> Catalog:
    catalog = Catalog()
    catalog.relations["public.orders"] = Relation("public.orders", rows=rows, new=new,
                                                  columns={"id": "integer", "x": "integer"})
    return catalog


def test_plain_dml_needs_nothing() -> None:
    decision = decide("SELECT * FROM orders WHERE id = %(id)s", _facts(), Policy())
    assert decision.action is RuleAction.ALLOW
    assert decision.is_plain
    assert not decision.set_lock_timeout


def test_dml_lock_timeout_is_optional() -> None:
    decision = decide("UPDATE orders SET x = 1 WHERE id = 2", _facts(),
                      Policy(guard_dml_lock_timeout=True))
    assert decision.set_lock_timeout and not decision.session_level
    assert not decision.is_plain


def test_ddl_bounds_the_wait_in_and_out_of_transactions() -> None:
    inside = decide("ALTER TABLE orders ADD COLUMN note text", _facts(_catalog(10**6)), Policy())
    assert inside.action is RuleAction.ALLOW and inside.set_lock_timeout
    assert not inside.session_level and inside.lock_timeout_ms == 3000
    outside = decide("ALTER TABLE orders ADD COLUMN note text",
                     _facts(_catalog(10**6), in_transaction=False), Policy())
    assert outside.session_level


def test_refuse_names_rule_and_alternative() -> None:
    decision = decide("CREATE INDEX orders_x ON orders (x)", _facts(_catalog(10**6)), Policy())
    assert decision.action is RuleAction.REFUSE
    error = decision.refusal()
    assert error.rule == "create-index"
    assert "CONCURRENTLY" in (error.safe_alternative or "")
    assert "safeddl.allow" in str(error) and "orders" in str(error)


def test_warn_and_allow_actions() -> None:
    sql = "CREATE INDEX orders_x ON orders (x)"
    warned = decide(sql, _facts(_catalog(10**6)), Policy(actions={"create-index": "warn"}))
    assert warned.action is RuleAction.WARN and warned.warnings
    allowed = decide(sql, _facts(_catalog(10**6)), Policy(actions={"create-index": "allow"}))
    assert allowed.action is RuleAction.ALLOW and not allowed.warnings


def test_small_and_new_tables_are_not_refused() -> None:
    sql = "CREATE INDEX orders_x ON orders (x)"
    small = decide(sql, _facts(_catalog(50)), Policy())
    assert small.action is RuleAction.ALLOW
    assert "50 rows" in small.waived[0].why
    new = decide(sql, _facts(_catalog(10**6, new=True)), Policy())
    assert new.action is RuleAction.ALLOW
    strict = decide(sql, _facts(_catalog(50)), Policy(small_table_rows=0))
    assert strict.action is RuleAction.REFUSE


def test_without_live_catalog_nothing_is_assumed_small() -> None:
    decision = decide("CREATE INDEX orders_x ON orders (x)", _facts(None), Policy())
    assert decision.action is RuleAction.REFUSE


def test_rewrite_without_rewriter_refuses_with_the_plan() -> None:
    def no_rewrite(decision: safeddl.Decision, facts: SessionFacts) -> None:
        return None

    decision = decide("CREATE INDEX orders_x ON orders (x)", _facts(_catalog(10**6)),
                      Policy(actions={"create-index": "rewrite"}), (), no_rewrite)
    assert decision.action is RuleAction.REFUSE
    assert "no exact rewrite" in str(decision.refusal())
    assert "CONCURRENTLY" in str(decision.refusal())


def test_rewriter_seam() -> None:
    from safeddl.runtime.plan import Plan, PlanStep

    def rewriter(decision: safeddl.Decision, facts: SessionFacts) -> Plan | None:
        sql = decision.statement.sql.replace("INDEX", "INDEX CONCURRENTLY", 1)
        return Plan((PlanStep(sql, needs_autocommit=True),))

    policy = Policy(actions={"create-index": "rewrite"})
    sql = "CREATE INDEX orders_x ON orders (x)"
    outside = decide(sql, _facts(_catalog(10**6), in_transaction=False), policy, (), rewriter)
    assert outside.action is RuleAction.REWRITE and outside.plan is not None
    inside = decide(sql, _facts(_catalog(10**6)), policy, (), rewriter)
    assert inside.action is RuleAction.REFUSE
    assert "autocommit" in str(inside.refusal())


def test_allowances_and_ignore_comments() -> None:
    sql = "CREATE INDEX orders_x ON orders (x)"
    allowed = decide(sql, _facts(_catalog(10**6)), Policy(),
                     (("create-index", "built at night"),))
    assert allowed.action is RuleAction.ALLOW
    assert allowed.waived[0].why == "allowed: built at night"
    commented = decide("-- safeddl: ignore[create-index] tiny in practice\n" + sql,
                       _facts(_catalog(10**6)), Policy())
    assert commented.action is RuleAction.ALLOW


def test_unparsed_ddl_refused_and_dml_allowed() -> None:
    ddl = decide("DO $$ BEGIN EXECUTE 'ALTER TABLE orders ADD c int'; END $$", _facts(), Policy())
    assert ddl.action is RuleAction.REFUSE and ddl.deciding[0].rule == "unparsed-statement"
    assert ddl.set_lock_timeout
    lenient = decide("CALL refresh_all()", _facts(), Policy(unparsed_ddl="warn"))
    assert lenient.action is RuleAction.WARN
    assert looks_like_dml("  -- note\nSELECT 1") and not looks_like_dml("DO $$ $$")


def test_concurrently_in_a_transaction_is_refused_even_on_small_tables() -> None:
    decision = decide("CREATE INDEX CONCURRENTLY orders_x ON orders (x)", _facts(_catalog(5)),
                      Policy())
    assert decision.action is RuleAction.REFUSE
    assert decision.deciding[0].rule == "concurrently-in-transaction"
    outside = decide("CREATE INDEX CONCURRENTLY orders_x ON orders (x)",
                     _facts(_catalog(10**6), in_transaction=False), Policy())
    assert outside.action is RuleAction.ALLOW and outside.session_level
    assert outside.statement_timeout_ms == 0


def test_several_statements_in_one_text() -> None:
    text = "CREATE TABLE fresh (id int, x int); CREATE INDEX fresh_x ON fresh (x)"
    decision = decide(text, _facts(_catalog(10**6), in_transaction=False), Policy())
    assert decision.action is RuleAction.ALLOW
    assert len(decision.statements) == 2
    both = decide("SELECT 1; CREATE INDEX orders_x ON orders (x)", _facts(_catalog(10**6)),
                  Policy())
    assert both.action is RuleAction.REFUSE


def test_setting_timeouts_is_noticed() -> None:
    assert decide("SET lock_timeout = '1s'", _facts(), Policy()).changes_timeouts
    assert decide("RESET ALL", _facts(), Policy()).changes_timeouts
    assert not decide("SET search_path = app", _facts(), Policy()).changes_timeouts


def test_allow_validates_rule_ids(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="no-such-rule"), allow("no-such-rule", reason="x"):
        pass
    with pytest.raises(ConfigError, match="reason"), allow("truncate", reason=" "):
        pass
    caplog.set_level(logging.DEBUG, logger="safeddl")
    with allow("truncate", reason="nightly reload"):
        pass
    assert "nightly reload" in caplog.text


@pytest.mark.parametrize("prefix", ["", "-- cleanup\r", "/* a /* nested */ b */ ", "-- x\n"])
def test_a_do_block_is_never_rewritten_into_its_statements(prefix: str) -> None:
    """A small table's TRUNCATE is rewritten into the exact DELETE; inside a DO block it
    is not (the plan would replace the whole block, losing its other statements),
    however the block is written."""
    plain = decide("TRUNCATE orders", _facts(_catalog(10)), Policy())
    assert plain.action is RuleAction.REWRITE and plain.plan is not None
    sql = f"{prefix}DO $$ BEGIN TRUNCATE orders; INSERT INTO orders (id) VALUES (1); END $$"
    decision = decide(sql, _facts(_catalog(10)), Policy())
    assert decision.plan is None, decision.plan
    assert decision.action is not RuleAction.REWRITE
