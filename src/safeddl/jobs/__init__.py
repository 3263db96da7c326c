"""Long jobs done without long strong locks: a full refresh swapped in with a brief lock
(:mod:`~safeddl.jobs.refresh`) and a batched backfill (:mod:`~safeddl.jobs.backfill`)."""
