"""Resolving a task spec (what `--task` and sweep configs name) to a manifest.

Accepted specs:
  embedded[:small|default|large]   the embedded corpus, built on first use;
  embedded-flite[:SIZE]            the second embedded corpus (Flite voices, another channel mix and
                                   seed: bench.data.corpus.embedded.PRESETS), for cross-dataset tests;
  PATH                             a manifest.csv, or a folder holding one;
  NAME                             a prepared real corpus under $AVBENCH_DATA/prepared/NAME
                                   (e.g. spc-v0.01, lrw), written by `avbench prepare`;
  SPEC[CONDITION;...]              the clips of SPEC that meet every condition, e.g.
                                   embedded:default[accent=en-us,en-029] or
                                   embedded:default[snr_db>=20;reverb_rt60=0].

A condition is COLUMN=V1,V2 (one of the values), COLUMN!=V1,V2 (none of them), or COLUMN<X,
<=, >, >= (numeric). Such a subset is written once as a derived manifest under
$AVBENCH_DATA/derived/<hash>/, its paths made relative to that folder: the base corpus lives in the
same data folder, so the derived manifest, and with it its id, is the same on every machine
whatever its data folder (its id names the runs recorded on it). So it has its own manifest id, its
own feature-cache entries and its own records; the splits are the base manifest's, so a
speaker-disjoint corpus stays speaker-disjoint. Cross-dataset sweeps use subsets as train and
eval tasks: train on some accents, test on others; train on clean clips, test on noisy ones.
"""

from __future__ import annotations

from pathlib import Path

import hashlib
import json
import os
import re

import pandas as pd

from bench.data.manifest import MANIFEST_NAME, Manifest, read_manifest, write_manifest
from bench.errors import ConfigError
from bench.paths import data_dir, prepared_dir

_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(!=|<=|>=|=|<|>)\s*(.+?)\s*$")
_PATH_COLUMNS = ("audio_path", "video_path", "mouth_track")


def resolve_task(spec: str, progress: bool = True) -> Manifest:
    base, conditions = split_subset(spec)
    if conditions:
        return _subset(resolve_task(base, progress), base, conditions)
    from bench.data.corpus.embedded import CorpusConfig, is_corpus_spec

    if is_corpus_spec(spec):
        from bench.data.corpus.build import build_corpus  # the builder, only for an embedded spec

        corpus = build_corpus(CorpusConfig.from_spec(spec), progress=progress)
        return corpus.manifest
    path = Path(spec).expanduser()
    if path.is_file() or (path / MANIFEST_NAME).is_file():
        return read_manifest(path)
    if (prepared_dir(spec) / MANIFEST_NAME).is_file():
        return read_manifest(prepared_dir(spec))
    raise ConfigError(f"task {spec!r}: not a manifest file or folder, and no prepared corpus of that name "
                      f"under {prepared_dir(spec).parent}. Use embedded[:small|default|large], embedded-flite[:SIZE], a manifest "
                      "path, or prepare the corpus first (`avbench prepare spc|lrw PATH`).")


def split_subset(spec: str) -> tuple[str, list[tuple[str, str, str]]]:
    """`base[c1;c2]` -> ("base", [(column, op, value), ...]); a plain spec has no conditions."""
    spec = spec.strip()
    if not spec.endswith("]") or "[" not in spec:
        return spec, []
    base, _, body = spec[:-1].partition("[")
    conditions = []
    for part in filter(None, (p.strip() for p in body.split(";"))):
        match = _CONDITION.match(part)
        if not match:
            raise ConfigError(f"task {spec!r}: cannot read the condition {part!r}; write COLUMN=V1,V2, "
                              "COLUMN!=V1, or COLUMN<X (also <=, >, >=).")
        conditions.append(match.groups())
    if not conditions:
        raise ConfigError(f"task {spec!r}: empty condition list; drop the brackets or add COLUMN=VALUE.")
    return base.strip(), conditions


def _subset(manifest: Manifest, base: str, conditions: list[tuple[str, str, str]]) -> Manifest:
    table = manifest.table
    keep = pd.Series(True, index=table.index)
    for column, op, value in conditions:
        if column not in table.columns:
            raise ConfigError(f"{manifest.path}: no column {column!r} to select on; columns are "
                              f"{', '.join(table.columns)}.")
        if op in ("=", "!="):
            wanted = [v.strip() for v in value.split(",")]
            try:  # a numeric column compares as numbers: reverb_rt60=0 must match 0.0
                hit = table[column].isin([float(v) for v in wanted]) if pd.api.types.is_numeric_dtype(
                    table[column]) else table[column].astype(str).isin(wanted)
            except ValueError:
                hit = table[column].astype(str).isin(wanted)
            keep &= hit if op == "=" else ~hit
            continue
        try:
            number = float(value)
            values = pd.to_numeric(table[column], errors="raise")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{manifest.path}: {column} {op} {value}: needs a numeric column and value "
                              f"({exc}).") from exc
        keep &= {"<": values < number, "<=": values <= number, ">": values > number, ">=": values >= number}[op]
    rows = table[keep].copy()
    text = ";".join(f"{c}{o}{v}" for c, o, v in conditions)
    if rows.empty:
        raise ConfigError(f"{manifest.path}: no clip meets [{text}].")
    # "relative": derived manifests once held absolute paths, which tied their id to one data folder;
    # a folder of the old format is never reused for the new one.
    digest = hashlib.sha256(f"{manifest.manifest_id}|{text}|relative".encode()).hexdigest()[:12]
    folder = data_dir() / "derived" / f"{manifest.meta.get('name', manifest.path.parent.name)}-{digest}"
    for column in _PATH_COLUMNS:
        if column in rows.columns:
            rows[column] = [os.path.relpath(manifest.resolve(p), folder) if isinstance(p, str) and p else p
                            for p in rows[column]]
    name = f"{manifest.meta.get('name', manifest.path.parent.name)}[{text}]"
    if not (folder / MANIFEST_NAME).is_file():
        meta = {"name": name, "source": "subset", "derived_from": {"task": base, "manifest_id": manifest.manifest_id,
                                                                   "path": str(manifest.path)},
                "conditions": text, "base_clips": int(len(table)),
                "base_meta": json.loads(json.dumps(manifest.meta, default=str))}
        write_manifest(rows, folder, meta)
    return read_manifest(folder)
