"""Stage 5, results: takes the run records (results/runs.jsonl) and hands on every table, test
and plot of results/, as a pure function of the records: no torch, no data.
"""
