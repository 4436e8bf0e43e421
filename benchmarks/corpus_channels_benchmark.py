"""What recording channels cost a corpus build: the same corpus built without and with channels.

    python benchmarks/corpus_channels_benchmark.py [--speakers 20] [--words 30] [--renditions 2] [--workers 1]

Builds one corpus twice into a temporary folder, `--channels none` then `--channels default`, with
the same workers, and prints both wall times, their ratio, and the seconds each channel family
adds per clip (a channel drawn from the default mix applied to each stored clip, warm, timed by
family). The ratio is the figure to read: both builds run in the same process under the same load,
so machine noise largely cancels. Scale the build time of the default corpus by it. Below about a
thousand clips the builds' fixed start-up (a fresh process and libespeak-ng per speaker) hides the
channels: 160 clips measured 0.82 and 1.03 in two idle runs, 1,200 clips 1.49.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=20)
    parser.add_argument("--words", type=int, default=30)
    parser.add_argument("--renditions", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    from bench.data.audio import load_audio
    from bench.data.corpus.build import build_corpus
    from bench.data.corpus.channels import apply_channel, draw_channel
    from bench.data.corpus.embedded import CorpusConfig

    sizes = dict(speakers=args.speakers, words=args.words, renditions=args.renditions)
    root = Path(tempfile.mkdtemp(prefix="avbench-channels-"))
    try:
        seconds = {}
        for mix in ("none", "default"):
            started = time.perf_counter()
            corpus = build_corpus(CorpusConfig.from_size("small", channels=mix, **sizes), out_root=root / mix,
                                  workers=args.workers, progress=False)
            seconds[mix] = time.perf_counter() - started
        clips = len(corpus.manifest.table)
        print(f"{clips} clips, {args.workers} worker(s): no channels {seconds['none']:.1f} s, "
              f"default mix {seconds['default']:.1f} s, ratio {seconds['default'] / seconds['none']:.2f}")
        per_family: dict[str, list[float]] = {}
        rng = np.random.default_rng(0)
        for row in corpus.manifest.table.itertuples(index=False):
            channel = draw_channel(rng)
            family = ("clean" if channel.name == "clean" else "telephone" if channel.telephone
                      else channel.codec or ("agc" if channel.agc else "microphone"))
            wav = load_audio(corpus.manifest.resolve(row.audio_path))
            apply_channel(wav, channel)  # warm: PyAV's first use of a codec loads it
            started = time.perf_counter()
            apply_channel(wav, channel)
            per_family.setdefault(family, []).append(time.perf_counter() - started)
        for family, times in sorted(per_family.items()):
            print(f"  {family:<10} {len(times):>4} clips, {1000 * np.mean(times):6.1f} ms per clip")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
