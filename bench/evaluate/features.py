"""What a run's downstream model reads: cached encoder features (frozen mode) or waveforms (when
the encoder trains with the head), as datasets and loaders over a manifest's clips."""

from __future__ import annotations

from torch import nn
from torch.utils.data import DataLoader

from bench.data.datasets import CachedFeatureDataset, WaveformDataset, pad_collate
from bench.evaluate.identity import RunConfig


class RunFeatures:
    """Datasets for a manifest's clips: cached encoder features (frozen) or waveforms (trained encoder)."""

    def __init__(self, config: RunConfig, encoder: nn.Module, manifest, cache, counters: dict, progress: bool):
        self.manifest, self.cached, self.batch_size = manifest, None, config.batch_size
        if config.mode == "frozen":
            cached = cache.get_or_build(encoder, manifest, progress=progress)
            counters["encoder_forward_clips"] += cached.stats.forward_clips
            counters["cache_hits" if cached.stats.hit else "cache_misses"] += 1
            if cached.stats.derived_from:  # a miss served by copying another entry's clips
                counters["cache_misses_copied"] = counters.get("cache_misses_copied", 0) + 1
            self.cached = cached

    def dataset(self, rows, labels: list[int]):
        if self.cached is not None:
            return CachedFeatureDataset(self.cached, rows["clip_id"].tolist(), labels)
        return WaveformDataset(self.manifest, rows, labels)

    def loader(self, rows, labels: list[int], shuffle: bool = False, generator=None) -> DataLoader:
        """Training batches of the run's batch size; evaluation in batches of at least 64."""
        return DataLoader(self.dataset(rows, labels), batch_size=self.batch_size if shuffle else max(64, self.batch_size),
                          shuffle=shuffle, generator=generator, collate_fn=pad_collate)
