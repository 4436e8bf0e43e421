"""The one manifest format that every corpus is prepared into.

A manifest is a CSV file (`manifest.csv`), one row per clip, with a JSON sidecar
(`manifest.json`) for corpus-level facts: its name, where it came from, its noise sources and how
many files were skipped. CSV was chosen over Parquet so that a manifest opens in any tool and
needs no pyarrow. Everything downstream of preparation reads manifests, never raw folder trees.

Paths in the CSV are either absolute (a user's local copy of a real corpus) or relative to the
manifest's folder (the embedded corpus and extracted audio), so a built corpus can be moved.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
import logging

import numpy as np
import pandas as pd

from bench.files import atomic_write_bytes, file_sha256

REQUIRED_COLUMNS = ("clip_id", "audio_path", "label", "speaker", "split", "num_samples", "sample_rate")
OPTIONAL_COLUMNS = ("video_path", "mouth_track", "emotion", "start", "end")
SPLITS = ("train", "valid", "test")
log = logging.getLogger("avbench.manifest")

MANIFEST_NAME = "manifest.csv"
META_NAME = "manifest.json"

# Columns read as strings even when they look numeric (speaker ids like "0042", word "one", emotion
# codes like RAVDESS's "01").
_STRING_COLUMNS = ("clip_id", "audio_path", "label", "speaker", "split", "video_path", "mouth_track", "emotion",
                   "emotion_code")


class ManifestError(ValueError):
    """A manifest that cannot be used. The message names the file, the field and the fix."""


@dataclass
class Manifest:
    """A validated manifest table plus its sidecar metadata."""

    path: Path
    table: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def labels(self) -> list[str]:
        return sorted(self.table["label"].unique())

    @property
    def speakers(self) -> list[str]:
        return sorted(self.table["speaker"].unique())

    def split(self, name: str) -> pd.DataFrame:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return self.table[self.table["split"] == name]

    def resolve(self, relative_or_absolute: str) -> Path:
        """Absolute path of a path column value (relative values are relative to the manifest)."""
        p = Path(relative_or_absolute)
        return p if p.is_absolute() else self.root / p

    def audio_path(self, row: pd.Series | dict) -> Path:
        return self.resolve(row["audio_path"])

    @property
    def manifest_id(self) -> str:
        """Content hash of the CSV: a changed manifest gives a new id, so caches never go stale."""
        return file_sha256(self.path)[:16]


def validate_table(table: pd.DataFrame, source: str | Path) -> pd.DataFrame:
    """Check columns, values and uniqueness; return the table with canonical column order."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(f"{source}: missing required column(s) {', '.join(missing)}. "
                            f"A manifest needs: {', '.join(REQUIRED_COLUMNS)}.")
    if len(table) == 0:
        raise ManifestError(f"{source}: the manifest has no rows. Re-run the preparer on a corpus "
                            "that holds audio files.")
    for col in ("clip_id", "audio_path", "label", "speaker", "split"):
        empty = table[col].isna() | (table[col].astype(str).str.len() == 0)
        if empty.any():
            first = int(empty.to_numpy().nonzero()[0][0])
            raise ManifestError(f"{source}: column {col!r} is empty in {int(empty.sum())} row(s), "
                                f"first at data row {first + 1}. Every clip needs a {col}.")
    bad_split = ~table["split"].isin(SPLITS)
    if bad_split.any():
        values = sorted(set(table.loc[bad_split, "split"].astype(str)))
        raise ManifestError(f"{source}: column 'split' has value(s) {values}; "
                            f"use only {', '.join(SPLITS)}.")
    dup = table["clip_id"].duplicated()
    if dup.any():
        raise ManifestError(f"{source}: clip_id {table.loc[dup, 'clip_id'].iloc[0]!r} appears more "
                            "than once; clip ids must be unique.")
    for col in ("num_samples", "sample_rate"):
        values = pd.to_numeric(table[col], errors="coerce").astype(float)
        bad = values.isna() | ~np.isfinite(values) | (values <= 0) | (values != values.round())
        if table[col].dtype == bool:  # True/False are not sample counts
            bad[:] = True
        if bad.any():
            first = table.loc[bad, col].iloc[0]
            raise ManifestError(f"{source}: column {col!r} must hold positive integers; "
                                f"found {first!r}. Re-run the preparer.")
        table[col] = values.astype("int64")
    extra = [c for c in table.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    return table[list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in table.columns] + extra]


def write_manifest(table: pd.DataFrame, folder: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Validate and atomically write `folder/manifest.csv` and `folder/manifest.json`."""
    folder = Path(folder)
    csv_path = folder / MANIFEST_NAME
    table = validate_table(table.copy(), csv_path)
    table = table.sort_values("clip_id", kind="stable").reset_index(drop=True)
    csv_bytes = table.to_csv(index=False, lineterminator="\n").encode()
    meta = dict(meta or {})
    meta["num_clips"] = int(len(table))
    meta["counts"] = {s: int((table["split"] == s).sum()) for s in SPLITS}
    meta["csv_sha256"] = hashlib.sha256(csv_bytes).hexdigest()
    # The CSV is the source of truth and goes first; the sidecar names the CSV it describes, so a
    # reader can tell a sidecar left over from another run (or a hand-edited CSV).
    atomic_write_bytes(csv_path, csv_bytes)
    atomic_write_bytes(folder / META_NAME, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return csv_path


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest CSV (or a folder holding one) and validate it."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest here. Prepare the corpus first "
                            "(`avbench prepare spc|lrw PATH` or `avbench corpus build`).")
    dtypes = {c: str for c in _STRING_COLUMNS}
    try:
        table = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""])
    except Exception as exc:
        raise ManifestError(f"{path}: cannot be parsed as CSV ({exc}). Re-run the preparer.") from exc
    table = validate_table(table, path)
    meta: dict[str, Any] = {}
    meta_path = path.parent / META_NAME
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{meta_path}: invalid JSON ({exc}). Re-run the preparer.") from exc
        if meta.get("csv_sha256") and meta["csv_sha256"] != file_sha256(path):
            # A hand-filtered CSV is legitimate; its stale counts are not. Recount, and say so.
            log.warning("%s describes a different version of %s (edited by hand, or an interrupted "
                        "write); counts are taken from the CSV", meta_path, path.name)
            meta["counts"] = {s: int((table["split"] == s).sum()) for s in SPLITS}
            meta["num_clips"] = int(len(table))
    return Manifest(path=path, table=table, meta=meta)


def summarize(manifest: Manifest) -> str:
    """Human summary: clips, speakers and hours per split, labels, path."""
    t = manifest.table
    lines = [f"manifest: {manifest.path}"]
    if manifest.meta.get("name"):
        lines.insert(0, f"corpus:   {manifest.meta['name']}")
    lines.append(f"labels:   {t['label'].nunique()} ({', '.join(manifest.labels[:8])}"
                 f"{', ...' if t['label'].nunique() > 8 else ''})")
    lines.append(f"{'split':<6} {'clips':>8} {'speakers':>9} {'hours':>7}")
    for s in SPLITS:
        part = t[t["split"] == s]
        hours = float((part["num_samples"] / part["sample_rate"]).sum()) / 3600 if len(part) else 0.0
        lines.append(f"{s:<6} {len(part):>8} {part['speaker'].nunique():>9} {hours:>7.2f}")
    skipped = manifest.meta.get("skipped_files")
    if skipped:
        lines.append(f"skipped: {len(skipped)} bad file(s), listed in {manifest.root / META_NAME}")
    return "\n".join(lines)
