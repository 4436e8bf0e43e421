"""Stage 4, sweeps: takes a YAML grid of encoders x tasks x label budgets x seeds and hands on
the evaluation runs it names, skipping those already recorded.

config.py reads and checks the grid, run.py plans the runs (their config hashes) and hands the
missing ones to an executor, cost.py estimates what is left (`--dry-run`), and executors.py runs
them inline, in local worker processes or as Ray tasks; cpu.py gives local workers their threads
and OpenMP wait policy from the cores and the load already on the machine.
"""
