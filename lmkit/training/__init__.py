"""Training, shared by every training stage: the options (options.py), the run skeleton (run.py), run
directories and checkpoints (rundir.py, checkpoint.py), one loop (loop.py) parameterized by an
objective from the registry (objectives/), optimizers, schedules and distributed setup."""
