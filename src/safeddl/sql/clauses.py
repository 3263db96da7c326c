"""What the DDL statement readers share: the signal for a form they do not know, and
small clause readers (a name that must be there, storage parameter names)."""

from __future__ import annotations

from safeddl.sql.tokens import Cursor, split_top_level


class NotUnderstood(Exception):
    """The statement's form is not one safeddl knows; ``outside_transaction``: what is
    known of it all the same is that it cannot run inside a transaction block (a DO
    block that may COMMIT)."""

    def __init__(self, reason: str, outside_transaction: bool = False) -> None:
        super().__init__(reason)
        self.outside_transaction = outside_transaction


def require_name(c: Cursor, what: str) -> str:
    name = c.read_name()
    if name is None:
        raise NotUnderstood(f"expected a {what} name")
    return name


def storage_options(c: Cursor) -> tuple[str, ...]:
    """Parameter names of ``SET (a = 1, b)`` / ``RESET (a, b)`` at the cursor."""
    c.accept_any("SET", "RESET")
    if c.peek() is None or c.peek().kind != "L_PAREN":  # type: ignore[union-attr]
        return ()
    g0, g1 = c.read_group()
    names = []
    for start, _stop in split_top_level(c.tokens, g0, g1):
        names.append(c.text_of(start, start + 1).lower())
        # toast.autovacuum_enabled: keep the dotted name
        if start + 2 < g1 and c.tokens[start + 1].kind == "DOT":
            names[-1] = c.text_of(start, start + 3).lower()
    return tuple(names)


__all__ = ["NotUnderstood", "require_name", "storage_options"]
