"""Stage 4, sweeps: takes a YAML grid of encoders x tasks x label budgets x seeds and hands on
the evaluation runs it names, skipping those already recorded.

plan.py reads the config and plans the runs, cost.py estimates what is left (`--dry-run`), and
executors.py runs them inline, in local worker processes or as Ray tasks.
"""
