"""The pre-commit hooks of .pre-commit-hooks.yaml, run by pre-commit itself on throwaway
git repositories: the hook environment is built from this checkout (``pip install`` of the
package, as a user's pre-commit does), and the exit codes and output are those of a real
commit check.

``pre-commit try-repo`` runs the hooks of this checkout, uncommitted changes included
(it builds the hook environment in a store of its own, every time); the other tests use a
``.pre-commit-config.yaml`` pointing at this checkout's HEAD, with one store for the module,
as a project using the hooks would. Each hook environment is built once (about 30 s each
here, packages from the index).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(600)]

CHECKOUT = Path(__file__).resolve().parents[2]
EXAMPLES = CHECKOUT / "examples"
ALEMBIC_PROJECT = CHECKOUT / "tests" / "alembic_project"
NOT_SQL = "TRUNCATE orders;  -- a note, not a migration: the SQL hook must not read it\n"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not (CHECKOUT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs git and a git checkout of safeddl")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("GIT_", "PRE_COMMIT", "VIRTUAL_ENV", "PIP_REQUIRE"))}
    env.update(PRE_COMMIT_HOME=str(tmp_path_factory.mktemp("pre-commit-home")),
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid",
               NO_COLOR="1")
    return env


def project(root: Path, files: dict[str, str | Path]) -> Path:
    """A git repository with ``files`` (text, or a file / folder to copy) staged."""
    root.mkdir()
    git("init", "-q", cwd=root)
    for name, content in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path) and content.is_dir():
            shutil.copytree(content, target, dirs_exist_ok=True)
        elif isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_text(content, encoding="utf-8")
    git("add", "-A", cwd=root)
    return root


def pre_commit(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pre_commit", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=540, stdin=subprocess.DEVNULL)


def hook_output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def test_try_repo_fails_a_bad_migration_and_passes_a_good_one(
        tmp_path: Path, environment: dict[str, str]) -> None:
    repo = project(tmp_path / "app", {"migrations/0001_bad.sql": EXAMPLES / "migration.sql",
                                      "migrations/0002_good.sql": EXAMPLES / "safe_migration.sql",
                                      "notes.txt": NOT_SQL})
    result = pre_commit("try-repo", str(CHECKOUT), "safeddl-lint", "--all-files",
                        cwd=repo, env=environment)
    out = hook_output(result)
    assert result.returncode == 1, out
    assert "safeddl lint" in out and "Failed" in out and "- exit code: 1" in out
    assert "migrations/0001_bad.sql:" in out
    for rule in ("[truncate]", "[create-index]", "[set-not-null]"):
        assert rule in out
    assert "Safe alternative:" in out and "CREATE INDEX CONCURRENTLY" in out
    assert "0002_good.sql:" not in out and "notes.txt" not in out


@pytest.fixture(scope="module")
def config(environment: dict[str, str]) -> str:
    """A .pre-commit-config.yaml using both hooks of this checkout's HEAD."""
    head = git("rev-parse", "HEAD", cwd=CHECKOUT)
    return (f"repos:\n- repo: {CHECKOUT}\n  rev: {head}\n  hooks:\n"
            "  - id: safeddl-lint\n  - id: safeddl-lint-alembic\n")


def test_the_sql_hook_passes_safe_migrations_and_skips_other_files(
        tmp_path: Path, environment: dict[str, str], config: str) -> None:
    repo = project(tmp_path / "app", {".pre-commit-config.yaml": config,
                                      "db/0002_good.sql": EXAMPLES / "safe_migration.sql",
                                      "notes.txt": NOT_SQL})
    result = pre_commit("run", "safeddl-lint", "--all-files", cwd=repo, env=environment)
    out = hook_output(result)
    assert result.returncode == 0, out
    assert "safeddl lint" in out and "Passed" in out

    result = pre_commit("run", "safeddl-lint", "--files", "notes.txt", cwd=repo,
                        env=environment)
    assert result.returncode == 0, hook_output(result)
    assert "(no files to check)Skipped" in hook_output(result)

    (repo / "db" / "0003_bad.sql").write_text("TRUNCATE daily_totals;\n", encoding="utf-8")
    git("add", "-A", cwd=repo)
    result = pre_commit("run", "safeddl-lint", cwd=repo, env=environment)  # staged files only
    out = hook_output(result)
    assert result.returncode == 1, out
    assert "db/0003_bad.sql:1: error [truncate]" in out
    assert "0002_good.sql" not in out


def test_the_alembic_hook_lints_every_revision_when_one_changes(
        tmp_path: Path, environment: dict[str, str], config: str) -> None:
    repo = project(tmp_path / "app", {".pre-commit-config.yaml": config,
                                      ".": ALEMBIC_PROJECT, "notes.txt": NOT_SQL})
    result = pre_commit("run", "safeddl-lint-alembic", "--all-files", cwd=repo,
                        env=environment)
    out = hook_output(result)
    assert result.returncode == 1, out
    assert "safeddl lint --alembic" in out and "Failed" in out
    assert "migrations/versions/0004_index_customer.py:17: error [create-index] revision 0004" in out
    assert "0001_create_orders.py" not in out  # a revision with nothing to report

    result = pre_commit("run", "safeddl-lint-alembic", "--files", "notes.txt", cwd=repo,
                        env=environment)
    assert result.returncode == 0, hook_output(result)
    assert "(no files to check)Skipped" in hook_output(result)

    # the unsafe revision made safe, with a reason: the project passes
    revision = repo / "migrations" / "versions" / "0004_index_customer.py"
    lines = revision.read_text(encoding="utf-8").splitlines(keepends=True)
    indent = lines[16][: len(lines[16]) - len(lines[16].lstrip())]
    lines.insert(16, f"{indent}# safeddl: ignore[create-index, statements-after-access-exclusive]"
                     " orders is empty when this runs\n")
    revision.write_text("".join(lines), encoding="utf-8")
    git("add", "-A", cwd=repo)
    result = pre_commit("run", "safeddl-lint-alembic", cwd=repo, env=environment)
    assert result.returncode == 0, hook_output(result)
    assert "Passed" in hook_output(result)
