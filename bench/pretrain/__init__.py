"""Stage 2, pretraining: takes a manifest's audio (labels ignored) and an encoder with a
self-supervised objective, and hands on a checkpoint (`encoder.pt`) plus its loss curve.

objective.py is the contract an objective implements; loop.py is the one loop every objective
trains in, with exact resume and data-parallel training under torchrun.
"""
