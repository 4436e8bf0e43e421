"""The self-supervised pretraining contract: a pretext is an objective wrapped around an encoder.

A pretext is an `nn.Module` that holds the encoder it trains as `self.encoder`, plus whatever heads
its objective needs (APC's postnet, wav2vec's step projections, PASE+'s workers). Its forward takes
a batch of raw 16 kHz waveforms and returns a dict of scalar tensors with a "loss" entry to
minimise. Every other entry is logged to loss.csv as it is; those named "loss_<part>" (e.g. one
per PASE+ worker) are parts of the loss and are plotted beside it, the rest are metrics.

    @register_pretext("apc")
    def apc_pretext(encoder: APC, context: PretextContext, n_ahead: int = 3) -> Pretext: ...

The name is the encoder's registry name, so `avbench pretrain apc --data MANIFEST` builds
`create_encoder("apc")` and then its pretext. Randomness inside a pretext (negative sampling,
online contamination) must draw from torch's global generator or from `context.generator`: the
pretraining loop seeds both and saves their state in every checkpoint, so that a resumed run
continues with exactly the numbers an uninterrupted one would have drawn.

Objectives that need more than the waveform (mouth frames, per-clip targets cached once) get
`info`, a `CropInfo` saying which manifest row each crop came from and where it starts, and
`context.manifest`, the manifest itself. An objective whose data is on a coarser grid sets
`crop_align` (in samples): the loop then starts every crop on a multiple of it, e.g. 640 samples
(40 ms) so that a crop starts exactly on a 25 fps video frame. An objective whose per-crop data is
slow to read (decoded or rendered mouth frames) returns a `crop_reader`, which the loop runs in its
data-loading workers (`--loader-workers`), so the step finds the data in `info.extras`.

Objectives must be device-agnostic: the loop moves the pretext to `--device` and the batch with
it, and runs forward under autocast for `--precision bf16|fp16`. Create tensors on the input's
device (`device=wav.device`), and draw noise from `context.generator` (a CPU generator) and move
it, so a CUDA run draws the same numbers as a CPU one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bench.data.manifest import Manifest
from bench.errors import ConfigError
from bench.registry import Encoder, _load_all

__all__ = ["CropInfo", "Pretext", "hidden_parameter_names", "PretextContext", "register_pretext", "pretext_factory",
           "pretext_version", "list_pretexts"]


@dataclass
class PretextContext:
    """What the pretraining loop knows that an objective may need."""

    sample_rate: int = 16_000
    # Long background-noise recordings of the corpus (manifest meta `noise_sources`), for online
    # contamination. Empty when the corpus has none; objectives that need noise must say so.
    noise_sources: list[Path] = field(default_factory=list)
    generator: torch.Generator = field(default_factory=torch.Generator)
    # The manifest the crops come from (None in unit tests that feed waveforms directly).
    manifest: Manifest | None = None
    # Where the pretext trains; objectives that build caches of their own (targets) build them there.
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Whether the run shows progress bars: objectives that build caches show theirs only then.
    progress: bool = True


@dataclass
class CropInfo:
    """Where each crop of a batch comes from: manifest row positions and start samples."""

    rows: list[int]            # positions in `context.manifest.table` (iloc)
    clip_ids: list[str]
    starts: torch.Tensor       # [B] int64, the crop's first sample within its clip
    # What the objective's crop_reader returned for these crops, when a loader worker called it.
    extras: dict = field(default_factory=dict)


class Pretext(nn.Module):
    """Base class of the self-supervised objectives."""

    encoder: Encoder
    # Adam's learning rate when the user gives none; each objective sets what its paper used.
    default_lr: float = 1e-3
    # Crops start on multiples of this many samples (640 = one 25 fps video frame at 16 kHz).
    crop_align: int = 1

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor,
                info: CropInfo | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def crop_reader(self) -> Callable[[CropInfo, int], dict] | None:
        """A function (info, crop_samples) -> dict that reads what this objective needs per crop
        besides the audio, or None. The loop runs it in its loader workers and puts the result in
        `info.extras`; forward must give the same numbers with or without it (it reads the data
        itself when `extras` is empty), so it has to be a pure function of its arguments."""
        return None

    def self_optimised_parameters(self) -> list[nn.Parameter]:
        """Parameters this objective updates itself inside forward, with its own optimiser (e.g.
        GAN discriminators, whose gradient from the loop's loss would help the generator)."""
        return []

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """Every parameter but the self-optimised ones of this objective and of any objective nested in
        it, so the loop's optimiser, gradient clipping and parameter count never see those.

        nn.Module collects submodules' parameters directly rather than through their
        named_parameters, which is why the nested objectives are asked here.
        """
        hidden = {id(p) for m in self.modules() if isinstance(m, Pretext) for p in m.self_optimised_parameters()}
        for name, p in super().named_parameters(prefix=prefix, recurse=recurse, remove_duplicate=remove_duplicate):
            if id(p) not in hidden:
                yield name, p

    def config(self) -> dict:
        """The objective's settings, recorded in every pretraining checkpoint."""
        return {}


def hidden_parameter_names(module: nn.Module) -> list[str]:
    """Names of the parameters a pretext's named_parameters() hides (its self-optimised ones)."""
    shown = {name for name, _ in module.named_parameters()}
    return [name for name, _ in nn.Module.named_parameters(module) if name not in shown]


_PRETEXTS: dict[str, Callable[..., Pretext]] = {}


_VERSIONS: dict[str, int] = {}


def register_pretext(encoder_name: str, version: int = 1) -> Callable:
    """Decorator: register the pretext factory `(encoder, context, **kw) -> Pretext` of an encoder.

    `version` is the code version of the objective and its encoder: bump it when their maths
    changes, so that checkpoints made by the old code are not taken for new ones (it is part of a
    pretraining's identity, bench.pretrain.stage).
    """

    def wrap(factory: Callable[..., Pretext]) -> Callable[..., Pretext]:
        existing = _PRETEXTS.get(encoder_name)
        if existing is not None and existing is not factory:
            raise ConfigError(f"pretext for {encoder_name!r} is registered twice ({existing} and {factory})")
        _PRETEXTS[encoder_name] = factory
        _VERSIONS[encoder_name] = int(version)
        return factory

    return wrap


def pretext_version(encoder_name: str) -> int:
    pretext_factory(encoder_name)  # the same error for an unknown name
    return _VERSIONS[encoder_name]


def list_pretexts() -> list[str]:
    _load_all()  # the built-in encoder modules also register their pretexts
    return sorted(_PRETEXTS)


def pretext_factory(encoder_name: str) -> Callable[..., Pretext]:
    _load_all()
    if encoder_name not in _PRETEXTS:
        raise ConfigError(f"encoder {encoder_name!r} has no self-supervised objective; pretrainable: "
                          f"{', '.join(sorted(_PRETEXTS)) or 'none'}.")
    return _PRETEXTS[encoder_name]
