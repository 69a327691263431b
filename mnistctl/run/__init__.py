"""One run in its directory: the record (run.json) and its life, the writers and checkpoints
(hooks of the loop), the resume policy, and ``run_experiment``: the single run every command,
sweep trial, reproduction and ensemble member is."""
