"""Datasets and label subsets for the downstream loop. Everything here reads a manifest."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from bench.data.audio import load_audio
from bench.data.manifest import Manifest


def label_subset(train: pd.DataFrame, fraction: float = 1.0, subset_seed: int = 0,
                 k_shot: int | None = None, label_column: str = "label") -> pd.DataFrame:
    """Class-balanced, nested subset of the training rows.

    Within each class the clips are put in one fixed random order (seeded by `subset_seed` and the
    class name, not by the run seed), and a fraction f keeps the first ceil(f * n_class) of them;
    `k_shot` keeps the first k of every class instead. So every 5% subset lies inside the 10%
    subset, a 1-shot subset inside the 5-shot one, and every run seed sees the same labelled clips.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if k_shot is not None and k_shot < 1:
        raise ValueError(f"k_shot must be a positive number of clips per class, got {k_shot}")
    if fraction == 1.0 and k_shot is None:
        return train
    keep = []
    for label, group in sorted(train.groupby(label_column), key=lambda kv: str(kv[0])):
        ids = np.sort(group["clip_id"].to_numpy())
        seed = int.from_bytes(hashlib.sha256(f"{subset_seed}:{label}".encode()).digest()[:8], "little")
        order = np.random.default_rng(seed).permutation(len(ids))
        count = k_shot if k_shot is not None else max(1, math.ceil(fraction * len(ids)))
        keep.extend(ids[order[:count]])
    return train[train["clip_id"].isin(set(keep))]


def subset_hash(clip_ids) -> str:
    """Hash of the exact set of clips used for training, recorded in every run."""
    return hashlib.sha256("\n".join(sorted(clip_ids)).encode()).hexdigest()[:16]


class CachedFeatureDataset(Dataset):
    """(features [T, D] float32, label index) from a feature-cache entry."""

    def __init__(self, cached, clip_ids: list[str], labels: list[int]) -> None:
        self.cached = cached
        self.indices = [cached.index_of(c) for c in clip_ids]
        self.labels = labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return torch.from_numpy(np.asarray(self.cached.get(self.indices[i]), dtype=np.float32)), self.labels[i]


class WaveformDataset(Dataset):
    """(waveform [T] float32 at 16 kHz, label index), read from the manifest's audio files.

    Used when the encoder trains (finetune and scratch modes). Waveforms are kept in memory after
    the first read: 1 s clips at 16 kHz are 64 kB each.
    """

    def __init__(self, manifest: Manifest, rows: pd.DataFrame, labels: list[int]) -> None:
        self.paths = [manifest.resolve(p) for p in rows["audio_path"]]
        self.labels = labels
        self._memo: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if i not in self._memo:
            self._memo[i] = load_audio(self.paths[i])
        return torch.from_numpy(self._memo[i]), self.labels[i]


def pad_collate(batch):
    """Pad a list of ([T, ...], label) to [B, T_max, ...] with lengths and labels."""
    items, labels = zip(*batch)
    lengths = torch.tensor([x.shape[0] for x in items], dtype=torch.long)
    padded = torch.zeros((len(items), int(lengths.max())) + tuple(items[0].shape[1:]), dtype=items[0].dtype)
    for i, x in enumerate(items):
        padded[i, : x.shape[0]] = x
    return padded, lengths, torch.tensor(labels, dtype=torch.long)
