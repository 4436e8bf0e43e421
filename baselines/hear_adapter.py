"""`hear:MODULE[@MODEL_FILE]`: any HEAR 2021 module as an avbench encoder, with no code.

HEAR 2021 (Turian et al., PMLR 176, 2022; https://hearbenchmark.com/hear-api.html) defines an
audio representation as an importable Python module with three functions:

    load_model(model_file_path: str = "") -> Model   # Model has sample_rate,
                                                       # scene_embedding_size, timestamp_embedding_size
    get_timestamp_embeddings(audio [n, samples], model) -> (embeddings [n, T, D], timestamps [n, T] ms)
    get_scene_embeddings(audio [n, samples], model) -> embeddings [n, D]

This adapter imports MODULE, calls `load_model(MODEL_FILE)` (or `load_model()` without a file),
and turns `get_timestamp_embeddings` into the `Encoder` contract:

- Sample rate: `model.sample_rate`. The feature cache resamples every clip to it (bench.data.audio),
  so the module gets audio at its own rate.
- Frame rate and the first frame's centre: read off the timestamps the module returns for a
  seeded 2 s noise clip. Spacing must be uniform (hearvalidator's rule: within 1e-3 ms of the mean;
  we allow 1e-2 ms for float32 timestamps of long clips); otherwise a ConfigError shows the spacing.
- Dimension: `model.timestamp_embedding_size`, checked against what the module returns.
- Valid frames: those centred inside the clip, `t0 + k hop <= duration` (hearbaseline's framing
  gives exactly this many: floor(n / hop) + 1). A module that returns more is cut; one that
  returns fewer has its last frame repeated (S3PRLUpstream's rule), so the count depends on the
  clip's length only.
- Padding: by default the clips of a batch are grouped by length and each group runs unpadded, so
  padding cannot change a valid frame whatever the module computes (a module may normalise over
  the whole input). `batch_clips=True` hands the zero-padded batch to the module in one call:
  faster, and exact for modules that frame locally and zero-pad the end themselves, as
  hearbaseline does (tests/test_hear.py checks both).
- Frozen only: HEAR's functions need not pass gradients (hearbaseline runs under no_grad), so the
  encoder is not trainable. Torch models only: a TensorFlow model is refused with a ConfigError.

Feature-cache identity (`config()`): the module name, the distribution that ships it and its
version, a digest of the module's source files, and the model file's sha256; the weights of a
torch model are digested with the encoder's state dict as for every encoder.

The published `hearbaseline` 2021.1.1 cannot install beside avbench's core: its metadata pins
numpy==1.19.2 and numba==0.48 (no Python 3.11 wheels) and its naive model calls
`librosa.filters.mel(sr, ...)` positionally, which librosa >= 0.10 refuses. `tox -e hear` installs
it without its pins beside librosa 0.9.2 (see tox.ini) and runs it through this adapter.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.s3prl_adapter import match_length
from bench.errors import ConfigError
from bench.files import file_sha256
from bench.registry import Encoder, put_cwd_on_sys_path, register_encoder

# Bump when a change to this module changes the features: cached ones go stale.
FEATURE_VERSION = 1
PROBE_SECONDS = 2.0
# hearvalidator allows 1e-3 ms around the mean spacing; float32 timestamps of long clips need more.
SPACING_TOLERANCE_MS = 1e-2
HEAR_API = "https://hearbenchmark.com/hear-api.html"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def import_hear_module(name: str) -> Any:
    """Import MODULE and check that it has the two HEAR functions this adapter calls."""
    if not _MODULE_NAME.fullmatch(name):
        raise ConfigError(f"hear:{name}: a HEAR module is a dotted Python module name (e.g. hear:hearbaseline)")
    put_cwd_on_sys_path()  # `hear:my_model` finds ./my_model.py, as --plugin does
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise ConfigError(f"hear:{name}: no module {name!r} on sys.path. Install the package that provides "
                              f"it (e.g. `pip install hearbaseline` for hear:hearbaseline) or run from the folder "
                              f"that holds {name.split('.')[0]}.py.") from exc
        raise ConfigError(f"hear:{name}: importing it needs the package {exc.name!r}, which is not installed "
                          f"({exc}).") from exc
    missing = [f for f in ("load_model", "get_timestamp_embeddings") if not callable(getattr(module, f, None))]
    if missing:
        raise ConfigError(f"hear:{name}: {module.__file__} has no {' or '.join(missing)}; a HEAR module defines "
                          f"load_model, get_timestamp_embeddings and get_scene_embeddings ({HEAR_API}).")
    return module


def module_identity(name: str, module: Any) -> dict:
    """The distribution and version that ship MODULE, and a digest of its source files."""
    top = name.split(".")[0]
    dists = sorted(set(packages_distributions().get(top, [])))
    dist_version = None
    for dist in dists:
        try:
            dist_version = version(dist)
            break
        except PackageNotFoundError:
            continue
    # Every source file of MODULE's top package (imported with it); else MODULE's own file.
    top_module = sys.modules[top]
    top_file = Path(getattr(top_module, "__file__", "") or "")
    root = top_file.parent if top_file.name == "__init__.py" else None
    file = Path(getattr(module, "__file__", "") or "")
    files = sorted(root.rglob("*.py")) if root else ([file] if file.is_file() else [])
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(root) if root else f.name).encode() + b"\0" + f.read_bytes() + b"\0")
    return {"module": name, "distribution": dists[0] if dists else None, "distribution_version": dist_version,
            "module_version": str(getattr(top_module, "__version__", "")) or None,
            "source_sha256": digest.hexdigest() if files else None}


def _to_torch(x: Any, what: str, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except Exception as exc:
        raise ConfigError(f"hear:{name}: get_timestamp_embeddings returned {what} of type {type(x).__name__}, "
                          "not a tensor") from exc


class HearModuleEncoder(Encoder):
    """One HEAR module's timestamp embeddings as an avbench encoder (see the module docstring)."""

    needs_pretraining = False
    trainable = False  # HEAR's API does not promise gradients

    def __init__(self, module_name: str, model_file: str | Path | None = None, batch_clips: bool = False) -> None:
        super().__init__()
        self.module_name = module_name
        self.name = f"hear:{module_name}"
        self.batch_clips = bool(batch_clips)
        self.module = import_hear_module(module_name)
        self.identity = module_identity(module_name, self.module)
        self.model_file: Path | None = None
        self.model_file_sha256: str | None = None
        self._load(model_file)

    # ------------------------------------------------------------------------------ loading
    def _load(self, model_file: str | Path | None) -> None:
        path = Path(model_file) if model_file else None
        if path is not None and not path.is_file():
            raise ConfigError(f"{path}: model file not found for encoder {self.name!r}.")
        # fork_rng: load_model may seed or draw (hearbaseline calls torch.random.manual_seed(0)),
        # which must not move the caller's seeded stream.
        with torch.random.fork_rng(devices=[]):
            try:
                model = self.module.load_model(str(path)) if path else self.module.load_model()
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(f"{self.name}: load_model({str(path) if path else ''!r}) failed "
                                  f"({type(exc).__name__}: {exc}).") from exc
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{self.name}: load_model returned a {type(model).__module__}.{type(model).__name__}; "
                              "avbench runs torch, so it takes HEAR modules whose model is a torch.nn.Module "
                              "(TensorFlow HEAR models are not supported).")
        for attribute in ("sample_rate", "timestamp_embedding_size"):
            if not isinstance(getattr(model, attribute, None), int) or getattr(model, attribute) <= 0:
                raise ConfigError(f"{self.name}: the model's {attribute} must be a positive int (HEAR API, "
                                  f"{HEAR_API}); got {getattr(model, attribute, None)!r}")
        self.model = model  # a submodule: .to(device) moves it and its weights enter the cache key
        self.model.eval()
        self.sample_rate = int(model.sample_rate)
        self.dim = int(model.timestamp_embedding_size)
        self._probe()
        self.model_file = path.resolve() if path else None
        self.model_file_sha256 = file_sha256(path) if path else None

    def load_checkpoint(self, path: str | Path) -> None:
        """Reload the module's model from the model file `path` (`hear:MODULE@FILE` passes it here)."""
        if self.model_file is not None and Path(path).resolve() == self.model_file:
            return
        self._load(path)

    def _probe(self) -> None:
        """Frame rate and first centre from the timestamps of a seeded 2 s noise clip."""
        generator = torch.Generator().manual_seed(0)
        clip = torch.rand(1, int(PROBE_SECONDS * self.sample_rate), generator=generator) * 2 - 1
        embeddings, timestamps = self._call(clip)
        ts = timestamps[0].to(torch.float64)
        if ts.numel() < 2:
            raise ConfigError(f"{self.name}: the module returned {ts.numel()} timestamp(s) for a {PROBE_SECONDS:g} s "
                              "clip; a frame rate needs at least two.")
        spacing = torch.diff(ts)
        hop = float(spacing.mean())
        if hop <= 0 or float((spacing - hop).abs().max()) > SPACING_TOLERANCE_MS:
            shown = ", ".join(f"{d:g}" for d in spacing[:12].tolist())
            raise ConfigError(f"{self.name}: its timestamps are not uniformly spaced, so they give no frame rate: "
                              f"spacing {float(spacing.min()):g}-{float(spacing.max()):g} ms (first: {shown} ms) "
                              f"for a {PROBE_SECONDS:g} s clip. avbench's encoders have one frame rate "
                              "(HEAR asks for regular intervals too).")
        self.hop_ms = hop
        self.frame_rate = 1000.0 / hop
        self.first_frame_centre_s = float(ts[0]) / 1000.0

    # ------------------------------------------------------------------------------ features
    def _call(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """get_timestamp_embeddings on [b, samples], checked: ([b, T, dim] float32, [b, T] ms)."""
        with torch.no_grad():
            out = self.module.get_timestamp_embeddings(audio, self.model)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ConfigError(f"{self.name}: get_timestamp_embeddings must return (embeddings, timestamps)")
        embeddings = _to_torch(out[0], "embeddings", self.module_name)
        timestamps = _to_torch(out[1], "timestamps", self.module_name)
        b = audio.shape[0]
        if embeddings.dim() != 3 or embeddings.shape[0] != b or embeddings.shape[2] != self.dim:
            raise ConfigError(f"{self.name}: get_timestamp_embeddings gave embeddings of shape "
                              f"{tuple(embeddings.shape)} for {b} clips; expected [{b}, T, {self.dim}] "
                              "(timestamp_embedding_size).")
        if tuple(timestamps.shape) != tuple(embeddings.shape[:2]):
            raise ConfigError(f"{self.name}: timestamps of shape {tuple(timestamps.shape)} do not match the "
                              f"embeddings' [{b}, {embeddings.shape[1]}]")
        return embeddings.to(torch.float32), timestamps

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames centred inside the clip: t0 + k hop <= duration, at least one for a non-empty clip."""
        lengths = torch.as_tensor(lengths, dtype=torch.long)
        duration_ms = lengths.to(torch.float64) * 1000.0 / self.sample_rate
        t0_ms = self.first_frame_centre_s * 1000.0
        frames = torch.floor((duration_ms - t0_ms) / self.hop_ms + 1e-9).to(torch.long) + 1
        return torch.where(lengths > 0, frames.clamp(min=1), torch.zeros_like(frames))

    def _check_timestamps(self, timestamps: torch.Tensor) -> None:
        if timestamps.shape[1] == 0:
            return
        expected = self.first_frame_centre_s * 1000.0 + self.hop_ms * torch.arange(timestamps.shape[1],
                                                                                   dtype=torch.float64)
        off = (timestamps.to(torch.float64).cpu() - expected).abs().max()
        if float(off) > max(SPACING_TOLERANCE_MS, 1e-6 * float(expected[-1])):
            raise ConfigError(f"{self.name}: timestamps moved by up to {float(off):g} ms from the "
                              f"{self.first_frame_centre_s * 1000:g} + k x {self.hop_ms:g} ms grid measured when "
                              "the model loaded; its frame rate depends on the input.")

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if wav.dim() != 2:
            raise ValueError(f"wav must be [B, T], got shape {tuple(wav.shape)}")
        batch, samples = wav.shape
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(0, samples)
        out_lengths = self.output_lengths(lengths.cpu()).to(wav.device)
        if self.batch_clips:
            groups = [list(range(batch))]
        else:  # equal lengths run together, unpadded
            by_length: dict[int, list[int]] = {}
            for i, n in enumerate(lengths.tolist()):
                by_length.setdefault(n, []).append(i)
            groups = list(by_length.values())
        per_clip: list[torch.Tensor] = [wav.new_zeros(0, self.dim)] * batch
        for group in groups:
            longest = int(lengths[group].max())
            if longest == 0:
                continue
            audio = wav[group, :longest] * (torch.arange(longest, device=wav.device) < lengths[group, None])
            embeddings, timestamps = self._call(audio.to(torch.float32))
            self._check_timestamps(timestamps)
            for j, i in enumerate(group):
                per_clip[i] = match_length(embeddings[j:j + 1].to(wav.device), int(out_lengths[i]))[0]
        frames = int(out_lengths.max()) if batch else 0
        feats = torch.stack([F.pad(h, (0, 0, 0, frames - h.shape[0])) for h in per_clip]) if batch else \
            wav.new_zeros(0, 0, self.dim)
        return feats, out_lengths

    def config(self) -> dict:
        return {**super().config(), "version": FEATURE_VERSION, **self.identity, "sample_rate": self.sample_rate,
                "first_frame_centre_ms": round(self.first_frame_centre_s * 1000.0, 6),
                "batch_clips": self.batch_clips, "frames": "centred inside the clip; last repeated",
                "model_file_sha256": self.model_file_sha256}


@register_encoder("hear", family=True)
def hear_encoder(module: str, checkpoint: str | Path | None = None, batch_clips: bool = False) -> HearModuleEncoder:
    """Any HEAR 2021 module (hear:MODULE, hear:MODULE@MODEL_FILE): its timestamp embeddings, frozen.

    checkpoint: the model file handed to load_model (`@MODEL_FILE` in the spec); batch_clips: run a
    zero-padded batch in one call instead of grouping clips by length (see the module doc).
    """
    return HearModuleEncoder(module, model_file=checkpoint, batch_clips=batch_clips)
