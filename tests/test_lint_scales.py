"""Lint of one long transaction does O(1) work per statement in the transaction rules
(lock-order, row-lock-order, statements-after-access-exclusive): counted, not timed."""

from __future__ import annotations

import pytest

from safeddl.rules import lint_script
from safeddl.rules.base import Context


def migration(statements: int) -> str:
    lines = ["BEGIN;", "ALTER TABLE orders ADD COLUMN note text;"]
    for i in range(statements):  # other tables, alternating: out of order, never under
        table = "customers" if i % 2 else "accounts"
        lines.append(f"UPDATE {table} SET v = v + 1 WHERE id = {i % 97};")
    return "\n".join(lines + ["COMMIT;"])


def test_work_per_statement_does_not_grow_with_the_transaction(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    existing_locks = Context.existing_locks

    def counted(self: Context, statement):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return existing_locks(self, statement)

    monkeypatch.setattr(Context, "existing_locks", counted)
    counts = []
    for size in (200, 800):
        calls = 0
        results = lint_script(migration(size))
        counts.append(calls)
        rules = [f.rule for r in results for f in r.findings]
        assert rules.count("lock-order") == 2  # accounts after orders, after customers
        assert rules.count("row-lock-order") > 0
    assert counts[1] < 4.5 * counts[0], counts  # 4x the statements: about 4x the work, not 16x
