"""Training, shared by every training stage: the options (options.py), the run skeleton (run.py), run
directories and checkpoints (rundir.py, checkpoint.py), one loop (loop.py, with the step in step.py and
what keeps its own cadence in cadence.py) parameterized by an objective from the registry (objectives/,
each with its own options), optimizers, schedules and distributed setup."""
