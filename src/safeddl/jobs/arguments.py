"""Checking the helpers' arguments before anything is sent: a clear ConfigError naming
the helper and the argument, instead of a TypeError from deep inside or an error from
the server halfway through a job."""

from __future__ import annotations

from safeddl.runtime.errors import ConfigError
from safeddl.sql.names import split_relation_name

BIGINT_MAX = 2**63 - 1


def whole_number(helper: str, name: str, value: object, *, minimum: int,
                 maximum: int = BIGINT_MAX) -> int:
    """``value`` itself when it is an int (not a bool) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{helper}: {name}={value!r} must be a whole number (an int), "
                          f"{minimum} or more")
    if not minimum <= value <= maximum:
        raise ConfigError(f"{helper}: {name}={value!r} must be between {minimum} and "
                          f"{maximum:,}")
    return value


def relation_name(helper: str, name: str, value: object) -> str:
    """A table name as SQL reads it (``orders``, ``app.orders``, ``"My Table"``)."""
    parts = split_relation_name(value) if isinstance(value, str) else None
    if not parts or len(parts) > 2 or any(not part for part, _quoted in parts):
        raise ConfigError(f"{helper}: {name}={value!r} is not a table name (table or "
                          'schema.table, as in SQL: "my table" in double quotes for a name '
                          "with a space or capitals)")
    assert isinstance(value, str)
    return value


def sql_text(helper: str, name: str, value: object) -> str:
    """SQL from the caller, run as given: a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{helper}: {name}={value!r} must be SQL text (a non-empty "
                          "string); it is run as given")
    return value


__all__ = ["BIGINT_MAX", "relation_name", "sql_text", "whole_number"]
