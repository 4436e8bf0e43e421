"""The encoder contract and registry: one decorator to add an encoder, one call to build it.

An encoder is a `torch.nn.Module` that subclasses `Encoder`:

    forward(wav [B, T] float32 at 16 kHz, lengths [B] int64) -> (feats [B, T', dim], lengths' [B])

Padding beyond `lengths` must not change the features of valid frames that it does not overlap,
and `lengths'` counts the valid output frames (see `Encoder.output_lengths`).

Register with `@register_encoder("name")` on a class or a factory function. Build with
`create_encoder("name", checkpoint=None, **kw)`, or `create_encoder("name@path/to/ckpt")`.
A factory that declares a `checkpoint` parameter is given the checkpoint and builds from it (for
adapters whose model comes from the file, e.g. `hear:MODULE@MODEL_FILE`); otherwise the built
encoder's `load_checkpoint` reads it.
Third-party packages add encoders through the entry-point group `avbench.encoders`
(`name = "package.module:ClassOrFactory"`), with no edit to avbench.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bench.errors import ConfigError

log = logging.getLogger("avbench.registry")

ENTRY_POINT_GROUP = "avbench.encoders"

# Modules that hold avbench's own encoders; importing them runs their @register_encoder lines.
BUILTIN_ENCODER_MODULES = ("baselines.spectral", "baselines.supervised", "baselines.apc",
                           "baselines.wav2vec", "baselines.pase", "baselines.s3prl_adapter", "baselines.hear_adapter",
                           "encoders.resnet1d", "encoders.audiovisual", "encoders.logmel_l1")


class Encoder(nn.Module):
    """Base class of every feature extractor. Subclasses set the four attributes and forward()."""

    name: str = "unnamed"
    sample_rate: int = 16_000
    frame_rate: float = 100.0
    dim: int = 0
    # Whether the encoder is meaningless without pretraining or a checkpoint (e.g. an SSL model).
    needs_pretraining: bool = False
    # Whether it has trainable parameters at all (finetune/scratch modes need some).
    trainable: bool = True
    # Where, in seconds of input, output frame 0 is centred; frame k is centred at
    # first_frame_centre_s + k / frame_rate. 0.0 fits centred framing (librosa's center=True, the
    # default output_lengths); a conv stack without padding centres its first frame at half its
    # receptive field. HEAR timestamps (bench.hear) are these centres.
    first_frame_centre_s: float = 0.0

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid output frames for `lengths` input samples (override for exact conv arithmetic)."""
        hop = self.sample_rate / self.frame_rate
        return torch.div(lengths, hop, rounding_mode="floor").to(torch.long) + 1

    def frame_centres(self, frames: int) -> torch.Tensor:
        """The input time (seconds, float64) at the centre of each of the first `frames` output frames."""
        return self.first_frame_centre_s + torch.arange(int(frames), dtype=torch.float64) / float(self.frame_rate)

    def config(self) -> dict:
        """What, besides the weights, determines the features (feeds the feature-cache key)."""
        return {"name": self.name, "dim": self.dim, "frame_rate": self.frame_rate}

    def load_checkpoint(self, path: str | Path) -> None:
        """Load weights saved by avbench (`{"encoder": state_dict, ...}`) or a bare state dict."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: checkpoint not found for encoder {self.name!r}.")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "encoder" in state:
            state = state["encoder"]
        load_state_exactly(self, state, source=path)


def load_state_exactly(module: nn.Module, state: dict, source: str | Path, hint: str = "") -> None:
    """load_state_dict that fails with every missing, unexpected and wrongly shaped key listed.

    torch's own strict error stops at the first shape mismatch and buries the key lists; a user
    loading a published checkpoint into the wrong architecture needs all three lists at once.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state)
                    if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        def listed(keys: list[str]) -> str:
            return ", ".join(keys[:20]) + (f" (and {len(keys) - 20} more)" if len(keys) > 20 else "") if keys else "none"

        name = getattr(module, "name", type(module).__name__)
        raise ConfigError(f"{source}: does not fit encoder {name!r}. Missing keys: {listed(missing)}. "
                          f"Unexpected keys: {listed(unexpected)}. Shape mismatches: {listed(shapes)}."
                          + (f" {hint}" if hint else ""))
    module.load_state_dict(state, strict=True)


@dataclass(frozen=True)
class EncoderEntry:
    name: str
    factory: Callable[..., Encoder]
    source: str  # the defining module, or "plugin <distribution>" for entry points
    # A family is a prefix: "s3prl:hubert" builds factory("hubert", **kw). For adapters that wrap
    # another toolkit's open-ended model list, which cannot be enumerated at registration time.
    family: bool = False


_REGISTRY: dict[str, EncoderEntry] = {}
_LOADED = False


