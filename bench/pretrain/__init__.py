"""Stage 2, pretraining: takes a manifest's audio (labels ignored) and an encoder with a
self-supervised objective, and hands on a checkpoint (`encoder.pt`) plus its loss curve.

objective.py is the contract an objective implements; loop.py is the one loop every objective
trains in (set up, resume exactly, train, save), with distributed.py for data-parallel training
under torchrun and curve.py for loss.csv and loss.png.
"""
