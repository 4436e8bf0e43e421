"""Sweep throughput with the local executor: runs per minute at 1, 2, 4 concurrent runs per device.

The same small grid (mfcc39 frozen, the paper's BiGRU head, `--runs` seeds, `--epochs` epochs on
the 48-clip tiny embedded corpus) is run once per packing, each into a fresh records file, after
one warm-up run has built the shared feature cache; every packing then trains the same runs from
cached features. A packing of K on a CPU-only machine is K worker processes with
max(1, cores // K) torch threads each; the wall time includes starting the workers (a spawned
interpreter importing torch), which a real sweep pays once per worker, not per run.
Prints figures, asserts nothing.

Usage: python benchmarks/sweep_throughput.py [--runs 8] [--epochs 3] [--packing 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--packing", default="1,2,4", help="comma-separated runs per device")
    args = parser.parse_args()

    from bench.data.corpus.build import build_corpus
    from bench.data.corpus.embedded import CorpusConfig
    from bench.evaluate.run import run_experiment
    from bench.records import read_records
    from bench.runtime import flush_denormals
    from bench.sweep.config import load_sweep
    from bench.sweep.cpu import usable_cores
    from bench.sweep.executors import LocalExecutor
    from bench.sweep.run import run_sweep

    flush_denormals()
    corpus = build_corpus(CorpusConfig.from_size("small", speakers=8, words=3, renditions=2), progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "sweep.yaml"
        config.write_text(f"""
tasks: ["{corpus.path}"]
encoders: [mfcc39]
seeds: {args.runs}
train: {{epochs: {args.epochs}, lr: 1.0e-3, batch_size: 8}}
""")
        warm = load_sweep(config).runs[0]
        run_experiment(warm, Path(tmp) / "warm-up.jsonl", progress=False)  # builds the feature cache
        load = os.getloadavg()
        print(f"{args.runs} runs of mfcc39 frozen, {args.epochs} epochs, {len(corpus.manifest.split('train'))} "
              f"train clips; {usable_cores()} cores; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"{'runs/device':>11} {'threads/run':>11} {'wall s':>8} {'runs/min':>9} {'mean run s':>11}")
        for packing in (int(k) for k in args.packing.split(",")):
            sweep = load_sweep(config)
            sweep.records = Path(tmp) / f"packing-{packing}.jsonl"
            executor = LocalExecutor(runs_per_device=packing)
            start = time.perf_counter()
            summary = run_sweep(sweep, progress=False, executor=executor)
            wall = time.perf_counter() - start
            assert summary["ran"] == args.runs and not summary["failed"], summary
            mean_run = statistics.mean(r["wall_seconds"] for r in read_records(sweep.records))
            print(f"{packing:>11} {executor.threads:>11} {wall:>8.1f} {60 * args.runs / wall:>9.2f} {mean_run:>11.2f}")
        load = os.getloadavg()
        print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
