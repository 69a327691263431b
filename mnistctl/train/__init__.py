"""Training one run: the loop (``fit``), the events it sends, the hooks that receive them, and
the stopping rules. Knows nothing of files: writers are hooks, in :mod:`mnistctl.run`."""
