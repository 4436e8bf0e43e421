"""The pretraining contract: an objective wraps an encoder in a pretext that the loop trains.

A pretext is an `nn.Module` that holds the encoder it trains as `self.encoder`, plus whatever heads
its objective needs (APC's postnet, wav2vec's step projections, PASE+'s workers, DINO's teacher).
Its forward takes a batch of raw 16 kHz waveforms and returns a dict of scalar tensors with a
"loss" entry to minimise. Every other entry is logged to loss.csv as it is; those named
"loss_<part>" (e.g. one per PASE+ worker) are parts of the loss and are plotted beside it, the
rest are metrics (DINO's teacher entropies, a supervised objective's accuracy).

Objectives are registered apart from encoders, with what they need of the encoder and the data:

    @register_objective("dino", needs=ObjectiveNeeds(features="pooled"))
    def dino(encoder: Encoder, context: PretextContext, **kw) -> Pretext: ...

so that any objective trains any encoder it fits: `avbench pretrain resnet18 --objective dino`.
An encoder's own objective is registered under the encoder's name with `register_pretext(NAME)`
(it fits that encoder only), and `avbench pretrain NAME` with no --objective trains with it, so
commands, records and checkpoint identities from before objectives were separate stay valid.
Third-party packages add objectives through the entry-point group `avbench.objectives`
(`name = "package.module:factory"`); `avbench list --objectives` shows which encoders each fits.

Randomness inside a pretext (negative sampling, segments, online contamination) must draw from
torch's global generator or from `context.generator`: the pretraining loop seeds both and saves
their state in every checkpoint, so that a resumed run continues with exactly the numbers an
uninterrupted one would have drawn. State an objective keeps across steps (a momentum teacher, a
queue of keys, DINO's center) must live in its parameters and buffers, which every checkpoint saves.

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

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bench.data.manifest import Manifest
from bench.errors import ConfigError
from bench.registry import Encoder, _load_all, load_plugins

log = logging.getLogger("avbench.pretrain")

__all__ = ["CropInfo", "Pretext", "hidden_parameter_names", "PretextContext", "ObjectiveNeeds", "register_objective",
           "register_pretext", "objective_factory", "objective_version", "objective_needs", "resolve_objective",
           "check_fits", "list_objectives", "pretext_factory", "pretext_version", "list_pretexts"]


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


@dataclass(frozen=True)
class ObjectiveNeeds:
    """What an objective asks of the encoder it trains and of the data (`avbench list --objectives`).

    features     "frames": it reads the encoder's [B, T', dim] frames itself; "pooled": it pools them
                 over time first (statistics pooling), so any frame rate fits
    min_dim      the smallest encoder dimension it accepts
    mouth_frames it reads the talking-mouth frames of each crop (manifest column `mouth_track`)
    labels       it reads a label column of the manifest (supervised pretraining)
    encoders     only these encoders, for objectives that reach into one architecture (APC's
                 postnet, wav2vec's context network); None: any trainable encoder
    frame_rate   only encoders at this frame rate (targets sliced on a fixed grid), or None
    """

    features: str = "frames"
    min_dim: int = 1
    mouth_frames: bool = False
    labels: bool = False
    encoders: tuple[str, ...] | None = None
    frame_rate: float | None = None

    def misfits(self, encoder: Encoder) -> list[str]:
        """Why `encoder` cannot be trained by this objective (empty when it can)."""
        reasons = []
        name = getattr(encoder, "name", type(encoder).__name__)
        if self.encoders is not None and name not in self.encoders:
            reasons.append(f"it trains only {', '.join(self.encoders)}")
        if not getattr(encoder, "trainable", True):
            reasons.append(f"{name} has no trainable parameters")
        if getattr(encoder, "dim", 0) < self.min_dim:
            reasons.append(f"it needs features of at least {self.min_dim} dimensions, {name} gives {encoder.dim}")
        if self.frame_rate is not None and abs(float(encoder.frame_rate) - self.frame_rate) > 1e-6:
            reasons.append(f"it needs frames at {self.frame_rate:g} Hz, {name} gives {encoder.frame_rate:g} Hz")
        return reasons

    def describe(self) -> str:
        parts = [f"{self.features} features"]
        if self.min_dim > 1:
            parts.append(f"dim >= {self.min_dim}")
        if self.frame_rate is not None:
            parts.append(f"{self.frame_rate:g} Hz")
        if self.mouth_frames:
            parts.append("mouth frames")
        if self.labels:
            parts.append("labels")
        return ", ".join(parts)


_PRETEXTS: dict[str, Callable[..., Pretext]] = {}
_VERSIONS: dict[str, int] = {}
_NEEDS: dict[str, ObjectiveNeeds] = {}

OBJECTIVE_ENTRY_POINT_GROUP = "avbench.objectives"
# Modules of avbench's objectives that no encoder module imports.
BUILTIN_OBJECTIVE_MODULES = ("objectives.contrastive", "objectives.dino", "objectives.supervised")
_OBJECTIVES_LOADED = False


def register_objective(name: str, version: int = 1, needs: ObjectiveNeeds | None = None) -> Callable:
    """Decorator: register an objective factory `(encoder, context, **kw) -> Pretext` under `name`.

    `version` is the code version of the objective: bump it when its maths changes, so that
    checkpoints made by the old code are not taken for new ones (it is part of a pretraining's
    identity, bench.pretrain.stage). `needs` says what it asks of the encoder and the data.
    """
    if ":" in name or "@" in name:
        raise ConfigError(f"objective name {name!r} may not contain ':' or '@'")

    def wrap(factory: Callable[..., Pretext]) -> Callable[..., Pretext]:
        existing = _PRETEXTS.get(name)
        if existing is not None and existing is not factory:
            raise ConfigError(f"objective {name!r} is registered twice ({existing} and {factory})")
        _PRETEXTS[name] = factory
        _VERSIONS[name] = int(version)
        _NEEDS[name] = needs or ObjectiveNeeds()
        return factory

    return wrap


def register_pretext(encoder_name: str, version: int = 1, needs: ObjectiveNeeds | None = None) -> Callable:
    """Decorator: register an encoder's own objective, named after the encoder and, unless `needs`
    says otherwise, fitting only that encoder. It is what `avbench pretrain ENCODER` trains with
    when no --objective is given."""
    return register_objective(encoder_name, version, needs or ObjectiveNeeds(encoders=(encoder_name,)))


def _load_objectives() -> None:
    """Import the encoders (whose modules register their own objectives), avbench's other
    objectives, then the plugins of the entry-point group `avbench.objectives`."""
    global _OBJECTIVES_LOADED
    _load_all()
    if _OBJECTIVES_LOADED:
        return
    import importlib

    for module in BUILTIN_OBJECTIVE_MODULES:
        importlib.import_module(module)
    _OBJECTIVES_LOADED = True
    def registered_by(name: str) -> str | None:
        return getattr(_PRETEXTS[name], "__module__", "?") if name in _PRETEXTS else None

    for ep, loaded in load_plugins(OBJECTIVE_ENTRY_POINT_GROUP, "objective", registered_by):
        if ep.name not in _PRETEXTS:  # a factory its module did not register itself
            register_objective(ep.name)(loaded)


def list_objectives() -> list[str]:
    _load_objectives()
    return sorted(_PRETEXTS)


def list_pretexts() -> list[str]:
    """The encoders' own objectives (one per pretrainable encoder)."""
    _load_objectives()
    return sorted(n for n, needs in _NEEDS.items() if needs.encoders is not None and n in needs.encoders)


def objective_factory(name: str) -> Callable[..., Pretext]:
    _load_objectives()
    if name not in _PRETEXTS:
        raise ConfigError(f"unknown objective {name!r}; registered: {', '.join(sorted(_PRETEXTS)) or 'none'}. "
                          "See `avbench list --objectives`.")
    return _PRETEXTS[name]


def objective_version(name: str) -> int:
    objective_factory(name)  # the same error for an unknown name
    return _VERSIONS[name]


def objective_needs(name: str) -> ObjectiveNeeds:
    objective_factory(name)
    return _NEEDS.get(name, ObjectiveNeeds())


def own_objective(encoder_name: str) -> str | None:
    """The objective an encoder trains with when none is named: the one registered under its name."""
    _load_objectives()
    return encoder_name if encoder_name in _PRETEXTS else None


def resolve_objective(encoder_name: str, objective: str | None) -> str:
    """The objective a pretraining of `encoder_name` uses: `objective`, else the encoder's own."""
    if objective is not None:
        objective_factory(objective)
        return objective
    own = own_objective(encoder_name)
    if own is None:
        raise ConfigError(f"encoder {encoder_name!r} has no objective of its own; choose one with --objective "
                          f"(objective: in a sweep entry): {', '.join(list_objectives())}. See "
                          "`avbench list --objectives`.")
    return own


def check_fits(objective: str, encoder: Encoder) -> None:
    """Raise a ConfigError naming every reason why `objective` cannot train `encoder`."""
    reasons = objective_needs(objective).misfits(encoder)
    if reasons:
        raise ConfigError(f"objective {objective!r} does not fit encoder {encoder.name!r}: {'; '.join(reasons)}. "
                          "See `avbench list --objectives`.")


# The names before objectives were separate from encoders: the encoder's own objective.
def pretext_version(encoder_name: str) -> int:
    return objective_version(encoder_name)


def pretext_factory(encoder_name: str) -> Callable[..., Pretext]:
    _load_objectives()
    if encoder_name not in _PRETEXTS:
        raise ConfigError(f"encoder {encoder_name!r} has no self-supervised objective; pretrainable: "
                          f"{', '.join(list_pretexts()) or 'none'}.")
    return _PRETEXTS[encoder_name]
