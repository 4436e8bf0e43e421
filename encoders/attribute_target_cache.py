"""The cache of the attribute targets (encoders/attributes.py) and the corpus statistics that
standardise them.

Kept apart from the target computation, which is pure signal processing, and from the pretext,
which only reads the result: this module is the storage side (where the targets of a manifest
live, how they are keyed, built once under a lock, and summarised into per-dimension statistics).

Cache. Targets are computed ONCE per manifest, not per step: `AttributeTargets` is written as a
pseudo-encoder (no weights, `config()` = the target settings + TARGET_VERSION) so that the
feature cache of `bench.data.feature_cache` stores them, with its locking, atomic rename and corruption checks:
`data_dir()/cache/targets/<key>/` holds the raw (unstandardised) targets of every clip of the
manifest, all splits, manifest row order, float16 [frames, 97] concatenated over clips, plus the
index (offsets, frame counts). The key is the cache's sha256 over (config, TARGET_VERSION inside
it, the manifest id, cache format, a constant weights digest); which attributes are trained does
not enter it, so every ablation of the heads shares one cache. float16 keeps about 3 significant
digits: at most 0.03 dB on log-mel values below 128 in magnitude, ~3 cents on log F0, far below
what a head learns. Building costs about 10 ms of one CPU thread per second of audio (most of it
the pitch tracker; it runs on cuda when there is one) plus the audio decoding.

Standardisation uses CORPUS statistics: per-dimension mean and std over every cached frame of the
manifest's train split (log F0: over voiced frames only, those with voicing >= 0.5), computed
right after the cache is built and stored beside it as `<key>.stats.json` (written atomically
under the cache's build lock; a manifest without train clips is refused). Voicing is left as it is (mean 0, std 1): a 0..1 flag the head
regresses with L1, so it learns the median, i.e. a voiced/unvoiced decision.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data.cache_entry import CachedFeatures
from bench.data.feature_cache import FeatureCache
from bench.data.manifest import Manifest
from bench.errors import ConfigError
from bench.files import atomic_write_bytes
from bench.paths import data_dir
from encoders.attributes import VOICED, AttributeTargets

# The logger keeps the name it had when this code was part of encoders/attributes.py.
log = logging.getLogger("avbench.attributes")

STATS_VERSION = 1


def targets_root() -> Path:
    """Where target caches live: `data_dir()/cache/targets`."""
    return data_dir() / "cache" / "targets"


def target_cache(targets: AttributeTargets, root: str | Path | None = None) -> FeatureCache:
    return FeatureCache(Path(root) if root is not None else targets_root())


def target_cache_key(targets: AttributeTargets, manifest: Manifest, root: str | Path | None = None) -> str:
    """The cache key of (target config incl. TARGET_VERSION, manifest)."""
    return target_cache(targets, root).key(targets, manifest)


def corpus_statistics(cached: CachedFeatures, manifest: Manifest, targets: AttributeTargets,
                      split: str = "train", progress: bool = False) -> dict[str, Any]:
    """Per-dimension mean/std over the cached frames of `split` (log F0: voiced frames only; voicing: 0/1)."""
    from tqdm import tqdm

    rows = np.flatnonzero((manifest.table["split"] == split).to_numpy())
    if len(rows) == 0:
        raise ConfigError(f"{manifest.path}: no clips in split {split!r}; the attribute pretext standardises "
                          f"its targets with the statistics of the {split} split.")
    if cached.clip_ids[int(rows[0])] != str(manifest.table["clip_id"].iloc[int(rows[0])]):
        raise ConfigError(f"{cached.path}: target cache does not follow the rows of {manifest.path}")
    D, f0c, vc = targets.dim, targets.f0_column, targets.voicing_column
    total, square, count = np.zeros(D), np.zeros(D), 0
    f0_sum, f0_sq, f0_count = 0.0, 0.0, 0
    chunk: list[np.ndarray] = []

    def flush() -> None:
        nonlocal total, square, count, f0_sum, f0_sq, f0_count
        if not chunk:
            return
        x = np.concatenate(chunk).astype(np.float64)
        chunk.clear()
        total += x.sum(0)
        square += np.square(x).sum(0)
        count += x.shape[0]
        f0 = x[x[:, vc] >= VOICED, f0c]
        f0_sum += f0.sum()
        f0_sq += np.square(f0).sum()
        f0_count += f0.size

    for r in tqdm(rows, desc="target statistics", unit="clip", disable=not progress):
        chunk.append(cached.get(int(r)))
        if len(chunk) >= 1024:
            flush()
    flush()
    if count == 0:
        raise ConfigError(f"{manifest.path}: the {split} clips give no 25 Hz frames (all shorter than 40 ms)")
    mean = total / count
    std = np.sqrt(np.maximum(square / count - mean ** 2, 0.0))
    if f0_count:
        mean[f0c] = f0_sum / f0_count
        std[f0c] = math.sqrt(max(f0_sq / f0_count - mean[f0c] ** 2, 0.0))
    else:
        log.warning("%s: no voiced frame in the %s split; log F0 is left unstandardised", manifest.path, split)
        mean[f0c], std[f0c] = 0.0, 1.0
    mean[vc], std[vc] = 0.0, 1.0
    std = np.maximum(std, 1e-3)  # a constant dimension (digital silence) stays finite
    return {"stats_version": STATS_VERSION, "key": cached.key, "split": split, "clips": int(len(rows)),
            "frames": int(count), "voiced_frames": int(f0_count), "names": targets.names,
            "mean": mean.tolist(), "std": std.tolist()}


def cached_targets(targets: AttributeTargets, manifest: Manifest, root: str | Path | None = None, *,
                   progress: bool = True, device: str | None = None,
                   batch_size: int = 32) -> tuple[CachedFeatures, dict[str, Any]]:
    """Open (building it first if needed) the target cache of `manifest`, and its train statistics.

    `targets` itself is not moved: the build runs a copy on `device` (default: cuda when available).
    """
    cache = target_cache(targets, root)
    builder = AttributeTargets(**_target_kwargs(targets))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cached = cache.get_or_build(builder, manifest, batch_size=batch_size, device=device, progress=progress)
    stats_path = cache.root / f"{cached.key}.stats.json"
    stats = _read_stats(stats_path, cached.key)
    if stats is None:
        with cache._locked(cached.key):  # one process computes them; the others wait and read
            stats = _read_stats(stats_path, cached.key)
            if stats is None:
                stats = corpus_statistics(cached, manifest, targets, "train", progress=progress)
                atomic_write_bytes(stats_path, (json.dumps(stats, indent=1) + "\n").encode())
    if len(stats["mean"]) != targets.dim:
        raise ConfigError(f"{stats_path}: statistics of {len(stats['mean'])} dimensions for {targets.dim} targets; "
                          "delete the file to recompute it")
    return cached, stats


def _read_stats(path: Path, key: str) -> dict | None:
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s is damaged; recomputing the target statistics", path)
        return None
    if stats.get("key") != key or stats.get("stats_version") != STATS_VERSION:
        return None
    return stats


def _target_kwargs(t: AttributeTargets) -> dict:
    return dict(n_mfcc=t.dims["mfcc"], mfcc_mels=t.mfcc_fn.n_mels, n_mels=t.dims["logmel"], f0_min=t.f0_min,
                f0_max=t.f0_max, pitch_window=t.pitch_window, voicing_threshold=t.voicing_threshold,
                silence_db=t.silence_db, energy_window=t.energy_window)
