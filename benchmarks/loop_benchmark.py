"""Downstream-loop benchmark: prints figures, asserts nothing.

1. Overhead: one epoch of avbench's loop over cached features (cache reads, collation, packing
   check, BiGRU, loss, Adam) against a bare nn.GRU forward+backward+step on the very same batches
   held in memory. Goal: at most 1.15x.
2. Training throughput (clips/s) for 100 Hz x 39-d (mfcc39) and 25 Hz x 512-d (the proposed
   encoder's shape) at batch 32 and 128, and the achieved GFLOP/s of the BiGRU against this
   machine's measured fp32 matrix-product rate.
3. OpenMP wait policy, in two machine states: idle, and with one other CPU-bound process running
   (a busy-looping Python process). In each, the same training step at 2 threads, 100 Hz x 80-d
   (logmel), batch 32, in a fresh process per measurement (libgomp reads the policy once, at
   start) with idle threads sleeping (PASSIVE) and spinning (ACTIVE), 3 interleaved repeats each
   (median), against the policy the sweep's default picks for one 2-thread worker in that state
   (bench.sweep.cpu.choose_wait_policy on the load measured there). Goal: the default within 5 %
   of the better policy in both states.
   The sections above run under this process's own policy (libgomp's default unless set).

Usage: python benchmarks/loop_benchmark.py [--corpus small|default|PATH] [--clips N] [--wait-policy-only]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from bench.data.corpus.build import build_corpus
from bench.data.corpus.embedded import CorpusConfig, find_corpus
from bench.data.datasets import CachedFeatureDataset, pad_collate
from bench.data.feature_cache import FeatureCache
from bench.evaluate.downstream import BiGRUClassifier
from bench.registry import create_encoder
from bench.runtime import flush_denormals
from bench.sweep.cpu import busy_cores, choose_wait_policy, thread_env, usable_cores


def gemm_gflops(n: int = 1024, repeat: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n ** 3 * repeat / (time.perf_counter() - start) / 1e9


def bigru_train_gflop_per_clip(frames: int, dim: int, hidden: int = 256, layers: int = 2) -> float:
    """Multiply-adds of the gate GEMMs (input and recurrent), both directions; backward ~ 2x forward."""
    forward = 0
    d_in = dim
    for _ in range(layers):
        forward += 2 * (2 * 3 * hidden * d_in + 2 * 3 * hidden * hidden) * frames
        d_in = 2 * hidden
    return 3 * forward / 1e9


def bare_epoch(batches, dim: int, classes: int) -> float:
    torch.manual_seed(0)
    gru = nn.GRU(dim, 256, num_layers=2, batch_first=True, bidirectional=True)
    head = nn.Linear(512, classes)
    opt = torch.optim.Adam([*gru.parameters(), *head.parameters()], 1e-3)
    start = time.perf_counter()
    for x, _, y in batches:
        _, h = gru(x)
        loss = nn.functional.cross_entropy(head(torch.cat([h[-2], h[-1]], 1)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def loop_epoch(loader, dim: int, classes: int) -> float:
    torch.manual_seed(0)
    model = BiGRUClassifier(dim, classes)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    start = time.perf_counter()
    for x, lengths, y in loader:
        loss = nn.functional.cross_entropy(model(x, lengths), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def synthetic_throughput(frames: int, dim: int, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = BiGRUClassifier(dim, 30)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.randn(batch, frames, dim), torch.randint(0, 30, (batch,))
    lengths = torch.full((batch,), frames)
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x, lengths), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def wait_policy_throughput(policy: str, threads: int) -> float:
    """Training clips/s (100 Hz x 80, batch 32) in a fresh process under OMP_WAIT_POLICY=policy."""
    env = {**os.environ, **thread_env(threads), "OMP_WAIT_POLICY": policy}  # a sweep worker's, policy aside
    done = subprocess.run([sys.executable, __file__, "--probe"], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"wait-policy probe ({policy}) failed:\n{done.stderr}")
    return float(done.stdout.split()[-1])


def wait_policy_section(threads: int = 2, repeats: int = 3) -> None:
    """Section 3: PASSIVE and ACTIVE measured on an idle machine and beside a CPU-bound process,
    against what the sweep's default picks in each state."""
    if usable_cores() < threads:
        print(f"OpenMP wait policy: skipped, {usable_cores()} core(s) (a {threads}-thread worker needs {threads})")
        return
    os.environ.pop("OMP_WAIT_POLICY", None)  # measure what the sweep picks, not a setting of this shell
    for state in ("idle", "one CPU-bound process running"):
        hog = None
        if state != "idle":
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1.0)  # scheduled and running before the load is read
        try:
            busy = busy_cores(1.0)
            picked = choose_wait_policy(1, threads, usable_cores(), lambda: busy)
            rates: dict[str, list[float]] = {"PASSIVE": [], "ACTIVE": []}
            for _ in range(repeats):  # interleaved, so a drift in the machine hits both alike
                for policy in rates:
                    rates[policy].append(wait_policy_throughput(policy, threads))
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        median = {policy: float(np.median(values)) for policy, values in rates.items()}
        best = max(median, key=median.get)
        print(f"OpenMP wait policy, {state} (other load {busy:.2f} cores), {threads} threads, 100 Hz x 80, "
              f"batch 32, median of {repeats}: PASSIVE {median['PASSIVE']:.1f} clips/s "
              f"{_spread(rates['PASSIVE'])}, ACTIVE {median['ACTIVE']:.1f} clips/s {_spread(rates['ACTIVE'])} "
              f"= ACTIVE/PASSIVE {median['ACTIVE'] / median['PASSIVE']:.2f}x; default picks {picked.policy} "
              f"= {100 * median[picked.policy] / median[best]:.1f}% of the better ({best})")


