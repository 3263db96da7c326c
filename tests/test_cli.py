"""The `safeddl` command line: the JSON contract, formats, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import safeddl.rules.catalogue
from safeddl.analysis import Statement
from safeddl.cli.main import main
from safeddl.cli.report import escape_data, escape_property
from safeddl.rules import BY_ID, DOCS, RULES, Context, Finding, Severity

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

PG_MODES = {
    "AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
    "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock",
}
CONTRACT_KEYS = {"file", "line", "sql", "transactional", "locks", "findings"}

SCRIPT = """\
-- a leading comment
/* and a block
   comment */
SET lock_timeout = '2s';
CREATE INDEX orders_customer_idx
    ON orders (customer_id);  -- trailing comment
SELECT 'a;b' FROM orders;

-- safeddl: ignore[truncate] rebuilt every night, nobody reads it
TRUNCATE nightly_report;
UPDATE orders
   SET status = 'done'   -- inline
 WHERE id = 1;
"""
SCRIPT_LINES = [4, 5, 7, 10, 11]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(autouse=True)
def no_version_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAFEDDL_PG_VERSION", raising=False)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "m.sql"
    path.write_text(SCRIPT)
    return path


def run(runner: CliRunner, *args: str | Path, stdin: str | None = None) -> Result:
    return runner.invoke(main, [str(a) for a in args], input=stdin)


def analyze_objects(runner: CliRunner, *args: str | Path) -> list[dict[str, object]]:
    result = run(runner, "analyze", "--format", "json", *args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, list)
    return data


# -- the JSON contract -----------------------------------------------------------


def rules_of(obj: dict[str, object]) -> list[str]:
    findings = obj["findings"]
    assert isinstance(findings, list)
    return [str(f["rule"]) for f in findings]


def test_analyze_json_has_exactly_the_contract_fields(runner: CliRunner, script: Path) -> None:
    objects = analyze_objects(runner, script)
    assert len(objects) == 5
    for obj in objects:
        assert set(obj) == CONTRACT_KEYS
        assert obj["file"] == str(script)
        assert type(obj["line"]) is int
        assert isinstance(obj["sql"], str)
        assert type(obj["transactional"]) is bool
        assert isinstance(obj["locks"], list)
        assert isinstance(obj["findings"], list)
        for lock in obj["locks"]:
            assert {"relation", "mode", "holds"} <= set(lock) <= {
                "relation", "mode", "holds", "object"}
            assert isinstance(lock["relation"], str)
            assert lock["mode"] in PG_MODES
            assert lock["holds"] in {"brief", "scan", "rewrite"}
        for finding in obj["findings"]:
            assert set(finding) == {"rule", "severity", "message", "safe_alternative"}
            assert finding["rule"] in BY_ID
            assert finding["severity"] in {"error", "warning"}
            assert isinstance(finding["message"], str)
            assert finding["safe_alternative"] is None or isinstance(
                finding["safe_alternative"], str)


def test_analyze_json_values(runner: CliRunner, script: Path) -> None:
    timeout, index, select, truncate, update = analyze_objects(runner, script)
    assert timeout["sql"] == "SET lock_timeout = '2s'"
    assert timeout["locks"] == [] and timeout["findings"] == []
    assert index["sql"] == "CREATE INDEX orders_customer_idx\n    ON orders (customer_id)"
    assert index["locks"] == [{"relation": "orders", "mode": "ShareLock", "holds": "scan"}]
    assert index["transactional"] is True
    assert rules_of(index) == ["create-index"]
    assert select["sql"] == "SELECT 'a;b' FROM orders"
    assert select["locks"] == [
        {"relation": "orders", "mode": "AccessShareLock", "holds": "brief"}]
    assert select["findings"] == []
    # The ignore comment silences the finding in analyze output too.
    assert truncate["findings"] == []
    assert truncate["locks"] == [
        {"relation": "nightly_report", "mode": "AccessExclusiveLock", "holds": "brief"}]
    assert update["locks"] == [
        {"relation": "orders", "mode": "RowExclusiveLock", "holds": "brief"}]


def test_concurrently_is_not_transactional(runner: CliRunner) -> None:
    (obj,) = _stdin_objects(runner, "CREATE INDEX CONCURRENTLY i ON t (a);")
    assert obj["transactional"] is False
    assert obj["locks"] == [
        {"relation": "t", "mode": "ShareUpdateExclusiveLock", "holds": "scan"}]


def _stdin_objects(runner: CliRunner, sql: str) -> list[dict[str, object]]:
    result = run(runner, "analyze", "--format", "json", "-", stdin=sql)
    assert result.exit_code == 0, result.output
    data: list[dict[str, object]] = json.loads(result.stdout)
    return data


def test_line_numbers_with_comments_and_multiline_statements(
        runner: CliRunner, script: Path) -> None:
    assert [obj["line"] for obj in analyze_objects(runner, script)] == SCRIPT_LINES
    lines = SCRIPT.splitlines()
    for obj in analyze_objects(runner, script):
        first = str(obj["sql"]).split()[0]
        assert lines[int(str(obj["line"])) - 1].lstrip().startswith(first)


def test_line_numbers_after_dollar_quotes_and_strings(runner: CliRunner) -> None:
    sql = (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$\n"
        "  SELECT 1;\n"
        "  SELECT 2;\n"
        "$$;\n"
        "SELECT 'line\n"
        "break;' FROM t;\n"
        "\n"
        "TRUNCATE t;\n"
    )
    assert [obj["line"] for obj in _stdin_objects(runner, sql)] == [1, 5, 8]


def test_line_numbers_with_windows_line_endings(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "crlf.sql"
    path.write_bytes(b"-- header\r\n\r\nSELECT 1\r\n  FROM t;\r\nTRUNCATE t;\r\n")
    assert [obj["line"] for obj in analyze_objects(runner, path)] == [3, 5]


def test_multiple_files_in_order(runner: CliRunner, tmp_path: Path) -> None:
    first, second = tmp_path / "1.sql", tmp_path / "2.sql"
    first.write_text("SELECT 1 FROM a;\nSELECT 1 FROM b;\n")
    second.write_text("\n\nTRUNCATE c;\n")
    objects = analyze_objects(runner, first, second)
    assert [(o["file"], o["line"]) for o in objects] == [
        (str(first), 1), (str(first), 2), (str(second), 3)]


def test_stdin(runner: CliRunner) -> None:
    (obj,) = _stdin_objects(runner, "\n\nTRUNCATE t;")
    assert obj["file"] == "<stdin>"
    assert obj["line"] == 3
    result = run(runner, "lint", "-", stdin="TRUNCATE t;\n")
    assert result.exit_code == 1
    assert "<stdin>:1: error [truncate]" in result.stdout


def test_empty_input(runner: CliRunner) -> None:
    assert _stdin_objects(runner, "") == []
    assert _stdin_objects(runner, "-- only a comment\n") == []
    result = run(runner, "lint", "-", stdin="")
    assert result.exit_code == 0
    assert "no problems found (0 statements in 1 file)" in result.stdout


def test_byte_order_mark_is_not_part_of_the_statement(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bom.sql"
    path.write_bytes("\ufeffTRUNCATE t;\n".encode())
    (obj,) = analyze_objects(runner, path)
    assert obj["sql"] == "TRUNCATE t"


def test_statement_not_understood_is_still_reported(runner: CliRunner) -> None:
    (obj,) = _stdin_objects(runner, "DO $$ BEGIN PERFORM 1; END $$;")
    assert obj["locks"] == []
    assert obj["line"] == 1


# -- versions --------------------------------------------------------------------

ATTACH = "ALTER TABLE p ATTACH PARTITION c FOR VALUES FROM (1) TO (2);"


def _parent_mode(runner: CliRunner, *args: str) -> object:
    result = run(runner, "analyze", "--format", "json", *args, "-", stdin=ATTACH)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)[0]["locks"][0]["mode"]


def test_pg_version_changes_the_locks(runner: CliRunner) -> None:
    assert _parent_mode(runner) == "ShareUpdateExclusiveLock"  # default: 18
    assert _parent_mode(runner, "--pg-version", "11") == "AccessExclusiveLock"
    assert _parent_mode(runner, "--pg-version", "12") == "ShareUpdateExclusiveLock"


def test_pg_version_from_environment(runner: CliRunner,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEDDL_PG_VERSION", "11")
    assert _parent_mode(runner) == "AccessExclusiveLock"
    assert _parent_mode(runner, "--pg-version", "18") == "ShareUpdateExclusiveLock"


@pytest.mark.parametrize("value", ["10", "19", "0", "-3", "twelve", "12.5", ""])
@pytest.mark.parametrize("command", ["analyze", "lint"])
def test_unsupported_pg_version_is_a_usage_error(runner: CliRunner, command: str,
                                                 value: str) -> None:
    result = run(runner, command, "--pg-version", value, "-", stdin="SELECT 1;")
    assert result.exit_code == 2
    assert "11" in result.output and "18" in result.output
    assert "--pg-version" in result.output


def test_unsupported_pg_version_in_environment(runner: CliRunner,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEDDL_PG_VERSION", "9")
    result = run(runner, "lint", "-", stdin="SELECT 1;")
    assert result.exit_code == 2
    assert "11 to 18" in result.output


# -- lint: exit codes and text ---------------------------------------------------


def test_lint_exit_codes(runner: CliRunner, tmp_path: Path) -> None:
    clean = tmp_path / "clean.sql"
    clean.write_text("CREATE INDEX CONCURRENTLY i ON t (a);\nDELETE FROM r;\n")
    unsafe = tmp_path / "unsafe.sql"
    unsafe.write_text("TRUNCATE r;\n")
    assert run(runner, "lint", clean).exit_code == 0
    assert run(runner, "lint", unsafe).exit_code == 1
    assert run(runner, "lint", clean, unsafe).exit_code == 1
    for output in ("json", "github", "sarif"):
        assert run(runner, "lint", "--format", output, clean).exit_code == 0
        assert run(runner, "lint", "--format", output, unsafe).exit_code == 1


def test_analyze_exits_zero_even_with_errors(runner: CliRunner, script: Path) -> None:
    assert run(runner, "analyze", script).exit_code == 0
    assert run(runner, "analyze", "--format", "json", script).exit_code == 0


@pytest.mark.parametrize("command", ["analyze", "lint"])
def test_usage_errors_exit_2(runner: CliRunner, command: str, tmp_path: Path) -> None:
    missing = run(runner, command, tmp_path / "nope.sql")
    assert missing.exit_code == 2
    assert "nope.sql" in missing.output
    assert run(runner, command).exit_code == 2  # no FILE
    assert run(runner, command, tmp_path).exit_code == 2  # a directory
    assert run(runner, command, "--format", "xml", "-", stdin="").exit_code == 2
    binary = tmp_path / "latin1.sql"
    binary.write_bytes(b"SELECT '\xe9';")
    result = run(runner, command, binary)
    assert result.exit_code == 2
    assert "UTF-8" in result.output


def test_lint_text_blocks_ignored_and_summary(runner: CliRunner, script: Path) -> None:
    result = run(runner, "lint", script)
    assert result.exit_code == 1
    out = result.stdout
    assert (f"{script}:5: error [create-index] the index is built while writes to the table "
            "wait.") in out
    assert "CREATE INDEX CONCURRENTLY orders_customer_idx" in out
    assert (f"{script}:10: ignored [truncate] rebuilt every night, nobody reads it"
            in out.splitlines())
    assert out.rstrip().splitlines()[-1] == (
        "safeddl: 1 error, 0 warnings, 1 ignored (5 statements in 1 file)")


def test_lint_clean_summary(runner: CliRunner) -> None:
    result = run(runner, "lint", "-", stdin="SELECT 1;\n")
    assert result.exit_code == 0
    assert result.stdout.strip() == "safeddl: no problems found (1 statement in 1 file)"


def test_lint_json_adds_ignored(runner: CliRunner, script: Path) -> None:
    result = run(runner, "lint", "--format", "json", script)
    objects = json.loads(result.stdout)
    assert [set(o) for o in objects] == [CONTRACT_KEYS | {"ignored"}] * 5
    assert objects[3]["ignored"] == [
        {"rule": "truncate", "reason": "rebuilt every night, nobody reads it"}]
    assert rules_of(objects[1]) == ["create-index"]


def test_assume_in_transaction_is_accepted(runner: CliRunner, script: Path) -> None:
    result = run(runner, "lint", "--assume-in-transaction", script)
    assert result.exit_code == 1
    assert "[create-index]" in result.stdout


# -- warnings only never fail the build ------------------------------------------


@dataclass
class WarnOnSelect:
    id: str = "test-select-warning"
    severity: Severity = Severity.WARNING
    summary: str = "a warning for every SELECT (test only)"

    def check(self, statement: Statement, context: Context) -> Iterator[Finding]:
        if statement.sql.upper().startswith("SELECT"):
            yield Finding(self.id, self.severity, f"{self.id}: 100% harmless,\nreally")


@pytest.fixture
def warning_rule(monkeypatch: pytest.MonkeyPatch) -> WarnOnSelect:
    rule = WarnOnSelect()
    monkeypatch.setattr(safeddl.rules.catalogue, "RULES", (*RULES, rule))
    return rule


def test_warnings_exit_zero(runner: CliRunner, warning_rule: WarnOnSelect) -> None:
    result = run(runner, "lint", "-", stdin="SELECT 1;")
    assert result.exit_code == 0
    assert "<stdin>:1: warning [test-select-warning] 100% harmless," in result.stdout
    assert "1 warning" in result.stdout
    github = run(runner, "lint", "--format", "github", "-", stdin="SELECT 1;")
    assert github.exit_code == 0
    assert github.stdout.startswith("::warning file=<stdin>,line=1,")
    sarif = json.loads(run(runner, "lint", "--format", "sarif", "-", stdin="SELECT 1;").stdout)
    (found,) = sarif["runs"][0]["results"]
    assert found["level"] == "warning"
    ids = [r["id"] for r in sarif["runs"][0]["tool"]["driver"]["rules"]]
    assert found["ruleId"] in ids and ids[found["ruleIndex"]] == found["ruleId"]


def test_real_warning_rule_exits_zero(runner: CliRunner) -> None:
    sql = "SET lock_timeout = '1s';\nALTER TABLE orders RENAME COLUMN total TO amount;\n"
    result = run(runner, "lint", "-", stdin=sql)
    assert result.exit_code == 0, result.stdout
    assert "<stdin>:2: warning [rename-column]" in result.stdout


# -- GitHub annotations ----------------------------------------------------------


def test_github_escaping_functions() -> None:
    assert escape_data("100%\r\nnext") == "100%25%0D%0Anext"
    assert escape_data("a:b,c") == "a:b,c"
    assert escape_property("dir:a,b%\n") == "dir%3Aa%2Cb%25%0A"


def test_github_annotations(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "odd,name:100%.sql"
    path.write_text('SELECT 1;\n\nTRUNCATE "100%_report";\n')
    result = run(runner, "lint", "--format", "github", path)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert all(line.startswith(("::error ", "::warning ")) for line in lines)
    (line,) = [line for line in lines if "title=safeddl truncate::" in line]
    prefix = (f"::error file={escape_property(str(path))},line=3,"
              "title=safeddl truncate::")
    assert line.startswith(prefix)
    assert "odd%2Cname%3A100%25.sql" in line
    message = line[len(prefix):]
    assert "\n" not in message and "\r" not in message
    assert "%0A" in message  # multi-line messages stay one annotation
    assert "100%25_report" in message  # a literal % is escaped
    assert "%_report" not in message.replace("%25_report", "")


# -- SARIF -----------------------------------------------------------------------


def test_sarif_structure(runner: CliRunner, script: Path) -> None:
    result = run(runner, "lint", "--format", "sarif", script)
    assert result.exit_code == 1
    log = json.loads(result.stdout)
    assert log["version"] == "2.1.0"
    assert log["$schema"].endswith("sarif-2.1.0.json")
    (run_,) = log["runs"]
    driver = run_["tool"]["driver"]
    assert driver["name"] == "safeddl"
    assert isinstance(driver["version"], str)
    rules = driver["rules"]
    assert [r["id"] for r in rules] == [rule.id for rule in RULES]
    for rule in rules:
        assert rule["help"]["text"] == DOCS[rule["id"]]
        assert rule["help"]["markdown"] == DOCS[rule["id"]]
        assert rule["shortDescription"]["text"] == BY_ID[rule["id"]].summary
        assert rule["defaultConfiguration"]["level"] in {"error", "warning"}
    results = run_["results"]
    active = [r for r in results if "suppressions" not in r]
    suppressed = [r for r in results if "suppressions" in r]
    assert [(r["ruleId"], r["level"]) for r in active] == [("create-index", "error")]
    assert all(r["level"] == BY_ID[r["ruleId"]].severity.value for r in results)
    assert [r["ruleId"] for r in suppressed] == ["truncate"]
    assert suppressed[0]["suppressions"] == [
        {"kind": "inSource", "justification": "rebuilt every night, nobody reads it"}]
    for found in results:
        assert rules[found["ruleIndex"]]["id"] == found["ruleId"]
        assert isinstance(found["message"]["text"], str) and found["message"]["text"]
        (location,) = found["locations"]
        physical = location["physicalLocation"]
        assert physical["artifactLocation"]["uri"] == script.as_uri()
        assert type(physical["region"]["startLine"]) is int
    assert active[0]["locations"][0]["physicalLocation"]["region"]["startLine"] == 5
    assert suppressed[0]["locations"][0]["physicalLocation"]["region"]["startLine"] == 10


def test_sarif_relative_uri_and_clean_run(runner: CliRunner, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "my migration.sql").write_text("SELECT 1;\nTRUNCATE t;\n")
    log = json.loads(run(runner, "lint", "--format", "sarif", "db/my migration.sql").stdout)
    (found,) = [r for r in log["runs"][0]["results"] if r["ruleId"] == "truncate"]
    uri = found["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == "db/my%20migration.sql"
    assert found["locations"][0]["physicalLocation"]["region"]["startLine"] == 2
    clean = json.loads(run(runner, "lint", "--format", "sarif", "-", stdin="SELECT 1;").stdout)
    assert clean["runs"][0]["results"] == []


# -- analyze table ---------------------------------------------------------------


def test_analyze_table(runner: CliRunner, script: Path) -> None:
    result = run(runner, "analyze", script)
    assert result.exit_code == 0
    out = result.stdout
    for expected in ("orders", "SHARE", "create-index", "ignored", "nightly_report", "10",
                     "11", "line", "locks"):
        assert expected in out


def test_analyze_table_without_rich(runner: CliRunner, script: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich.console", None)  # import fails
    result = run(runner, "analyze", script)
    assert result.exit_code == 0
    assert f"{script}:5: CREATE INDEX orders_customer_idx ON orders (customer_id)" in result.stdout
    assert "    lock orders: SHARE (scan)" in result.stdout
    assert "    error create-index" in result.stdout
    assert "    ignored truncate" in result.stdout


def test_version(runner: CliRunner) -> None:
    result = run(runner, "--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("safeddl, version ")


# -- rules and explain -----------------------------------------------------------


def test_rules_lists_every_rule(runner: CliRunner) -> None:
    result = run(runner, "rules")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == len(RULES)
    for rule, line in zip(RULES, lines):
        assert line.split()[:2] == [rule.id, rule.severity.value]
        assert line.endswith(rule.summary)


@pytest.mark.parametrize("rule_id", sorted(BY_ID))
def test_explain_prints_the_doc(runner: CliRunner, rule_id: str) -> None:
    result = run(runner, "explain", rule_id)
    assert result.exit_code == 0
    assert result.stdout.strip() == DOCS[rule_id]


def test_explain_unknown_rule(runner: CliRunner) -> None:
    result = run(runner, "explain", "no-such-rule")
    assert result.exit_code == 2
    assert "no-such-rule" in result.output
    for rule_id in BY_ID:
        assert rule_id in result.output


# -- examples --------------------------------------------------------------------


def test_example_migration_fails_and_safe_one_passes(runner: CliRunner) -> None:
    unsafe = run(runner, "lint", EXAMPLES / "migration.sql")
    assert unsafe.exit_code == 1
    assert "ignored [create-index] order_notes holds a few hundred rows" in unsafe.stdout
    for line, rule_id in [(24, "add-foreign-key"), (29, "create-index"), (32, "set-not-null"),
                          (35, "add-column-volatile-default"), (41, "truncate")]:
        assert f"migration.sql:{line}: error [{rule_id}]" in unsafe.stdout
    safe = run(runner, "lint", EXAMPLES / "safe_migration.sql")
    assert safe.exit_code == 0, safe.stdout
    objects = analyze_objects(runner, EXAMPLES / "safe_migration.sql")
    assert all(obj["findings"] == [] for obj in objects)


# -- real processes ----------------------------------------------------------------


def _console_script() -> str:
    found = Path(sys.executable).parent / "safeddl"
    if found.exists():
        return str(found)
    which = shutil.which("safeddl")
    if which is None:
        pytest.skip("the safeddl console script is not installed")
    return which


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SAFEDDL_PG_VERSION"}


def test_console_script_subprocess() -> None:
    done = subprocess.run(
        [_console_script(), "lint", "examples/migration.sql"], cwd=ROOT, env=_env(),
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert "examples/migration.sql:" in done.stdout
    assert "error [create-index]" in done.stdout
    assert done.stderr == ""
    analyzed = subprocess.run(
        [_console_script(), "analyze", "--format", "json", "-"], input="TRUNCATE t;",
        env=_env(), capture_output=True, text=True, timeout=120, check=False)
    assert analyzed.returncode == 0, analyzed.stderr
    assert json.loads(analyzed.stdout)[0]["locks"][0]["mode"] == "AccessExclusiveLock"


def test_python_dash_m() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "safeddl", "lint", "--pg-version", "10", "-"], input="",
        env=_env(), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "11 to 18" in done.stderr
    assert "Usage: safeddl" in done.stderr
