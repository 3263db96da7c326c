"""Where the guard applies, per thread or task: ``guard()`` blocks (which Guard for which
engine or connection) and ``allow()`` blocks (rules let through, with a reason).
ContextVars, so nothing is added to or removed from a hook while others dispatch."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from safeddl.runtime.errors import ConfigError
from safeddl.runtime.policy import known_rules

if TYPE_CHECKING:
    from safeddl.runtime.guard import Guard

logger = logging.getLogger("safeddl")

Allowances = tuple[tuple[str, str], ...]  # (rule id, reason), innermost last


ALLOWANCES: contextvars.ContextVar[Allowances] = contextvars.ContextVar(
    "safeddl_allowances", default=())


@dataclass(frozen=True)
class Scope:
    """A ``with safeddl.guard(target):`` block: this Guard for that engine/connection."""

    target: Any
    guard: Guard = field(compare=False)


_SCOPES: contextvars.ContextVar[tuple[Scope, ...]] = contextvars.ContextVar(
    "safeddl_scopes", default=())


current_scopes = _SCOPES.get
"""The active ``guard()`` blocks of this thread/task (bound method: cheap to call)."""


def scoped_guard(candidates: Sequence[Any]) -> Guard | None:
    """The innermost ``guard()`` block's Guard for one of these targets, if any."""
    for scope in reversed(_SCOPES.get()):
        for candidate in candidates:
            if scope.target is candidate:
                return scope.guard
    return None


@contextmanager
def allow(*rule_ids: str, reason: str) -> Iterator[None]:
    """Let these rules pass inside the block (this thread / task only); the reason is
    logged whenever it lets a statement through."""
    if not rule_ids:
        raise ConfigError("safeddl.allow() needs at least one rule id")
    known = set(known_rules())
    unknown = [r for r in rule_ids if r not in known]
    if unknown:
        raise ConfigError(f"safeddl.allow(): unknown rule id(s) {', '.join(unknown)}")
    if not reason or not reason.strip():
        raise ConfigError("safeddl.allow() needs a reason")
    logger.debug("safeddl: allowing %s in this block: %s", ", ".join(rule_ids), reason)
    token = ALLOWANCES.set(ALLOWANCES.get() + tuple((r, reason) for r in rule_ids))
    try:
        yield
    finally:
        ALLOWANCES.reset(token)


@contextmanager
def entered(target: Any, guard: Guard) -> Iterator[Guard]:
    """Make ``guard`` the Guard of ``target`` for this thread or task inside the block."""
    token = _SCOPES.set(_SCOPES.get() + (Scope(target, guard),))
    try:
        yield guard
    finally:
        _SCOPES.reset(token)


__all__ = ["ALLOWANCES", "Allowances", "Scope", "allow", "current_scopes", "entered",
           "scoped_guard"]