def _spread(values: list[float]) -> str:
    return f"[{min(values):.1f}-{max(values):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default="small")
    parser.add_argument("--clips", type=int, default=256, help="training clips in the overhead epoch")
    parser.add_argument("--wait-policy-only", action="store_true", help="run section 3 only")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # section 3's child process
    args = parser.parse_args()
    flush_denormals()  # as every avbench run does, before torch starts its threads
    if args.probe:
        print(synthetic_throughput(101, 80, 32, steps=10))
        return
    if args.wait_policy_only:
        wait_policy_section()
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak = gemm_gflops()
    print(f"fp32 matrix product (1024^3): {peak:.1f} GFLOP/s")

    corpus = (build_corpus(CorpusConfig.from_size(args.corpus), progress=False)
              if args.corpus in ("small", "default", "large") else find_corpus(args.corpus))
    encoder = create_encoder("mfcc39")
    cached = FeatureCache().get_or_build(encoder, corpus.manifest, progress=False)
    train = corpus.manifest.split("train").iloc[: args.clips]
    labels = {label: i for i, label in enumerate(corpus.manifest.labels)}
    dataset = CachedFeatureDataset(cached, train["clip_id"].tolist(), [labels[x] for x in train["label"]])
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(dataset, batch_size=32, shuffle=True, generator=generator, collate_fn=pad_collate)
    batches = list(DataLoader(dataset, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0),
                              collate_fn=pad_collate))
    classes = len(labels)
    loop_epoch(loader, 39, classes)  # warm-up: allocator and kernels
    bare, loop = [], []
    for _ in range(3):
        bare.append(bare_epoch(batches, 39, classes))
        loop.append(loop_epoch(loader, 39, classes))
    print(f"overhead, {len(dataset)} clips x 101 frames x 39, batch 32 (median of 3): avbench loop "
          f"{np.median(loop):.2f} s vs bare GRU {np.median(bare):.2f} s = {np.median(loop) / np.median(bare):.3f}x")

    for frames, dim, label in ((101, 39, "100 Hz x 39 (mfcc39)"), (26, 512, "25 Hz x 512 (ResNet18 features)")):
        for batch in (32, 128):
            rate = synthetic_throughput(frames, dim, batch, steps=6 if batch == 32 else 3)
            gflops = rate * bigru_train_gflop_per_clip(frames, dim)
            print(f"train throughput {label}, batch {batch}: {rate:.1f} clips/s, "
                  f"{gflops:.1f} GFLOP/s ({100 * gflops / peak:.0f}% of the matrix-product rate)")

    wait_policy_section()


if __name__ == "__main__":
    main()
