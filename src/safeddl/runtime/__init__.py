"""What the guard does with a statement: the policy, the pure decision and its plans and
rewrites, the per-transaction lock ledger, sessions and their settings, the live catalog,
blockers, errors, and the :class:`~safeddl.runtime.guard.Guard` that applies them all."""
