"""The pre-commit hook manifest and the CI snippets the README shows are valid: pre-commit's
own validators accept the manifest and the README's configuration, whose hook ids exist,
and the GitHub Actions workflow runs ``safeddl lint`` with ``--format github`` and uploads
the ``--format sarif`` output it wrote. No network, no database (the hooks themselves run
in tests/integration/test_pre_commit.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / ".pre-commit-hooks.yaml"
README = (ROOT / "README.md").read_text(encoding="utf-8")


def yaml_block(marker: str) -> str:
    (block,) = [b for b in re.findall(r"(?s)```yaml\n(.*?)```", README) if marker in b]
    return block


def pre_commit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pre_commit", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_the_manifest_is_valid() -> None:
    result = pre_commit("validate-manifest", MANIFEST)
    assert result.returncode == 0, result.stdout + result.stderr
    hooks = {hook["id"]: hook for hook in yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))}
    assert set(hooks) == {"safeddl-lint", "safeddl-lint-alembic"}
    assert hooks["safeddl-lint"]["types"] == ["sql"]
    assert hooks["safeddl-lint-alembic"]["pass_filenames"] is False
    assert hooks["safeddl-lint-alembic"]["args"][0] == "--alembic"


def test_the_readme_pre_commit_config_is_valid(tmp_path: Path) -> None:
    block = yaml_block(".pre-commit-config.yaml")
    config = tmp_path / ".pre-commit-config.yaml"
    config.write_text(block, encoding="utf-8")
    result = pre_commit("validate-config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    ids = {hook["id"] for repo in yaml.safe_load(block)["repos"] for hook in repo["hooks"]}
    manifest = {hook["id"] for hook in yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))}
    assert ids == manifest


def test_the_readme_workflow_annotates_and_uploads_sarif() -> None:
    workflow: dict[str, Any] = yaml.safe_load(yaml_block(".github/workflows/"))
    (job,) = workflow["jobs"].values()
    assert job["permissions"]["security-events"] == "write"
    runs = [step.get("run", "") for step in job["steps"]]
    assert any(run.startswith("safeddl lint --format github ") for run in runs)
    (sarif,) = [run for run in runs if "--format sarif" in run]
    written = re.search(r"> (\S+)", sarif)
    assert written is not None
    (upload,) = [step for step in job["steps"]
                 if str(step.get("uses", "")).startswith("github/codeql-action/upload-sarif@")]
    assert upload["with"]["sarif_file"] == written[1]
    assert upload["if"] == "always()"
