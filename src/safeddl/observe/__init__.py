"""What a real server does: the locks a statement takes (:mod:`~safeddl.observe.snapshot`),
a script traced against its analysis (:mod:`~safeddl.observe.trace`), and the lock tracer
and lock blocker of the pytest plugin."""
