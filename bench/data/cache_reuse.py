"""Feature-cache reuse across manifests: copy a variant's features from an entry that holds them.

Task variants select or re-split the clips of one corpus (an accent subset, a speaker-id split, a
noise condition), and each is a new manifest with a new key. Before running the encoder, a builder
looks for a complete entry with the same encoder config, weights, preprocessing and format whose
manifest held every clip of this one from the same audio: same clip id, same resolved audio path,
sample count and rate, and an audio file not modified since that entry was built. The donor's
manifest must still be the file it was built from (its content id is checked), since that is the
only record of which audio its rows came from. If one is found, the clips' features are copied
from it in this manifest's order (`meta.json` names it in `derived_from`) and the encoder never
runs. The encoder contract makes a clip's features independent of the other clips padded into its
batch, so the copy holds what a fresh build would, up to the float rounding of batched kernels.
Partial coverage is not used: a donor must hold every clip.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.data.cache_entry import (META_NAME, CachedFeatures, CorruptCacheError, ShardWriter,
                                    write_index_and_meta)

if TYPE_CHECKING:
    from bench.data.manifest import Manifest

log = logging.getLogger("avbench.cache")


def find_donor(root: Path, manifest: "Manifest", inputs: dict) -> CachedFeatures | None:
    """A complete entry with the same encoder, weights and preprocessing that holds every clip
    of `manifest`, computed from the same audio (see the module docstring), or None."""
    if not root.is_dir():
        return None
    same = canonical({k: v for k, v in inputs.items() if k != "manifest_id"})
    wanted: dict[str, tuple[str, int, int]] | None = None  # built for the first candidate only
    for meta_path in sorted(root.glob(f"*/{META_NAME}")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if (meta.get("key") != meta_path.parent.name or meta.get("manifest_id") == inputs["manifest_id"]
                or canonical({k: meta.get(k) for k in inputs if k != "manifest_id"}) != same
                or int(meta.get("num_clips", 0)) < len(manifest.table)):
            continue
        if wanted is None:
            wanted = clip_sources(manifest)
        built_at = meta_path.stat().st_mtime - float(meta.get("build_seconds", 0.0))
        if _covers(meta, wanted, built_at):
            try:
                return CachedFeatures.open(meta_path.parent)
            except CorruptCacheError as exc:
                log.warning("not reusing feature cache entry: %s", exc)
    return None

def _covers(meta: dict, wanted: dict[str, tuple[str, int, int]], built_at: float) -> bool:
    from bench.data.manifest import ManifestError, read_manifest
    from bench.files import file_sha256

    donor_path = Path(str(meta.get("manifest_path", "")))
    try:
        if file_sha256(donor_path)[:16] != meta["manifest_id"]:
            return False  # rewritten since: its rows no longer say which audio was encoded
        held = clip_sources(read_manifest(donor_path))
    except (OSError, ManifestError):
        return False
    if any(held.get(clip_id) != source for clip_id, source in wanted.items()):
        return False
    try:
        return all(os.stat(path).st_mtime <= built_at for path, _, _ in wanted.values())
    except OSError:
        return False

def copy_from(donor: CachedFeatures, manifest: "Manifest", inputs: dict, key: str, folder: Path, *,
              started: float, shard_limit: int) -> dict:
    """Write the entry of `manifest` into `folder` from the donor's features, in this manifest's
    order; return its meta (which names the donor in `derived_from`)."""
    clip_ids = manifest.table["clip_id"].astype(str).tolist()
    writer = ShardWriter(folder, shard_limit)
    try:
        for clip_id in clip_ids:
            writer.append(donor.get(donor.index_of(clip_id)))
        index = writer.close()
    finally:
        writer.abort()
        donor.close()
    described = {k: donor.meta[k] for k in ("encoder", "encoder_class", "dim", "frame_rate",
                                            "batch_size", "device")}
    described["derived_from"] = donor.key
    log.info("feature cache: %d clips of %s copied from entry %s instead of running the encoder",
             len(clip_ids), described["encoder"], donor.key)
    return write_index_and_meta(folder, key, inputs, manifest.path, clip_ids, writer, index, started, described)


def clip_sources(manifest: "Manifest") -> dict[str, tuple[str, int, int]]:
    """clip id -> (resolved audio path, num_samples, sample_rate): the audio each clip's features
    are computed from, as far as the manifest says."""
    t = manifest.table
    return dict(zip(t["clip_id"].astype(str),
                    zip((str(manifest.resolve(p)) for p in t["audio_path"].astype(str)),
                        t["num_samples"].astype(np.int64).tolist(), t["sample_rate"].astype(np.int64).tolist())))


def canonical(value: Any) -> str:
    """JSON text that compares equal for equal values (tuples and lists, key order)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
