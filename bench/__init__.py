"""avbench: a benchmark harness for speech representations.

The harness lives here: data preparation into manifests, the embedded corpus, and (later) the
encoder registry, the shared downstream loop, sweeps and tables.
"""

__version__ = "0.1.0"
