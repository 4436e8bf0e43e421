"""Can the CPUs feed the visual pretext's mouth frames as fast as a GPU step consumes clips?

Prints figures (this is not a timed test), all on one process with one torch thread:

  (a) LRW-format decode rate: N real LRW-like clips (256x256 H.264 at 25 fps, 29 frames, textured
      so that the codec has real work, plus AAC audio) are prepared with `prepare_lrw`, then every
      clip is decoded, mouth-cropped and resized to 64x64 as MouthFrameSource does (clips/s per
      core), and written to mouth shards with one worker (`write_mouth_shards`, clips/s per core).
  (b) reads as the visual pretext does them (MouthFrameSource.batch: 32 random clips, a random
      1 s crop = 25 frames each, float32), from the mp4s and from the shards (page cache warm).
  (c) the embedded corpus (`--size small`, built in a temporary folder): rendering a clip's
      frames (`EmbeddedCorpus.frames`), the same through MouthFrameSource.batch, rendering it once
      into mouth shards (`ensure_shards`, what the visual pretext does on its first start), and
      MouthFrameSource.batch reading those shards.
  (d) what a GPU consumes: the FLOPs of one av-joint pretraining step (forward + backward of the
      pretext on 1 s crops, counted with torch.utils.flop_counter.FlopCounterMode on the CPU) per
      clip, divided into an ASSUMED achieved GPU rate (--gpu-tflops). Every rate above is printed
      as a ratio to that consumption rate, and as the cores it would take to keep up.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/mouth_frames_benchmark.py --clips 64

The synthetic clips are not LRW's faces: decode cost grows with the bitrate, so their mean mp4 size
is printed next to the rate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FRAMES, SIDE, CLIP_SAMPLES = 29, 256, 18_560  # LRW: 29 frames of 256x256, 1.16 s of audio


def write_lrw_clip(path: Path, rng: np.random.Generator) -> None:
    """An LRW-like mp4: a smooth random 'face' texture, a mouth that opens and closes, sensor noise."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    base = torch.nn.functional.avg_pool2d(torch.from_numpy(rng.normal(128, 60, (1, 1, SIDE + 15, SIDE + 15))),
                                          16, stride=1).numpy()[0, 0]
    yy, xx = np.mgrid[:SIDE, :SIDE]
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = SIDE, SIDE, "yuv420p"
        audio = container.add_stream("aac", rate=16_000)
        audio.layout = "mono"
        for i in range(FRAMES):
            opening = 6 + 10 * abs(np.sin(i / 3.0))
            mouth = ((xx - 127) / 30.0) ** 2 + ((yy - 163) / opening) ** 2 < 1
            img = base + rng.normal(0, 4, base.shape)
            img[mouth] = 40
            rgb = np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        t = np.arange(CLIP_SAMPLES) / 16_000
        tone = (0.2 * np.sin(2 * np.pi * rng.uniform(150, 400) * t) + rng.normal(0, 0.01, t.size)).astype(np.float32)
        for start in range(0, CLIP_SAMPLES, 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16_000, start
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)


def prepared_lrw(folder: Path, clips: int):
    from bench.data.manifest import read_manifest
    from bench.data.prepare.lrw import prepare_lrw

    root = folder / "lipread_mp4"
    rng = np.random.default_rng(0)
    for i in range(clips):
        write_lrw_clip(root / "ABOUT" / "train" / f"ABOUT_{i + 1:05d}.mp4", rng)
    for split in ("val", "test"):
        (root / "ABOUT" / split).mkdir(parents=True)
    mp4_kb = np.mean([p.stat().st_size for p in root.rglob("*.mp4")]) / 1024
    return read_manifest(prepare_lrw(root, folder / "prepared", progress=False)), mp4_kb


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def batch_rate(source, rows: np.ndarray, last_first: np.ndarray, batches: int, batch: int) -> float:
    """Clips/s of MouthFrameSource.batch over random clips and random 25-frame (1 s) crops."""
    rng = np.random.default_rng(1)
    picks = [rng.choice(rows, batch) for _ in range(batches)]
    firsts = [rng.integers(0, last_first[p] + 1) for p in picks]
    seconds = timed(lambda: [source.batch(p.tolist(), f.tolist(), 25) for p, f in zip(picks, firsts)])
    return batches * batch / seconds


