"""Feature-extraction benchmark: prints figures, asserts nothing.

For every registered encoder (or those named), the speed of a frozen forward pass over a batch of
16 one-second clips at 16 kHz, in times real time (seconds of audio per second of compute), with
the output shape, parameter count and peak-RSS growth. Random weights: speed does not depend on
them. Run it alone on the machine: another CPU-heavy process halves the figures.

Usage: python benchmarks/extract_benchmark.py [--encoders apc wav2vec ...] [--batch 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from bench.registry import count_parameters, create_encoder, encoder_entry, list_encoders
from bench.runtime import flush_denormals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="*", help="default: every registered encoder but families")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    flush_denormals()
    names = args.encoders or [n for n in list_encoders() if not encoder_entry(n).family]
    samples = int(args.seconds * 16_000)
    torch.manual_seed(0)
    wav = torch.randn(args.batch, samples) * 0.1
    lengths = torch.full((args.batch,), samples, dtype=torch.long)
    audio_seconds = args.batch * args.seconds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch} x {args.seconds:g} s "
          f"clips, best of {args.repeat} after one warm-up")
    print(f"{'encoder':<18} {'params':>11} {'output':>16} {'s/batch':>9} {'x real time':>12} {'RSS +MB':>8}")
    for name in names:
        enc = create_encoder(name).eval()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with torch.inference_mode():
            feats, frames = enc(wav, lengths)  # warm-up (allocator, kernels)
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                enc(wav, lengths)
                times.append(time.perf_counter() - start)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
        best = min(times)
        shape = f"{int(frames[0])}x{feats.shape[-1]} @{enc.frame_rate:g}Hz"
        print(f"{name:<18} {count_parameters(enc):>11,} {shape:>16} {best:>9.3f} {audio_seconds / best:>12.1f} "
              f"{max(rss, 0):>8.0f}")


if __name__ == "__main__":
    main()
