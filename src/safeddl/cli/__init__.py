"""The ``safeddl`` command line (lint, analyze, rules, explain, trace, demo), its report
formats, the Alembic revision linter, the demo and its plot (``safeddl demo --plot``)."""

from safeddl.cli.main import main

__all__ = ["main"]
