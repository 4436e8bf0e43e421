"""Feature-cache figures: build and read throughput, and peak RSS of a reader vs a memory budget.

    python benchmarks/cache_benchmark.py [--gb 1.6] [--budget-mb 400] [--dir /tmp]

A synthetic encoder (512-d at 25 Hz, no parameters, features that cost almost nothing) runs over
a synthetic manifest of many 1 s clips that reuse a few short wav files, so the figures are those
of the cache (audio loading, batching, checks, float16 conversion, writes, reads), not of a
model. It prints:

  (a) build throughput (MB/s written, clips/s), with 0, 1 and 2 audio-loading workers on a subset,
      and read throughput for sequential and random clip order, with the shards dropped from the
      page cache first (cold, from disk) and again once they are cached (warm);
  (b) peak RSS (VmHWM) of a fresh reader process that reads every clip in random order, next to
      the cache size and the budget. The bench.data.cache_entry reader runs under RLIMIT_AS = budget, so
      going over it would fail rather than pass unnoticed; np.memmap of the same shards is
      measured for comparison (no limit: its mapping alone exceeds the budget).

Everything is written under a temporary folder that is removed at the end. It takes one to three
minutes, mostly writing the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1e6
DIM = 512
FRAME_RATE = 25.0
CLIP_SAMPLES = 16_000
SOURCE_FILES = 4


def make_encoder(variant: int = 0):
    import torch

    from bench.registry import Encoder

    class SyntheticEncoder(Encoder):
        """Features = a fixed random table plus a per-clip offset: distinct per clip, ~free."""

        name = "synthetic"
        frame_rate = FRAME_RATE
        dim = DIM
        trainable = False

        def __init__(self) -> None:
            super().__init__()
            gen = torch.Generator().manual_seed(variant)
            self.table = torch.randn(4096, DIM, generator=gen)  # a plain attribute: no state_dict

        def forward(self, wav: torch.Tensor, lengths: torch.Tensor):
            out = self.output_lengths(lengths)
            frames = int(out.max())
            feats = self.table[:frames][None] + wav[:, :1, None] * 10.0
            return feats, out

        def config(self) -> dict:
            return {**super().config(), "variant": variant}

    return SyntheticEncoder()


def make_manifest(folder: Path, clips: int):
    """`clips` 1 s rows pointing at SOURCE_FILES wav files, spread over the three splits."""
    import pandas as pd
    import soundfile as sf

    from bench.data.manifest import read_manifest, write_manifest

    rng = np.random.default_rng(0)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    for k in range(SOURCE_FILES):
        sf.write(folder / "audio" / f"src{k}.wav", (rng.standard_normal(CLIP_SAMPLES) * 0.1).astype(np.float32),
                 16_000, subtype="PCM_16")
    i = np.arange(clips)
    table = pd.DataFrame({
        "clip_id": [f"c{j:07d}" for j in i],
        "audio_path": [f"audio/src{j % SOURCE_FILES}.wav" for j in i],
        "label": [f"w{j % 30}" for j in i],
        "speaker": [f"s{j % 100}" for j in i],
        "split": np.array(["train", "valid", "test"])[np.minimum(i % 10, 8) // 4],
        "num_samples": CLIP_SAMPLES,
        "sample_rate": 16_000,
    })
    return read_manifest(write_manifest(table, folder))


def drop_page_cache(entry: Path) -> None:
    """Evict the shards from the page cache (clean pages only; they were fsynced), no root needed."""
    for shard in entry.glob("shard-*.f16"):
        fd = os.open(shard, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def vm_status() -> dict[str, int]:
    """VmHWM, VmRSS, VmPeak, VmSize of this process in bytes, from /proc/self/status."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmHWM", "VmRSS", "VmPeak", "VmSize"):
            out[name] = int(rest.split()[0]) * 1024
    return out


def read_child(entry: str, mode: str, order: str, limit_bytes: int) -> None:
    """Run in a fresh interpreter: read every clip once, print a JSON line of figures."""
    if limit_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    from bench.data.cache_entry import CachedFeatures

    before = vm_status()
    cached = CachedFeatures.open(entry)
    n = len(cached)
    idx = np.random.default_rng(1).permutation(n) if order == "random" else np.arange(n)
    total, checksum = 0, 0.0
    start = time.perf_counter()
    if mode == "pread":
        for i in idx:
            x = cached.get(int(i))
            total += x.nbytes
            checksum += float(x[0, 0])
    else:  # np.memmap of each shard, clips copied out as a data loader would
        maps = [np.memmap(Path(entry) / f"shard-{s:05d}.f16", dtype=np.float16, mode="r").reshape(-1, cached.dim)
                for s in range(len(cached.meta["shard_bytes"]))]
        for i in idx:
            off, n_frames = int(cached._offset[i]), int(cached.lengths[i])
            x = np.array(maps[int(cached._shard[i])][off: off + n_frames])
            total += x.nbytes
            checksum += float(x[0, 0])
    seconds = time.perf_counter() - start
    assert total == cached.meta["bytes"], (total, cached.meta["bytes"])
    after = vm_status()
    print(json.dumps({"seconds": seconds, "bytes": total, "clips": n, "checksum": checksum,
                      "baseline_rss": before["VmRSS"], **after}))