def flops_per_clip(manifest, shards, cache_root: Path, batch: int = 8) -> float:
    """FLOPs of one av-joint step (forward + backward) per 1 s crop, counted on the CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench.pretrain.objective import CropInfo, PretextContext, pretext_factory
    from bench.registry import create_encoder

    torch.manual_seed(0)
    context = PretextContext(manifest=manifest, generator=torch.Generator().manual_seed(0))
    pretext = pretext_factory("av-joint")(create_encoder("av-joint"), context,
                                          audio={"cache_root": cache_root, "progress": False})
    rows = list(range(batch))
    starts = torch.tensor([640 * (r % 5) for r in rows])  # 1 s crops of the 1.16 s clips, on the 25 fps grid
    wav = torch.stack([torch.from_numpy(shards.audio(r)[s:s + 16_000].astype(np.float32) / 32768)
                       for r, s in zip(rows, starts.tolist())])
    lengths = torch.full((batch,), 16_000)
    info = CropInfo(rows=rows, clip_ids=manifest.table["clip_id"].iloc[rows].tolist(), starts=starts)
    with FlopCounterMode(display=False) as counter:
        pretext(wav, lengths, info=info)["loss"].backward()
    return counter.get_total_flops() / batch


def report(name: str, rate: float, gpu_rate: float) -> None:
    print(f"  {name:<58} {rate:9.1f} clips/s per core = {rate / gpu_rate:7.4f} x GPU need; "
          f"{gpu_rate / rate:7.1f} cores to keep up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64, help="LRW-like clips to build (default 64)")
    parser.add_argument("--batches", type=int, default=40, help="batches of 32 read from the shards")
    parser.add_argument("--gpu-tflops", type=float, default=200.0,
                        help="ASSUMED achieved GPU rate in TFLOP/s (default 200: about 20%% of an "
                             "H100/H200's dense bf16 peak)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    from bench.data.corpus.build import build_corpus
    from bench.data.corpus.embedded import CorpusConfig
    from bench.data.mouth_frames import MouthFrameSource
    from bench.data.mouth_shards import MouthShards, write_mouth_shards

    with tempfile.TemporaryDirectory(prefix="mouth-bench-") as tmp:
        tmp = Path(tmp)
        manifest, mp4_kb = prepared_lrw(tmp, args.clips)
        n = len(manifest.table)
        rows = np.arange(n)
        last_first = np.full(n, FRAMES - 25)
        mp4 = MouthFrameSource(manifest, cache_clips=1)
        mp4.clip_frames(n - 1)  # warm-up (imports, first interpolate), not timed
        decode = n / timed(lambda: [mp4.clip_frames(r) for r in rows])
        mp4_batches = batch_rate(mp4, rows, last_first, 4, 32)
        written = write_mouth_shards(manifest, workers=1, progress=False)
        shard_source = MouthFrameSource(manifest, cache_clips=1)
        shard_batches = batch_rate(shard_source, rows, last_first, args.batches, 32)
        assert shard_source.decoded_clips == 0

        # Built here, not under $AVBENCH_DATA: a user's corpus may hold shards already, and the
        # rendered rate needs one without.
        corpus = build_corpus(CorpusConfig.from_size("small"), out_root=tmp / "corpora", workers=1, progress=False)
        clip_ids = corpus.manifest.table["clip_id"].tolist()[:args.clips]
        corpus.frames(clip_ids[-1])  # warm-up (imports, the clip table), not timed
        render = len(clip_ids) / timed(lambda: [corpus.frames(c) for c in clip_ids])
        embedded = MouthFrameSource(corpus.manifest, cache_clips=1)
        embedded.clip_frames(len(corpus.manifest.table) - 1)
        e_rows = np.arange(len(corpus.manifest.table))
        # Its clips are about 1 s (25 frames): every crop starts at frame 0.
        embedded_batches = batch_rate(embedded, e_rows, np.zeros(len(e_rows), dtype=int), 4, 32)
        started = time.perf_counter()
        embedded.ensure_shards(workers=1, progress=False)
        embedded_write = len(e_rows) / (time.perf_counter() - started)
        embedded_shards = MouthFrameSource(corpus.manifest, cache_clips=1)
        embedded_shard_batches = batch_rate(embedded_shards, e_rows, np.zeros(len(e_rows), dtype=int),
                                            args.batches, 32)
        assert embedded_shards.decoded_clips == 0

        flops = flops_per_clip(manifest, MouthShards.open(manifest), tmp / "targets")
    gpu_rate = args.gpu_tflops * 1e12 / flops
    print(f"one av-joint step (forward + backward, 1 s crop, 64x64 mouths): {flops / 1e9:.2f} GFLOP per clip "
          "(FlopCounterMode, CPU)")
    print(f"assumed GPU rate {args.gpu_tflops:g} TFLOP/s achieved bf16 (about 20% of an H100/H200's dense bf16 "
          f"peak): an ASSUMPTION, not a measurement -> the GPU consumes {gpu_rate:,.0f} clips/s")
    print(f"LRW-like clips: {n}, mean mp4 {mp4_kb:.0f} KiB (256x256 H.264, 29 frames + AAC)")
    report("(a) decode + crop + resize to 64x64 (MouthFrameSource, mp4)", decode, gpu_rate)
    report("(a) write_mouth_shards, 1 worker (decode + audio + write)", written.clips / written.seconds, gpu_rate)
    report("(b) MouthFrameSource.batch from the mp4s (32 x 25 frames)", mp4_batches, gpu_rate)
    report("(b) MouthFrameSource.batch from the shards (32 x 25 frames)", shard_batches, gpu_rate)
    report("(c) embedded corpus: EmbeddedCorpus.frames (render)", render, gpu_rate)
    report("(c) embedded corpus: MouthFrameSource.batch (32 x 25 frames)", embedded_batches, gpu_rate)
    report("(c) embedded corpus: ensure_shards, 1 worker (render + write)", embedded_write, gpu_rate)
    report("(c) embedded corpus: MouthFrameSource.batch from its shards", embedded_shard_batches, gpu_rate)
    print(f"shards: {written.bytes / n / 1024:.0f} KiB per clip ({written.bytes} bytes for {n} clips); "
          f"cores here: {os.cpu_count()}, measured on one")


if __name__ == "__main__":
    main()
