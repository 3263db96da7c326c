"""safeddl: a lock-aware safety layer for PostgreSQL statements.

The pure core lives in :mod:`safeddl.analysis` (what each statement locks) and
:mod:`safeddl.rules` (what is unsafe and the safe alternative); the runtime guard in
:mod:`safeddl.decision` with its integrations (SQLAlchemy engine plugin, ``install``,
``guard()`` / ``allow()`` blocks, :mod:`safeddl.psycopg`). Importing this package is
cheap: nothing heavy is imported until a name is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from safeddl.backfill import BackfillResult as BackfillResult
    from safeddl.backfill import backfill as backfill
    from safeddl.blockers import Blocker as Blocker
    from safeddl.decision import Decision as Decision
    from safeddl.decision import allow as allow
    from safeddl.decision import decide as decide
    from safeddl.decision import guard as guard
    from safeddl.errors import ConfigError as ConfigError
    from safeddl.errors import LockTimeout as LockTimeout
    from safeddl.errors import PreflightBlocked as PreflightBlocked
    from safeddl.errors import RetriesExhausted as RetriesExhausted
    from safeddl.errors import SafeDDLError as SafeDDLError
    from safeddl.errors import UnsafeStatement as UnsafeStatement
    from safeddl.integrations import install as install
    from safeddl.integrations import uninstall as uninstall
    from safeddl.ledger import LongHeldLock as LongHeldLock
    from safeddl.ledger import on_long_held_lock as on_long_held_lock
    from safeddl.policy import Policy as Policy
    from safeddl.policy import Preflight as Preflight
    from safeddl.policy import RuleAction as RuleAction
    from safeddl.refresh import RefreshRefused as RefreshRefused
    from safeddl.refresh import SwapResult as SwapResult
    from safeddl.refresh import swap_in as swap_in
    from safeddl.retry import RetryPolicy as RetryPolicy
    from safeddl.retry import attempts as attempts
    from safeddl.retry import retry_statement as retry_statement
    from safeddl.retry import retrying as retrying
    from safeddl.retry import run_transaction as run_transaction
    from safeddl.rowkeys import lock_ordered as lock_ordered
    from safeddl.transaction import transaction as transaction

# public name -> (module, attribute)
_LAZY = {
    "Blocker": ("safeddl.blockers", "Blocker"),
    "ConfigError": ("safeddl.errors", "ConfigError"),
    "LockTimeout": ("safeddl.errors", "LockTimeout"),
    "PreflightBlocked": ("safeddl.errors", "PreflightBlocked"),
    "SafeDDLError": ("safeddl.errors", "SafeDDLError"),
    "UnsafeStatement": ("safeddl.errors", "UnsafeStatement"),
    "RetriesExhausted": ("safeddl.errors", "RetriesExhausted"),
    "RetryPolicy": ("safeddl.retry", "RetryPolicy"),
    "attempts": ("safeddl.retry", "attempts"),
    "retry_statement": ("safeddl.retry", "retry_statement"),
    "retrying": ("safeddl.retry", "retrying"),
    "run_transaction": ("safeddl.retry", "run_transaction"),
    "LongHeldLock": ("safeddl.ledger", "LongHeldLock"),
    "on_long_held_lock": ("safeddl.ledger", "on_long_held_lock"),
    "lock_ordered": ("safeddl.rowkeys", "lock_ordered"),
    "transaction": ("safeddl.transaction", "transaction"),
    "Decision": ("safeddl.decision", "Decision"),
    "allow": ("safeddl.decision", "allow"),
    "decide": ("safeddl.decision", "decide"),
    "guard": ("safeddl.decision", "guard"),
    "install": ("safeddl.integrations", "install"),
    "uninstall": ("safeddl.integrations", "uninstall"),
    "Policy": ("safeddl.policy", "Policy"),
    "Preflight": ("safeddl.policy", "Preflight"),
    "RuleAction": ("safeddl.policy", "RuleAction"),
    "BackfillResult": ("safeddl.backfill", "BackfillResult"),
    "backfill": ("safeddl.backfill", "backfill"),
    "RefreshRefused": ("safeddl.refresh", "RefreshRefused"),
    "SwapResult": ("safeddl.refresh", "SwapResult"),
    "swap_in": ("safeddl.refresh", "swap_in"),
}


def __getattr__(name: str) -> Any:
    """Import public names on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'safeddl' has no attribute {name!r}")
    from importlib import import_module

    module_name, attribute = _LAZY[name]
    value = getattr(import_module(module_name), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "BackfillResult",
    "Blocker",
    "ConfigError",
    "Decision",
    "LockTimeout",
    "LongHeldLock",
    "Policy",
    "Preflight",
    "PreflightBlocked",
    "RefreshRefused",
    "RetriesExhausted",
    "RetryPolicy",
    "RuleAction",
    "SafeDDLError",
    "SwapResult",
    "UnsafeStatement",
    "__version__",
    "allow",
    "attempts",
    "backfill",
    "decide",
    "guard",
    "install",
    "lock_ordered",
    "on_long_held_lock",
    "retry_statement",
    "retrying",
    "run_transaction",
    "swap_in",
    "transaction",
    "uninstall",
]
