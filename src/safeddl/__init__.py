"""safeddl: a lock-aware safety layer for PostgreSQL statements.

The pure core lives in :mod:`safeddl.sql` (reading), :mod:`safeddl.analysis` (what each
statement locks) and :mod:`safeddl.rules` (what is unsafe and the safe alternative); what
the guard does about it in :mod:`safeddl.runtime`, applied to connections by
:mod:`safeddl.integrations` (SQLAlchemy engine plugin, ``install``, ``guard()`` blocks,
:mod:`safeddl.psycopg`). Importing this package is
cheap: nothing heavy is imported until a name is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from safeddl.integrations import guard as guard
    from safeddl.integrations import install as install
    from safeddl.integrations import uninstall as uninstall
    from safeddl.jobs.backfill import BackfillResult as BackfillResult
    from safeddl.jobs.backfill import backfill as backfill
    from safeddl.jobs.refresh import RefreshRefused as RefreshRefused
    from safeddl.jobs.refresh import SwapResult as SwapResult
    from safeddl.jobs.refresh import swap_in as swap_in
    from safeddl.ordering import lock_ordered as lock_ordered
    from safeddl.recovery.retry import RetryPolicy as RetryPolicy
    from safeddl.recovery.retry import attempts as attempts
    from safeddl.recovery.retry import retry_statement as retry_statement
    from safeddl.recovery.retry import retrying as retrying
    from safeddl.recovery.retry import run_transaction as run_transaction
    from safeddl.recovery.transaction import transaction as transaction
    from safeddl.runtime.blockers import Blocker as Blocker
    from safeddl.runtime.decision import decide as decide
    from safeddl.runtime.errors import ConfigError as ConfigError
    from safeddl.runtime.errors import LockTimeout as LockTimeout
    from safeddl.runtime.errors import PreflightBlocked as PreflightBlocked
    from safeddl.runtime.errors import RetriesExhausted as RetriesExhausted
    from safeddl.runtime.errors import SafeDDLError as SafeDDLError
    from safeddl.runtime.errors import UnsafeStatement as UnsafeStatement
    from safeddl.runtime.interrupted import PlanInterrupted as PlanInterrupted
    from safeddl.runtime.interrupted import PlanStepLockTimeout as PlanStepLockTimeout
    from safeddl.runtime.ledger import LongHeldLock as LongHeldLock
    from safeddl.runtime.ledger import on_long_held_lock as on_long_held_lock
    from safeddl.runtime.plan import Decision as Decision
    from safeddl.runtime.policy import Policy as Policy
    from safeddl.runtime.policy import Preflight as Preflight
    from safeddl.runtime.policy import RuleAction as RuleAction
    from safeddl.runtime.scope import allow as allow

# public name -> (module, attribute)
_LAZY = {
    "Blocker": ("safeddl.runtime.blockers", "Blocker"),
    "ConfigError": ("safeddl.runtime.errors", "ConfigError"),
    "LockTimeout": ("safeddl.runtime.errors", "LockTimeout"),
    "PreflightBlocked": ("safeddl.runtime.errors", "PreflightBlocked"),
    "SafeDDLError": ("safeddl.runtime.errors", "SafeDDLError"),
    "UnsafeStatement": ("safeddl.runtime.errors", "UnsafeStatement"),
    "PlanInterrupted": ("safeddl.runtime.interrupted", "PlanInterrupted"),
    "PlanStepLockTimeout": ("safeddl.runtime.interrupted", "PlanStepLockTimeout"),
    "RetriesExhausted": ("safeddl.runtime.errors", "RetriesExhausted"),
    "RetryPolicy": ("safeddl.recovery.retry", "RetryPolicy"),
    "attempts": ("safeddl.recovery.retry", "attempts"),
    "retry_statement": ("safeddl.recovery.retry", "retry_statement"),
    "retrying": ("safeddl.recovery.retry", "retrying"),
    "run_transaction": ("safeddl.recovery.retry", "run_transaction"),
    "LongHeldLock": ("safeddl.runtime.ledger", "LongHeldLock"),
    "on_long_held_lock": ("safeddl.runtime.ledger", "on_long_held_lock"),
    "lock_ordered": ("safeddl.ordering", "lock_ordered"),
    "transaction": ("safeddl.recovery.transaction", "transaction"),
    "Decision": ("safeddl.runtime.plan", "Decision"),
    "allow": ("safeddl.runtime.scope", "allow"),
    "decide": ("safeddl.runtime.decision", "decide"),
    "guard": ("safeddl.integrations", "guard"),
    "install": ("safeddl.integrations", "install"),
    "uninstall": ("safeddl.integrations", "uninstall"),
    "Policy": ("safeddl.runtime.policy", "Policy"),
    "Preflight": ("safeddl.runtime.policy", "Preflight"),
    "RuleAction": ("safeddl.runtime.policy", "RuleAction"),
    "BackfillResult": ("safeddl.jobs.backfill", "BackfillResult"),
    "backfill": ("safeddl.jobs.backfill", "backfill"),
    "RefreshRefused": ("safeddl.jobs.refresh", "RefreshRefused"),
    "SwapResult": ("safeddl.jobs.refresh", "SwapResult"),
    "swap_in": ("safeddl.jobs.refresh", "swap_in"),
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
    "PlanInterrupted",
    "PlanStepLockTimeout",
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
