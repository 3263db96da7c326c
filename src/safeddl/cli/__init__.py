"""The ``safeddl`` command line (lint, analyze, rules, explain, trace, demo), its report
formats, the Alembic revision linter and the demo."""

from safeddl.cli.main import main

__all__ = ["main"]
