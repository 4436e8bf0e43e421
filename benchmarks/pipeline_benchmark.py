"""Pretraining data-loading benchmark: prints figures, asserts nothing.

Loader overhead. For each objective (default av-joint, apc, wav2vec, at their real sizes), the
mean optimizer-step time when the batches come from the loop's batch producer with
`--loader-workers` processes (audio read and cropped, the objective's crop reader run, e.g. mouth
frames rendered or read from shards), divided by the step time on the same batches prepared
beforehand and held in memory. Both run the loop's own `train_step` on one session, interleaved
in rounds (memory, loader, memory, loader, ...) so that drift in the machine's speed hits both.
"(waiting)" is the part of a loader step spent waiting for its batch rather than computing.
Goal: at most 1.10.

Usage: python benchmarks/pipeline_benchmark.py [--data embedded:small] [--encoders av-joint,apc,wav2vec]
       [--batch-size 8] [--steps 6] [--rounds 2] [--loader-workers 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.device import resolve_device
from bench.pretrain.batches import StepBatches, batch_stream
from bench.pretrain.distributed import Distributed
from bench.pretrain.loop import PretrainConfig, start_session, train_step
from bench.runtime import flush_denormals


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(session, model, batches) -> list[float]:
    times = []
    for wav, lengths, info in batches:
        _synchronize(session.device)
        started = time.perf_counter()
        train_step(session, model, wav, lengths, info)
        _synchronize(session.device)
        times.append(time.perf_counter() - started)
    return times


def _loader_round(session, model, first: int, steps: int, workers: int) -> tuple[float, list[float]]:
    """Steps fed by the loader; returns the wall time per step (waits included) and step times."""
    reader = session.pretext.crop_reader()
    stream = batch_stream(session.sampler, slice(None), first, first + steps + 1, workers=workers, reader=reader,
                          pin_memory=session.device.type == "cuda")
    wav, lengths, info = next(stream)  # the workers' start-up is a one-off cost, not a per-step one
    train_step(session, model, wav, lengths, info)
    started = time.perf_counter()
    times = _timed_steps(session, model, stream)
    return (time.perf_counter() - started) / steps, times


def _memory_round(session, model, first: int, steps: int) -> float:
    """Steps on the same kind of batches, made (with their extras) before the clock starts."""
    maker = StepBatches(session.sampler, slice(None), session.pretext.crop_reader())
    batches = [maker[step] for step in range(first, first + steps)]
    started = time.perf_counter()
    _timed_steps(session, model, batches)
    return (time.perf_counter() - started) / steps


def measure(encoder: str, args: argparse.Namespace, device: torch.device) -> dict:
    config = PretrainConfig(encoder=encoder, data=args.data, steps=10_000, batch_size=args.batch_size,
                            loader_workers=args.loader_workers)
    with tempfile.TemporaryDirectory() as out:
        session = start_session(config.validated(), Path(out), Distributed(device), device, progress=False)
    session.pretext.train()
    model = session.pretext
    _memory_round(session, model, 0, 1)  # warm-up: first-call allocations and kernels
    memory, loader, waits = [], [], []
    step = 1
    for _ in range(args.rounds):
        memory.append(_memory_round(session, model, step, args.steps))
        step += args.steps
        wall, times = _loader_round(session, model, step, args.steps, args.loader_workers)
        loader.append(wall)
        waits.append(wall - float(np.mean(times)))
        step += args.steps + 1
    return {"encoder": encoder, "memory_s": float(np.mean(memory)), "loader_s": float(np.mean(loader)),
            "ratio": float(np.mean(loader) / np.mean(memory)), "wait_s": float(np.mean(waits)),
            "rounds": list(zip(memory, loader))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="embedded:small")
    parser.add_argument("--encoders", default="av-joint,apc,wav2vec")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round and mode")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    flush_denormals()
    device = resolve_device(args.device)
    print(f"data {args.data}, batch {args.batch_size}, {args.rounds} x {args.steps} timed steps per mode, "
          f"{args.loader_workers} loader workers, {torch.get_num_threads()} training threads, device {device}")
    print(f"{'objective':<10} {'in memory s/step':>17} {'loader s/step':>14} {'(waiting)':>10} {'ratio':>6}  "
          "rounds (memory, loader)")
    for encoder in args.encoders.split(","):
        r = measure(encoder, args, device)
        rounds = ", ".join(f"({m:.3f}, {w:.3f})" for m, w in r["rounds"])
        print(f"{encoder:<10} {r['memory_s']:>17.3f} {r['loader_s']:>14.3f} {r['wait_s']:>10.3f} {r['ratio']:>6.3f}  "
              f"{rounds}", flush=True)


if __name__ == "__main__":
    main()
