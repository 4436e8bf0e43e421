"""Stage 4, sweeps: takes a YAML grid of encoders x tasks x label budgets x seeds, builds the
pretraining checkpoints it declares, and hands on the evaluation runs it names, skipping those
already recorded.

config.py reads and checks the grid, pretraining.py its `pretraining:` entries and the checkpoints
the runs need, run.py plans the runs (their config hashes) and hands the missing checkpoints, then
the missing runs, to an executor, cost.py and pretraining_cost.py estimate what is left
(`--dry-run`), and executors.py runs them inline, in local worker processes or as Ray tasks;
cpu.py gives local workers their threads and OpenMP wait policy from the cores and the load
already on the machine.
"""
