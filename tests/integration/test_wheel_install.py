"""safeddl as users get it: the sdist and the wheel built with ``python -m build``, the
wheel installed into a fresh virtualenv (no checkout on its path), and from there the
command line (rules, explain with the rule pages, lint), the SQLAlchemy engine plugin
against a throwaway server, and the pytest plugin's fixtures, all through their entry
points. Needs the package index for the build backend and the dependencies (about a
minute here, most of it ``pip install``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(600)]

CHECKOUT = Path(__file__).resolve().parents[2]
BASE_REQUIREMENTS = {"safeddl", "sqlglot", "sqlglotc", "psycopg", "tenacity", "click",
                     "typing-extensions", "tzdata"}  # tzdata: psycopg's, on some systems


def run(*args: str | Path, cwd: Path, check: bool = True, timeout: float = 540,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(arg) for arg in args], cwd=cwd, capture_output=True,
                            text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n"
                             f"{result.stderr}")
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build``: the sdist, then the wheel built from it."""
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, CHECKOUT, cwd=out)
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (found,) = dist.glob("safeddl-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "env"
    run(sys.executable, "-m", "venv", root, cwd=root.parent)
    return root


@pytest.fixture(scope="module")
def installed(venv: Path, wheel: Path) -> Path:
    """The wheel with the engine plugin's and a test run's extras, and pytest."""
    run(venv / "bin" / "pip", "install", "--quiet", f"{wheel}[sqlalchemy,binary]", "pytest",
        cwd=venv)
    return venv


@pytest.fixture
def elsewhere(tmp_path: Path) -> dict[str, str]:
    """An environment with nothing of the checkout on the path."""
    env = {key: value for key, value in os.environ.items()
           if key not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONSAFEPATH"}}
    env["NO_COLOR"] = "1"
    return env


def test_the_sdist_and_the_wheel_carry_the_package(dist: Path, wheel: Path) -> None:
    (sdist,) = dist.glob("safeddl-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "src/safeddl/py.typed",
            "src/safeddl/rules/truncate.py", "src/safeddl/cli/plot.py"} <= names

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert {"safeddl/py.typed", "safeddl/testing/pytest_plugin.py",
            "safeddl/cli/plot.py"} <= names
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)
    assert "safeddl = safeddl.cli:main" in entry_points
    assert "[sqlalchemy.plugins]" in entry_points and "[pytest11]" in entry_points
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
                if line.startswith("Requires-Dist:")]
    assert "psycopg>=3.2" in requires  # no implementation imposed on the application
    base = [r for r in requires if "extra ==" not in r]
    assert not any(r.startswith(("psycopg[", "sqlalchemy", "rich", "matplotlib")) for r in base)
    for extra in ("binary", "c", "sqlalchemy", "cli", "plot", "demo", "alembic", "test"):
        assert f"Provides-Extra: {extra}" in metadata


def test_a_plain_install_brings_only_the_runtime(venv: Path, wheel: Path,
                                                 elsewhere: dict[str, str]) -> None:
    report = run(venv / "bin" / "pip", "install", "--dry-run", "--quiet", "--report", "-",
                 wheel, cwd=venv, env=elsewhere)
    names = {item["metadata"]["name"].lower().replace("_", "-")
             for item in json.loads(report.stdout)["install"]}
    assert {"safeddl", "sqlglot", "psycopg", "tenacity", "click"} <= names
    assert names <= BASE_REQUIREMENTS, names - BASE_REQUIREMENTS


