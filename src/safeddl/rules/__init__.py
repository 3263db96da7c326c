"""Findings: one module per rule (its doc page in the module docstring), the catalogue of
them all (:mod:`~safeddl.rules.catalogue`) and the engine that runs them
(:mod:`~safeddl.rules.engine`)."""

from __future__ import annotations

from safeddl.rules.base import Context, Finding, Rule, Severity
from safeddl.rules.catalogue import BY_ID, DOCS, RULES, render_doc, write_docs
from safeddl.rules.engine import Result, check, lint_script

__all__ = ["BY_ID", "DOCS", "RULES", "Context", "Finding", "Result", "Rule", "Severity",
           "check", "lint_script", "render_doc", "write_docs"]
