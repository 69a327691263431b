"""Many runs: sweeps on Ray Tune, the reproduction ledger, ensembles. Each is the single run of
:mod:`mnistctl.run` called again with other hooks, and read back from its directory."""