def run_reader(entry: Path, mode: str, order: str, limit_bytes: int = 0) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--read-child", str(entry), "--mode", mode, "--order", order,
           "--limit-bytes", str(limit_bytes)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"reader ({mode}, {order}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build(cache, encoder, manifest, workers: int):
    t = time.perf_counter()
    cached = cache.get_or_build(encoder, manifest, batch_size=64, progress=False, num_workers=workers)
    return cached, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.6, help="size of the cache read in (b), GB (1e9 bytes)")
    ap.add_argument("--budget-mb", type=float, default=400, help="memory budget of the reader, MB")
    ap.add_argument("--loader-clips", type=int, default=6000, help="clips of the worker comparison")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the temporary folder")
    ap.add_argument("--read-child", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="pread", help=argparse.SUPPRESS)
    ap.add_argument("--order", default="random", help=argparse.SUPPRESS)
    ap.add_argument("--limit-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.read_child:
        read_child(args.read_child, args.mode, args.order, args.limit_bytes)
        return

    import logging

    import bench.data.audio  # noqa: F401  (scipy's import, seconds, stays out of the first timing)
    from bench.data.feature_cache import FeatureCache

    logging.basicConfig(level=logging.WARNING)
    clip_bytes = (CLIP_SAMPLES // int(16_000 / FRAME_RATE) + 1) * DIM * 2
    clips = int(args.gb * 1e9 // clip_bytes)
    tmp = Path(tempfile.mkdtemp(prefix="avbench-cache-bench-", dir=args.dir))
    t0 = time.perf_counter()
    try:
        print(f"temporary folder {tmp}; {os.cpu_count()} cores; synthetic encoder {DIM}-d at "
              f"{FRAME_RATE:g} Hz, 1 s clips ({clip_bytes / 1e3:.1f} kB of float16 each)")
        cache = FeatureCache(tmp / "cache")

        print(f"\n(a) build throughput, batch 64, audio-loading workers compared on {args.loader_clips} clips")
        small = make_manifest(tmp / "small", args.loader_clips)
        for variant, workers in enumerate((0, 1, 2)):
            cached, secs = build(cache, make_encoder(variant + 1), small, workers)
            print(f"    workers={workers}: {cached.meta['bytes'] / MB / secs:7.1f} MB/s  "
                  f"{len(cached) / secs:7.0f} clips/s  ({secs:.1f} s)")
        manifest = make_manifest(tmp / "big", clips)
        cached, secs = build(cache, make_encoder(0), manifest, workers=None)
        size = cached.meta["bytes"]
        print(f"    full cache, {clips} clips, {size / 1e9:.2f} GB in {len(cached.meta['shard_bytes'])} "
              f"shards, default workers: {size / MB / secs:.1f} MB/s, {clips / secs:.0f} clips/s "
              f"({secs:.1f} s, fsync included)")
        entry = cached.path
        cached.close()

        print("\n    read throughput, one fresh reader process per line, bench.data.cache_entry (os.preadv):")
        results = {}
        for order in ("sequential", "random"):
            for temp in ("cold", "warm"):
                if temp == "cold":
                    drop_page_cache(entry)
                r = results[order, temp] = run_reader(entry, "pread", order)
                print(f"    {order:<10} {temp}: {r['bytes'] / MB / r['seconds']:8.1f} MB/s  "
                      f"{r['clips'] / r['seconds']:8.0f} clips/s  ({r['seconds']:.1f} s)")
        print("    (cold: shards evicted from the page cache with posix_fadvise before reading)")

        budget = int(args.budget_mb * MB)
        print(f"\n(b) peak RSS reading all {clips} clips in random order, cache {size / 1e9:.2f} GB = "
              f"{size / budget:.1f}x the {args.budget_mb:.0f} MB budget")
        r = run_reader(entry, "pread", "random", limit_bytes=budget)
        print(f"    bench.data.cache_entry, RLIMIT_AS={budget / MB:.0f} MB: peak RSS {r['VmHWM'] / MB:6.1f} MB "
              f"(after imports {r['baseline_rss'] / MB:.1f} MB), peak address space "
              f"{r['VmPeak'] / MB:.1f} MB, {r['seconds']:.1f} s")
        m = run_reader(entry, "memmap", "random")
        print(f"    np.memmap, no limit:          peak RSS {m['VmHWM'] / MB:6.1f} MB "
              f"(after imports {m['baseline_rss'] / MB:.1f} MB), {m['seconds']:.1f} s")
        ok = r["VmHWM"] <= budget
        print(f"    bench.data.cache_entry reader {'stays within' if ok else 'EXCEEDS'} the budget: "
              f"{r['VmHWM'] / size:.1%} of the cache size resident at peak")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; removed {tmp}")


if __name__ == "__main__":
    main()
