"""Stage 3, evaluation: takes an encoder (a name, or a name and checkpoint) and a task, and hands
on one run record: the shared BiGRU downstream loop trained on the task's labels and scored on
its test split (and on other tasks' test splits, for generalisation).

run.py orchestrates one run from these parts: identity.py (config, hash, lock), features.py
(cached frozen features or waveforms), training.py (the loop with resumable rounds),
scoring.py (metrics, verification trials, cross-task tests) and record.py (the record itself).
"""
