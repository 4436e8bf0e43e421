"""Pretraining batches: random crops of a manifest's audio, a pure function of (seed, step).

`CropSampler.batch(step)` draws the clips of a step from a permutation seeded by (seed, epoch)
and the crop starts from a generator seeded by (seed, step), so a batch needs no saved state and
the same step gives the same bytes in any process. That is what lets the loop produce batches in
DataLoader worker processes (`batch_stream` with workers > 0): the order of steps is the same, the
content is the same, so loss curves are identical with 0 or N workers (tested), and resuming or
distributed training never depends on the worker count.

An objective that reads more than audio per crop (mouth frames) gives a `crop_reader`; the
workers call it and put what it returns in `CropInfo.extras`, so the training step never waits on
a decoder or a disk.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterator

import numpy as np
import torch

from bench.data.audio import load_audio
from bench.data.manifest import Manifest
from bench.errors import ConfigError
from bench.pretrain.objective import CropInfo

# Batches each worker prepares ahead of the step that needs them.
PREFETCH_BATCHES = 4


def _seed_of(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


def steps_per_epoch(clips: int, batch_size: int) -> int:
    """Full batches in one pass over the clips: the last partial batch is dropped."""
    return max(1, clips // batch_size)


class CropSampler:
    """Batches of random crops; a pure function of (seed, step), so resuming needs no state."""

    def __init__(self, manifest: Manifest, splits: tuple[str, ...], batch_size: int, crop_samples: int,
                 seed: int, align: int = 1) -> None:
        in_splits = manifest.table["split"].isin(splits).to_numpy()
        if not in_splits.any():
            raise ConfigError(f"{manifest.path}: no clips in split(s) {', '.join(splits)} to pretrain on.")
        self.rows = np.flatnonzero(in_splits)
        self.clip_ids = manifest.table["clip_id"].to_numpy()[self.rows]
        self.paths = [manifest.resolve(p) for p in manifest.table["audio_path"].to_numpy()[self.rows]]
        self.batch_size, self.crop_samples, self.seed, self.align = batch_size, crop_samples, seed, max(1, align)
        self.steps_per_epoch = steps_per_epoch(len(self.paths), batch_size)
        self._order_epoch, self._order = -1, None

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def batch(self, step: int, part: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor, CropInfo]:
        """The crops of `step` (or the `part` of them that one distributed rank trains on)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._order_epoch:
            self._order = np.random.default_rng(_seed_of(self.seed, "order", epoch)).permutation(len(self.paths))
            self._order_epoch = epoch
        picks = self._order[position * self.batch_size:(position + 1) * self.batch_size]
        # Every crop's start is drawn whatever `part` is, so a rank's crops are those of the full batch.
        rng = np.random.default_rng(_seed_of(self.seed, "crop", step))
        draws = rng.random(len(picks))
        picks, draws = picks[part], draws[part]
        wav = torch.zeros(len(picks), self.crop_samples)
        lengths = torch.zeros(len(picks), dtype=torch.long)
        starts = torch.zeros(len(picks), dtype=torch.long)
        for i, (k, u) in enumerate(zip(picks, draws)):
            audio = load_audio(self.paths[k])
            slots = max(0, len(audio) - self.crop_samples) // self.align + 1
            start = int(u * slots) * self.align
            piece = audio[start:start + self.crop_samples]
            wav[i, :len(piece)] = torch.from_numpy(piece)
            lengths[i], starts[i] = len(piece), start
        info = CropInfo(rows=[int(self.rows[k]) for k in picks], clip_ids=[str(self.clip_ids[k]) for k in picks],
                        starts=starts)
        return wav, lengths, info


class StepBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item `step` is that step's batch (with the objective's extras)."""

    def __init__(self, sampler: CropSampler, part: slice,
                 reader: Callable[[CropInfo, int], dict] | None) -> None:
        self.sampler, self.part, self.reader = sampler, part, reader

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, CropInfo]:
        wav, lengths, info = self.sampler.batch(step, self.part)
        if self.reader is not None:
            info.extras = self.reader(info, self.sampler.crop_samples)
        return wav, lengths, info


def batch_stream(sampler: CropSampler, part: slice, first: int, end: int, *, workers: int = 0,
                 reader: Callable[[CropInfo, int], dict] | None = None,
                 pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, CropInfo]]:
    """The batches of steps first .. end-1, in order: made here (workers=0, as before workers
    existed) or by `workers` DataLoader processes that stay PREFETCH_BATCHES steps ahead each."""
    if workers == 0:
        for step in range(first, end):
            yield sampler.batch(step, part)
        return
    loader = torch.utils.data.DataLoader(
        StepBatches(sampler, part, reader), sampler=range(first, end), batch_size=None, num_workers=workers,
        pin_memory=pin_memory, prefetch_factor=PREFETCH_BATCHES, collate_fn=_as_is,
        # Not fork: forked workers share the training process's pages copy-on-write, and its steps
        # ran 47% slower while they were alive (measured, benchmarks/pipeline_benchmark.py); a
        # forkserver child shares nothing and is also safe beside torch's threads.
        multiprocessing_context="forkserver",
        # Its own generator: the loader draws a base seed when it starts, which must not move the
        # global torch stream that the objectives draw from (the curve would then depend on workers).
        generator=torch.Generator().manual_seed(0))
    yield from loader


def _as_is(batch):
    return batch
