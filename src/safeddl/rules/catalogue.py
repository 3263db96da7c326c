"""The rule catalogue: every rule module, its rule, and its doc page (the module docstring).

``docs/rules/<id>.md`` is generated from those docstrings; after changing one, run
``python -c "from safeddl.rules import write_docs; write_docs('docs/rules')"``.
"""

from __future__ import annotations

from pathlib import Path

from safeddl.rules import (
    add_check,
    add_column_not_null_without_default,
    add_column_serial,
    add_column_volatile_default,
    add_exclude,
    add_foreign_key,
    add_unique,
    alter_column_type,
    attach_partition,
    cluster,
    concurrently_in_transaction,
    create_index,
    detach_partition,
    drop_cascade,
    drop_column,
    drop_index,
    drop_table,
    identifier_too_long,
    lock_order,
    missing_lock_timeout,
    multiple_alter_table,
    opaque_statement,
    refresh_materialized_view,
    reindex,
    rename_column,
    rename_table,
    row_lock_order,
    set_access_method,
    set_logged,
    set_not_null,
    set_tablespace,
    statements_after_access_exclusive,
    truncate,
    unparsed_statement,
    vacuum_full,
)
from safeddl.rules.base import Rule

_MODULES = [
    truncate,
    create_index,
    drop_index,
    reindex,
    add_foreign_key,
    add_check,
    add_unique,
    add_exclude,
    set_not_null,
    add_column_volatile_default,
    add_column_serial,
    alter_column_type,
    set_logged,
    set_tablespace,
    set_access_method,
    attach_partition,
    detach_partition,
    vacuum_full,
    cluster,
    refresh_materialized_view,
    concurrently_in_transaction,
    statements_after_access_exclusive,
    lock_order,
    row_lock_order,
    multiple_alter_table,
    missing_lock_timeout,
    drop_column,
    rename_column,
    rename_table,
    drop_table,
    add_column_not_null_without_default,
    identifier_too_long,
    drop_cascade,
    opaque_statement,
    unparsed_statement,
]

RULES: tuple[Rule, ...] = tuple(module.RULE for module in _MODULES)
DOCS: dict[str, str] = {module.RULE.id: (module.__doc__ or "").strip() for module in _MODULES}
BY_ID: dict[str, Rule] = {rule.id: rule for rule in RULES}


def render_doc(rule_id: str) -> str:
    """The Markdown page ``docs/rules/<rule_id>.md``: the rule module's docstring."""
    return DOCS[rule_id] + "\n"


def write_docs(directory: str | Path) -> list[Path]:
    """Write every rule's doc page into ``directory``; returns the files written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for rule_id in DOCS:
        path = out / f"{rule_id}.md"
        path.write_text(render_doc(rule_id), encoding="utf-8")
        written.append(path)
    return written


__all__ = ["BY_ID", "DOCS", "RULES", "render_doc", "write_docs"]
