"""The package's layers, as ``[tool.importlinter]`` in pyproject.toml writes them down:
every import points to the same or a lower layer, and no module imports itself back
through others."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_imports_only_point_down_the_layers() -> None:
    program = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if program is None:
        pytest.fail("import-linter is not installed: pip install -e '.[test]'")
    result = subprocess.run([program, "--config", str(ROOT / "pyproject.toml")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_module_imports_itself_back() -> None:
    graph = grimp.build_graph("safeddl", exclude_type_checking_imports=True)
    circles = sorted({
        tuple(sorted((importer, imported)))
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if graph.chain_exists(importer=imported, imported=importer)
    })
    assert circles == []


def test_only_the_sql_package_imports_sqlglot() -> None:
    graph = grimp.build_graph("safeddl", include_external_packages=True)
    importers = graph.find_modules_that_directly_import("sqlglot")
    assert importers and all(m.split(".")[:2] == ["safeddl", "sql"] for m in importers), importers
