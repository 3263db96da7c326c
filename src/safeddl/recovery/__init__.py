"""Recovering from lock timeouts and deadlocks: whole units of work retried with tenacity
(:mod:`~safeddl.recovery.retry`), and declared transactions that lock their tables up
front in the canonical order (:mod:`~safeddl.recovery.transaction`)."""
