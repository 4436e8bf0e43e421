"""Resolving a task spec (what `--task` and sweep configs name) to a manifest.

Accepted specs:
  embedded[:small|default|large]   the embedded corpus, built on first use;
  PATH                             a manifest.csv, or a folder holding one;
  NAME                             a prepared real corpus under $AVBENCH_DATA/prepared/NAME
                                   (e.g. spc-v0.01, lrw), written by `avbench prepare`.
"""

from __future__ import annotations

from pathlib import Path

from bench.errors import ConfigError
from bench.manifest import MANIFEST_NAME, Manifest, read_manifest
from bench.paths import prepared_dir


def resolve_task(spec: str, progress: bool = True) -> Manifest:
    if spec == "embedded" or spec.startswith("embedded:"):
        from bench.corpus.build import CorpusConfig, build_corpus

        size = spec.partition(":")[2] or "default"
        corpus = build_corpus(CorpusConfig.from_size(size), progress=progress)
        return corpus.manifest
    path = Path(spec).expanduser()
    if path.is_file() or (path / MANIFEST_NAME).is_file():
        return read_manifest(path)
    if (prepared_dir(spec) / MANIFEST_NAME).is_file():
        return read_manifest(prepared_dir(spec))
    raise ConfigError(f"task {spec!r}: not a manifest file or folder, and no prepared corpus of that name "
                      f"under {prepared_dir(spec).parent}. Use embedded[:small|default|large], a manifest "
                      "path, or prepare the corpus first (`avbench prepare spc|lrw PATH`).")
