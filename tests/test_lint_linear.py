"""Linting stays linear in the length of the script, also as one long transaction
(``--assume-in-transaction`` over a whole history): rules that look back over the
transaction or the script fold each earlier statement in once. Counted in work done
(calls), not in seconds, so the check cannot flake under load."""

from __future__ import annotations

from typing import Any

import pytest

from safeddl.analysis import Catalog
from safeddl.rules import lint_script, multiple_alter_table
from safeddl.rules.base import Context


def history(tables: int) -> str:
    out = []
    for i in range(tables):
        t = f"t{i}"
        out += [f"CREATE TABLE {t} (id bigint PRIMARY KEY, name varchar(50), ref_id bigint)",
                f"ALTER TABLE {t} ADD CONSTRAINT {t}_ref_fk FOREIGN KEY (ref_id) REFERENCES t0 (id)",
                f"CREATE INDEX {t}_name_idx ON {t} (name)",
                f"UPDATE {t} SET name = 'y' WHERE id = 1",
                f"ALTER TABLE {t} ALTER COLUMN name TYPE varchar(100)",
                f"ALTER TABLE t0 ADD COLUMN c{i} int"]
    return ";\n".join(out) + ";\n"


def work(script: str, monkeypatch: pytest.MonkeyPatch, in_transaction: bool = True) -> int:
    calls = 0
    original = Context.existing_locks
    rebuilds = 0
    original_index = Catalog._index

    def counted(self: Context, statement: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(self, statement)

    def counted_index(self: Catalog) -> Any:
        nonlocal rebuilds
        if self._derived is None or self._derived[0] != self._generation:
            rebuilds += len(self.relations)  # a rebuild costs one step per relation
        return original_index(self)

    original_touches = multiple_alter_table._touches

    def counted_touches(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return original_touches(*args)

    monkeypatch.setattr(Context, "existing_locks", counted)
    monkeypatch.setattr(Catalog, "_index", counted_index)
    monkeypatch.setattr(multiple_alter_table, "_touches", counted_touches)
    lint_script(script, version=18, assume_in_transaction=in_transaction)
    monkeypatch.undo()
    return calls + rebuilds


def test_lint_of_one_long_transaction_is_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    small = work(history(50), monkeypatch)
    large = work(history(200), monkeypatch)  # four times as long
    assert large < 4.5 * small, (small, large)


def many_tables(tables: int) -> str:
    """Writes first (no strong lock), then one ALTER TABLE on each of many tables: each
    ALTER looks back for an earlier ALTER of its table (multiple-alter-table) and for an
    earlier strong lock (missing-lock-timeout)."""
    writes = [f"INSERT INTO log_{i} (id) VALUES ({i})" for i in range(tables)]
    alters = [f"ALTER TABLE t{i} ADD COLUMN note text" for i in range(tables)]
    return ";\n".join(writes + alters) + ";\n"


def test_lint_of_a_script_over_many_tables_is_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    small = work(many_tables(100), monkeypatch, in_transaction=False)
    large = work(many_tables(400), monkeypatch, in_transaction=False)  # four times as long
    assert large < 4.5 * small, (small, large)
