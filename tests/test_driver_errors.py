"""Errors raised instead of a driver's error keep its class; the row a lock timeout
waited for, as the server's CONTEXT names it (no database)."""

from __future__ import annotations

import psycopg.errors
import pytest
from sqlalchemy import exc

import safeddl
from safeddl.runtime.blockers import row_wait
from safeddl.runtime.errors import (
    LockTimeout,
    RetriesExhausted,
    as_driver_error,
    driver_classes_of,
    flavoured_class,
)


def test_a_flavoured_lock_timeout_is_both_and_keeps_safeddls_message() -> None:
    timeout = LockTimeout("UPDATE t SET x = 1", "t", None)
    as_driver_error(timeout, LockTimeout, (psycopg.errors.LockNotAvailable,), {})
    assert isinstance(timeout, psycopg.errors.LockNotAvailable)
    assert isinstance(timeout, safeddl.LockTimeout)
    assert str(timeout).startswith("safeddl: lock timeout")
    assert type(timeout).__name__ == "LockTimeout"
    assert driver_classes_of(timeout) == (psycopg.errors.LockNotAvailable,)


def test_one_class_per_combination_and_a_reflavoured_error_drops_the_old_driver() -> None:
    first = flavoured_class(LockTimeout, (psycopg.errors.LockNotAvailable,))
    assert first is flavoured_class(LockTimeout, (psycopg.errors.LockNotAvailable,))
    timeout = LockTimeout("ALTER TABLE t ADD c int", "t", None)
    as_driver_error(timeout, LockTimeout, (psycopg.errors.LockNotAvailable,), {})
    as_driver_error(timeout, LockTimeout, (exc.OperationalError, exc.DontWrapMixin),
                    {"params": None, "ismulti": False, "hide_parameters": False,
                     "detail": [], "connection_invalidated": False})
    assert isinstance(timeout, exc.OperationalError)
    assert not isinstance(timeout, psycopg.Error)  # SQLAlchemy must not wrap it again
    assert str(timeout).startswith("safeddl: lock timeout")


def test_a_class_that_cannot_be_combined_leaves_the_error_as_it_is() -> None:
    timeout = LockTimeout("x", None, None)
    assert type(as_driver_error(timeout, LockTimeout, (OSError,), {})) is LockTimeout


def test_plain_safeddl_errors_have_no_driver_classes() -> None:
    assert driver_classes_of(RetriesExhausted("u", [], 0.0, "limit")) == ()
    assert driver_classes_of(psycopg.errors.LockNotAvailable("x")) == (
        psycopg.errors.LockNotAvailable,)


@pytest.mark.parametrize(("context", "expected"), [
    ('while updating tuple (0,1) in relation "t"', ("t", 0, 1, "updating")),
    ('while deleting tuple (12,7) in relation "My ""odd"" table"',
     ('My "odd" table', 12, 7, "deleting")),
    ('while locking tuple (3,4) in relation "orders"', ("orders", 3, 4, "locking")),
    ('while locking updated version (0,9) of tuple in relation "t"',
     ("t", 0, 9, "locking updated")),
    ('while inserting index tuple (0,6) in relation "t_pkey"',
     ("t_pkey", 0, 6, "inserting index")),
])
def test_the_row_a_lock_timeout_waited_for(context: str,
                                           expected: tuple[str, int, int, str]) -> None:
    wait = row_wait(context)
    assert wait is not None
    assert (wait.relation, wait.page, wait.tuple, wait.action) == expected
    assert wait.own_row == expected[3].startswith("inserting")


@pytest.mark.parametrize("context", [None, "", "SQL statement \"SELECT 1\"",
                                     "PL/pgSQL function f() line 3 at SQL statement"])
def test_no_row_for_a_table_lock_wait(context: str | None) -> None:
    assert row_wait(context) is None
