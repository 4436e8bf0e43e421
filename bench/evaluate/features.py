"""What a run's downstream model reads: cached encoder features (frozen mode) or waveforms (when
the encoder trains with the head), as datasets and loaders over a manifest's clips.

On a GPU, a split whose cached features fit `RESIDENT_FRACTION` of the free device memory is copied
to the device once and batched there (`ResidentBatches`), so the BiGRU never waits on the host;
a larger split is streamed from the cache's shards by loader workers into pinned memory. The
batches are the same either way: the same clips in the same order (the shuffling generator draws
the same permutation), padded to the same length, with the same float16-stored values.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from bench.data.datasets import CachedFeatureDataset, WaveformDataset, pad_collate
from bench.evaluate.identity import RunConfig

# A split is kept on the GPU when its features take at most this share of the free memory.
RESIDENT_FRACTION = 0.25


class ResidentBatches:
    """(features, lengths, labels) batches of one split, its features held on `device` as float16.

    Which clips form each batch comes from a DataLoader over the clip positions with the same
    batch size, shuffling and generator as the streaming loader, so the order is identical.
    """

    def __init__(self, cached, clip_ids: list[str], labels: list[int], device: torch.device, batch_size: int,
                 shuffle: bool = False, generator: torch.Generator | None = None) -> None:
        arrays = [np.asarray(cached.get(cached.index_of(c))) for c in clip_ids]
        self.lengths = torch.tensor([a.shape[0] for a in arrays], dtype=torch.long)
        host = torch.zeros((len(arrays), int(self.lengths.max()), arrays[0].shape[1]), dtype=torch.float16)
        for i, a in enumerate(arrays):
            host[i, :a.shape[0]] = torch.from_numpy(a.astype(np.float16, copy=False))
        self.features = host.to(device)
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.order = DataLoader(range(len(arrays)), batch_size=batch_size, shuffle=shuffle, generator=generator)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        for picks in self.order:
            lengths = self.lengths[picks]
            x = self.features[picks.to(self.features.device), :int(lengths.max())].float()
            yield x, lengths, self.labels[picks]


def resident_bytes(cached, clip_ids: list[str]) -> int:
    """Bytes of a split's features padded to its longest clip, as ResidentBatches holds them."""
    frames = [int(cached.lengths[cached.index_of(c)]) for c in clip_ids]
    return len(frames) * max(frames, default=0) * cached.dim * 2


class RunFeatures:
    """Datasets for a manifest's clips: cached encoder features (frozen) or waveforms (trained encoder)."""

    def __init__(self, config: RunConfig, encoder: nn.Module, manifest, cache, counters: dict, progress: bool,
                 device: torch.device | None = None):
        self.manifest, self.cached, self.batch_size = manifest, None, config.batch_size
        self.device = torch.device(device or "cpu")
        if config.mode == "frozen":
            started = time.perf_counter()
            cached = cache.get_or_build(encoder, manifest, progress=progress, device=self.device,
                                        precision=config.precision)
            # The feature stage's own time (extraction on a miss, opening the entry on a hit), so a
            # study's cost splits into pretraining, features and downstream training.
            counters["feature_seconds"] = round(counters.get("feature_seconds", 0.0) + time.perf_counter() - started, 2)
            counters["encoder_forward_clips"] += cached.stats.forward_clips
            counters["cache_hits" if cached.stats.hit else "cache_misses"] += 1
            if cached.stats.derived_from:  # a miss served by copying another entry's clips
                counters["cache_misses_copied"] = counters.get("cache_misses_copied", 0) + 1
            self.cached = cached

    def dataset(self, rows, labels: list[int]):
        if self.cached is not None:
            return CachedFeatureDataset(self.cached, rows["clip_id"].tolist(), labels)
        return WaveformDataset(self.manifest, rows, labels)

    def loader(self, rows, labels: list[int], shuffle: bool = False, generator=None):
        """Training batches of the run's batch size; evaluation in batches of at least 64."""
        batch_size = self.batch_size if shuffle else max(64, self.batch_size)
        if self.device.type == "cuda" and self.cached is not None:
            clip_ids = rows["clip_id"].tolist()
            free, _ = torch.cuda.mem_get_info(self.device)
            if resident_bytes(self.cached, clip_ids) <= RESIDENT_FRACTION * free:
                return ResidentBatches(self.cached, clip_ids, labels, self.device, batch_size, shuffle, generator)
        # On the CPU the loop reads in-process, as it always has; on a GPU, workers fill pinned memory.
        workers = 0 if self.device.type == "cpu" else min(4, max(1, (os.cpu_count() or 2) - 1))
        return DataLoader(self.dataset(rows, labels), batch_size=batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=pad_collate, num_workers=workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=workers > 0)
