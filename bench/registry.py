"""The encoder contract and registry: one decorator to add an encoder, one call to build it.

An encoder is a `torch.nn.Module` that subclasses `Encoder`:

    forward(wav [B, T] float32 at 16 kHz, lengths [B] int64) -> (feats [B, T', dim], lengths' [B])

Padding beyond `lengths` must not change the features of valid frames that it does not overlap,
and `lengths'` counts the valid output frames (see `Encoder.output_lengths`).

Register with `@register_encoder("name")` on a class or a factory function. Build with
`create_encoder("name", checkpoint=None, **kw)`, or `create_encoder("name@path/to/ckpt")`.
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
BUILTIN_ENCODER_MODULES = ("baselines.spectral",)


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

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid output frames for `lengths` input samples (override for exact conv arithmetic)."""
        hop = self.sample_rate / self.frame_rate
        return torch.div(lengths, hop, rounding_mode="floor").to(torch.long) + 1

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
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(f"{path}: does not fit encoder {self.name!r}: missing keys {list(missing)[:10]}, "
                              f"unexpected keys {list(unexpected)[:10]}.")


@dataclass(frozen=True)
class EncoderEntry:
    name: str
    factory: Callable[..., Encoder]
    source: str  # the defining module, or "plugin <distribution>" for entry points


_REGISTRY: dict[str, EncoderEntry] = {}
_LOADED = False


def register_encoder(name: str) -> Callable:
    """Decorator: register a class or factory under `name` (names are unique)."""

    def wrap(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.factory is not factory:
            raise ConfigError(f"encoder name {name!r} is registered twice ({existing.factory} and {factory})")
        _REGISTRY[name] = EncoderEntry(name=name, factory=factory, source=getattr(factory, "__module__", "?"))
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
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            log.warning("plugin encoder %r (%s) ignored: the name is already registered by %s",
                        ep.name, ep.value, _REGISTRY[ep.name].source)
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not hide the built-in encoders
            log.error("plugin encoder %r (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        dist = getattr(ep, "dist", None)
        _REGISTRY[ep.name] = EncoderEntry(name=ep.name, factory=obj,
                                          source=f"plugin {dist.name if dist else ep.value}")


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
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # `--plugin my_encoder` finds ./my_encoder.py
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
    """'apc@ckpt/x.pt' -> ('apc', 'ckpt/x.pt'); 'mfcc39' -> ('mfcc39', None)."""
    name, _, ckpt = spec.partition("@")
    return name, (ckpt or None)


def create_encoder(spec: str, checkpoint: str | Path | None = None, **kwargs) -> Encoder:
    """Build an encoder by name (optionally `name@checkpoint`) with keyword overrides."""
    name, at_ckpt = split_spec(spec)
    if at_ckpt and checkpoint and str(at_ckpt) != str(checkpoint):
        raise ConfigError(f"encoder {spec!r} names checkpoint {at_ckpt} but checkpoint={checkpoint} was also given")
    checkpoint = checkpoint or at_ckpt
    entry = encoder_entry(name)
    try:
        inspect.signature(entry.factory).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"encoder {name!r} does not accept {sorted(kwargs)}: {exc}") from exc
    except ValueError:
        pass  # no introspectable signature (a builtin callable): let the call itself decide
    encoder = entry.factory(**kwargs)
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
