"""The rule catalogue: one module per rule, its doc page in the module docstring."""

from __future__ import annotations

from safeddl.rules import create_index, truncate
from safeddl.rules.base import Context, Finding, Rule, Severity
from safeddl.rules.engine import Result, check, lint_script

_MODULES = [truncate, create_index]

RULES: tuple[Rule, ...] = tuple(module.RULE for module in _MODULES)
DOCS: dict[str, str] = {module.RULE.id: (module.__doc__ or "").strip() for module in _MODULES}
BY_ID: dict[str, Rule] = {rule.id: rule for rule in RULES}

__all__ = ["BY_ID", "DOCS", "RULES", "Context", "Finding", "Result", "Rule", "Severity",
           "check", "lint_script"]