def test_the_command_line_from_the_wheel(installed: Path, tmp_path: Path,
                                         elsewhere: dict[str, str]) -> None:
    safeddl = installed / "bin" / "safeddl"
    where = run(installed / "bin" / "python", "-c", "import safeddl; print(safeddl.__file__)",
                cwd=tmp_path, env=elsewhere).stdout.strip()
    assert where.startswith(str(installed)), where  # not the checkout

    rules = run(safeddl, "rules", cwd=tmp_path, env=elsewhere).stdout
    assert "truncate" in rules and "create-index" in rules
    page = run(safeddl, "explain", "truncate", cwd=tmp_path, env=elsewhere).stdout
    assert "ACCESS EXCLUSIVE" in page and "DELETE" in page  # the rule's page, from the wheel

    migration = tmp_path / "migration.sql"
    migration.write_text((CHECKOUT / "examples" / "migration.sql").read_text(encoding="utf-8"),
                         encoding="utf-8")
    lint = run(safeddl, "lint", migration.name, cwd=tmp_path, env=elsewhere, check=False)
    assert lint.returncode == 1, lint.stdout + lint.stderr
    assert "migration.sql:" in lint.stdout and "error [truncate]" in lint.stdout
    github = run(safeddl, "lint", "--format", "github", migration.name, cwd=tmp_path,
                 env=elsewhere, check=False)
    assert github.returncode == 1 and "::error file=migration.sql,line=" in github.stdout
    sarif = run(safeddl, "lint", "--format", "sarif", migration.name, cwd=tmp_path,
                env=elsewhere, check=False)
    assert json.loads(sarif.stdout)["runs"][0]["results"]


ENGINE_PLUGIN = """
import sys
import sqlalchemy as sa
import safeddl

url = sa.engine.make_url(sys.argv[1]).update_query_dict(
    {"plugin": "safeddl", "safeddl_small_table_rows": "0"})
engine = sa.create_engine(url)
with engine.begin() as conn:
    conn.execute(sa.text("CREATE TABLE wheel_orders (id int PRIMARY KEY)"))
    conn.execute(sa.text("INSERT INTO wheel_orders SELECT generate_series(1, 50)"))
with engine.begin() as conn:
    conn.execute(sa.text("ALTER TABLE wheel_orders ADD COLUMN note text"))
    print("lock_timeout", conn.execute(sa.text("SHOW lock_timeout")).scalar())
try:
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE wheel_orders"))
except safeddl.UnsafeStatement as exc:
    print("refused", exc.rule)
with engine.connect() as conn:
    print("rows", conn.execute(sa.text("SELECT count(*) FROM wheel_orders")).scalar())
"""


def test_the_engine_plugin_from_the_wheel(installed: Path, tmp_path: Path,
                                          elsewhere: dict[str, str], safeddl_db_url: str) -> None:
    script = tmp_path / "plugin.py"
    script.write_text(ENGINE_PLUGIN, encoding="utf-8")
    out = run(installed / "bin" / "python", script, safeddl_db_url, cwd=tmp_path,
              env=elsewhere).stdout.split("\n")
    assert "lock_timeout 3s" in out  # SET LOCAL before the DDL, in its transaction
    assert "refused truncate" in out
    assert "rows 50" in out  # the refused TRUNCATE never reached the server


PLUGIN_TESTS = """
import pytest
import sqlalchemy as sa
import safeddl


@pytest.mark.safeddl(small_table_rows=0, lock_timeout="200ms")
def test_the_fixtures_guard(safeddl_engine, lock_blocker):
    with safeddl_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id int)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    with pytest.raises(safeddl.UnsafeStatement):
        with safeddl_engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE t"))
    with lock_blocker("t", "ACCESS SHARE"):
        with pytest.raises(safeddl.LockTimeout):
            with safeddl_engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE t ADD COLUMN c int"))
"""


def test_the_pytest_plugin_from_the_wheel(installed: Path, tmp_path: Path,
                                          elsewhere: dict[str, str], safeddl_server: object,
                                          ) -> None:
    (tmp_path / "test_with_safeddl.py").write_text(PLUGIN_TESTS, encoding="utf-8")
    dsn = getattr(safeddl_server, "dsn")
    result = run(installed / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "--safeddl-dsn", dsn, cwd=tmp_path, env=elsewhere, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