def register_encoder(name: str, family: bool = False) -> Callable:
    """Decorator: register a class or factory under `name` (names are unique).

    With family=True the name is a prefix: `create_encoder("NAME:variant")` calls
    `factory("variant", **kw)`, and `avbench list` shows the family as `NAME:<variant>`.
    """
    if ":" in name or "@" in name:
        raise ConfigError(f"encoder name {name!r} may not contain ':' or '@' (they separate the family "
                          "variant and the checkpoint)")

    def wrap(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.factory is not factory:
            raise ConfigError(f"encoder name {name!r} is registered twice ({existing.factory} and {factory})")
        _REGISTRY[name] = EncoderEntry(name=name, factory=factory, source=getattr(factory, "__module__", "?"),
                                       family=family)
        return factory

    return wrap


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    for module in BUILTIN_ENCODER_MODULES:
        importlib.import_module(module)
    # Set only after the built-ins imported: a failed import must fail again, not empty the registry.
    _LOADED = True
    def registered_by(name: str) -> str | None:
        return _REGISTRY[name].source if name in _REGISTRY else None

    for ep, obj in load_plugins(ENTRY_POINT_GROUP, "encoder", registered_by):
        dist = getattr(ep, "dist", None)
        _REGISTRY[ep.name] = EncoderEntry(name=ep.name, factory=obj,
                                          source=f"plugin {dist.name if dist else ep.value}")


def load_plugins(group: str, kind: str, registered_by: Callable[[str], str | None]):
    """Yield (entry point, loaded object) for each plugin of `group` whose name is free.

    A name already registered (`registered_by(name)` says by what) is skipped with a warning, and a
    plugin that fails to import is logged and skipped: a broken plugin must not hide the built-ins.
    """
    for ep in entry_points(group=group):
        owner = registered_by(ep.name)
        if owner:
            log.warning("plugin %s %r (%s) ignored: the name is already registered by %s", kind, ep.name,
                        ep.value, owner)
            continue
        try:
            obj = ep.load()
        except Exception as exc:
            log.error("plugin %s %r (%s) failed to load: %s", kind, ep.name, ep.value, exc)
            continue
        yield ep, obj


def put_cwd_on_sys_path() -> None:
    """Let a module in the working folder be imported by name, as `python -m` would (console scripts
    do not put the working folder on sys.path): `--plugin my_encoder`, `hear:my_model`."""
    import sys

    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))


def import_plugin(module_or_file: str) -> None:
    """Import a module by dotted name, or a .py file by path, so its @register_encoder lines run."""
    import importlib.util
    import sys

    path = Path(module_or_file)
    if path.suffix == ".py":
        if not path.is_file():
            raise ConfigError(f"{path}: plugin file not found.")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return
    put_cwd_on_sys_path()  # `--plugin my_encoder` finds ./my_encoder.py
    try:
        importlib.import_module(module_or_file)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"plugin module {module_or_file!r} not found ({exc}); give a module on "
                          "sys.path or a path to a .py file.") from exc


def list_encoders() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def encoder_entry(name: str) -> EncoderEntry:
    _load_all()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown encoder {name!r}; registered: {', '.join(sorted(_REGISTRY))}. "
                          "See `avbench list`.")
    return _REGISTRY[name]


def split_spec(spec: str) -> tuple[str, str | None]:
    """'apc@ckpt/x.pt' -> ('apc', 'ckpt/x.pt'); 'mfcc39' -> ('mfcc39', None).

    The checkpoint path may start with $AVBENCH_DATA (bench.paths.expand_path)."""
    from bench.paths import expand_path

    name, _, ckpt = spec.partition("@")
    return name, (expand_path(ckpt) if ckpt else None)


def create_encoder(spec: str, checkpoint: str | Path | None = None, **kwargs) -> Encoder:
    """Build an encoder by name (optionally `name@checkpoint`) with keyword overrides."""
    name, at_ckpt = split_spec(spec)
    if at_ckpt and checkpoint and str(at_ckpt) != str(checkpoint):
        raise ConfigError(f"encoder {spec!r} names checkpoint {at_ckpt} but checkpoint={checkpoint} was also given")
    checkpoint = checkpoint or at_ckpt
    family, _, variant = name.partition(":")
    entry = encoder_entry(family)
    if entry.family != bool(variant):
        raise ConfigError(f"encoder {name!r}: " + (f"{family!r} is a family; name a member as {family}:<variant>"
                                                   if entry.family else f"{family!r} takes no ':variant'"))
    args = (variant,) if entry.family else ()
    try:
        signature = inspect.signature(entry.factory)
    except ValueError:
        signature = None  # no introspectable signature (a builtin callable): let the call itself decide
    if checkpoint and signature is not None and "checkpoint" in signature.parameters:
        # The factory builds from the file itself (its model may not exist without it).
        kwargs, checkpoint = {**kwargs, "checkpoint": checkpoint}, None
    if signature is not None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"encoder {name!r} does not accept {sorted(kwargs)}: {exc}") from exc
    encoder = entry.factory(*args, **kwargs)
    if not isinstance(encoder, nn.Module) or not all(hasattr(encoder, a) for a in ("frame_rate", "dim", "forward")):
        raise ConfigError(f"encoder {name!r} ({entry.source}) does not follow the contract: it must be an "
                          "nn.Module with name, sample_rate, frame_rate, dim and forward(wav, lengths)")
    if not getattr(encoder, "name", None) or encoder.name == "unnamed":
        encoder.name = name
    if checkpoint:
        encoder.load_checkpoint(checkpoint)
    return encoder


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
