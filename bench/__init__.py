"""avbench: a benchmark harness for speech representations.

The tree follows the pipeline. Each stage is a subpackage that imports only from the stages
before it and from the shared contracts here at the root, never from a later stage:

    data/      corpora -> manifests, tasks, audio and mouth frames, the feature cache
    pretrain/  manifests + an encoder's objective -> a pretrained checkpoint
    evaluate/  an encoder (or checkpoint) x task -> one run record (the shared BiGRU loop)
    sweep/     a YAML grid -> many runs, planned, costed and executed
    results/   run records -> tables, statistics, plots and the results index

Shared contracts every stage uses: registry.py (encoders and plugins), checkpoints.py,
records.py (the one record format), files.py (atomic writes, content hashes), paths.py (the
data folder), runtime.py (process-wide torch settings) and errors.py. cli.py sits on top and
assembles each stage's commands. The encoders themselves live outside, in encoders/ and
baselines/, and reach the stages only through the registry.
"""

__version__ = "0.1.0"
