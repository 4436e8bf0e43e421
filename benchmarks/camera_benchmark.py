"""How fast are the version 4 (filmed) mouth frames made, against the version 3 cartoon?

Prints frames per second on one process and one thread, all measured in this run on the same
tracks of a small corpus built in a temporary folder (or the corpus given):

  cartoon      bench.data.corpus.mouth.render_frames (version 3 and before)
  drawn        the camera renderer without the codec (face, mouth, lighting, motion, blur, noise)
  filmed       the same plus the libx264 encode and decode (what EmbeddedCorpus.frames gives)
  codec only   h264_roundtrip of already drawn frames
  shards       reading whole clips back from mouth shards (what pretraining reads after the
               first start renders them once)

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/camera_benchmark.py --clips 80
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=80)
    parser.add_argument("--corpus", default=None, help="a built version 4 corpus (default: build --size small)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from bench.data.corpus.build import build_corpus
    from bench.data.corpus.camera import Filming, h264_roundtrip, render_camera_frames
    from bench.data.corpus.embedded import CorpusConfig, find_corpus
    from bench.data.corpus.mouth import render_frames
    from bench.data.mouth_frames import MouthFrameSource

    with tempfile.TemporaryDirectory() as tmp:
        corpus = (find_corpus(args.corpus) if args.corpus else
                  build_corpus(CorpusConfig.from_size("small"), out_root=tmp, progress=False))
        table = corpus.manifest.table.head(args.clips)
        clips = [(corpus.track(c), corpus.face(s), corpus.articulation(s).jaw_share, corpus.texture_seed(s),
                  int(hashlib.sha256(c.encode()).hexdigest()[:8], 16)) for c, s in zip(table["clip_id"], table["speaker"])]
        frames = sum(len(c[0]) for c in clips)

        def rate(fn) -> float:
            started = time.perf_counter()
            for clip in clips:
                fn(*clip)
            return frames / (time.perf_counter() - started)

        cartoon = rate(lambda track, face, jaw, tex, seed: render_frames(track, face, jitter_seed=seed))
        drawn = rate(lambda track, face, jaw, tex, seed: render_camera_frames(
            track, face, jaw_share=jaw, texture_seed=tex, clip_seed=seed, codec=False))
        filmed = rate(lambda track, face, jaw, tex, seed: render_camera_frames(
            track, face, jaw_share=jaw, texture_seed=tex, clip_seed=seed))
        raw = [render_camera_frames(t, f, jaw_share=j, texture_seed=x, clip_seed=s, codec=False) for t, f, j, x, s in clips]
        started = time.perf_counter()
        for clip, (_, _, _, _, seed) in zip(raw, clips):
            h264_roundtrip(clip, Filming.draw(seed, len(clip)).crf)
        codec = frames / (time.perf_counter() - started)
        source = MouthFrameSource(corpus.manifest, size=64)
        source.ensure_shards(workers=1, progress=False)
        source._clips.clear()
        started = time.perf_counter()
        for row in range(len(table)):
            np.asarray(source.clip_frames(row)).sum()
        shards = frames / (time.perf_counter() - started)

    print(f"{len(clips)} clips, {frames} frames of 64x64, one thread (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")
    for name, fps in (("cartoon (version 3)", cartoon), ("drawn, no codec", drawn), ("filmed (drawn + H.264)", filmed),
                      ("H.264 round trip only", codec), ("read from mouth shards", shards)):
        print(f"  {name:<24} {fps:>10.0f} frames/s  {fps / filmed:>8.2f} x filmed")


if __name__ == "__main__":
    main()
