"""The audio-only pretext of the proposed encoder (`av-audio`): regress waveform attributes per frame.

The heads and the loss of the objective: per 40 ms output frame of the encoder, one small head per
attribute regresses that frame's standardised target. What the targets are is in
encoders/attributes.py; their cache and the corpus statistics that standardise them are in
encoders/attribute_target_cache.py. This module only slices, standardises and regresses them.

Loss. Per attribute the mean absolute error over valid entries: frames below both the crop's
output length and the end of the clip's cached targets; for prosody's log F0 additionally only
frames with voicing >= 0.5. The total is sum_a weight_a * L1_a (weights default to 1).

Without a manifest (`context.manifest is None`, unit tests feeding waveforms) or without `info`,
targets are computed on the fly from the given waveform (which is then the clean signal) and
standardised with the corpus statistics when the pretext has them, else with the statistics of
the batch's valid frames (as the PASE+ pretext does).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from baselines import functional as AF
from bench.data.cache_entry import CachedFeatures
from bench.errors import ConfigError
from bench.pretrain.objective import CropInfo, Pretext, PretextContext
from encoders.attribute_target_cache import cached_targets
from encoders.attributes import ATTRIBUTES, PROSODY, SAMPLE_RATE, VOICED, AttributeTargets
from encoders.resnet1d import HOP


class AttributeHead(nn.Module):
    """Linear(dim, hidden) - ReLU - Linear(hidden, out), frame by frame on [B, T', dim]."""

    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AttributePretext(Pretext):
    """Regress MFCC / log-mel / prosody of every 40 ms frame from the encoder's features (module docstring).

    Heads: one `AttributeHead` per attribute, encoder.dim -> hidden (256) -> 13 / 80 / 4 (with a
    512-d encoder: 134,669 / 151,888 / 132,356 parameters). forward returns {"loss": sum_a w_a *
    L1_a, "loss_<a>": L1_a for each chosen attribute}.
    """

    crop_align = HOP  # crops start on the 25 Hz grid: cached targets are sliced at start // 640

    def __init__(self, encoder: nn.Module, context: PretextContext, attributes: Sequence[str] = ATTRIBUTES,
                 weights: Mapping[str, float] | None = None, hidden: int = 256,
                 target_settings: Mapping[str, Any] | None = None, cache_root: str | Path | None = None,
                 cache_device: str | None = None, progress: bool = True) -> None:
        super().__init__()
        rate = getattr(encoder, "sample_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE or float(encoder.frame_rate) != SAMPLE_RATE / HOP:
            raise ConfigError(f"attribute pretext: the encoder must read {SAMPLE_RATE} Hz audio and give "
                              f"{SAMPLE_RATE / HOP:g} frames per second on the 640-sample grid (got "
                              f"{getattr(encoder, 'sample_rate', '?')} Hz, {encoder.frame_rate} fps)")
        attributes = tuple(attributes)
        unknown = sorted(set(attributes) - set(ATTRIBUTES))
        if unknown or not attributes or len(set(attributes)) != len(attributes):
            raise ConfigError(f"attribute pretext: attributes must be distinct names among {', '.join(ATTRIBUTES)}, "
                              f"got {list(attributes)}")
        weights = dict(weights or {})
        bad = sorted(set(weights) - set(attributes))
        if bad:
            raise ConfigError(f"attribute pretext: weights given for {bad}, which are not among the chosen "
                              f"attributes {list(attributes)}")
        for a, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ConfigError(f"attribute pretext: weight of {a!r} must be a finite number >= 0, got {w!r}")
        if int(hidden) < 1:
            raise ConfigError(f"attribute pretext: hidden must be a positive int, got {hidden}")
        self.encoder = encoder
        self.context = context
        self.attributes = attributes
        self.weights = {a: float(weights.get(a, 1.0)) for a in attributes}
        self.hidden = int(hidden)
        self.target_fn = AttributeTargets(**dict(target_settings or {}))
        dim = int(encoder.dim)
        self.heads = nn.ModuleDict({a: AttributeHead(dim, self.hidden, self.target_fn.dims[a]) for a in attributes})
        self.cache: CachedFeatures | None = None
        self.stats: dict[str, Any] | None = None
        if context.manifest is not None:
            # Built here, not at the first step: the loop makes the pretext once the manifest is resolved.
            self.cache, self.stats = cached_targets(self.target_fn, context.manifest, cache_root,
                                                    progress=progress and context.progress,
                                                    device=cache_device or context.device)
            self.register_buffer("target_mean", torch.tensor(self.stats["mean"], dtype=torch.float32),
                                 persistent=False)
            self.register_buffer("target_std", torch.tensor(self.stats["std"], dtype=torch.float32),
                                 persistent=False)

    def config(self) -> dict:
        return {"attributes": list(self.attributes), "weights": dict(self.weights), "hidden": self.hidden,
                "targets": self.target_fn.config(), "target_cache": None if self.cache is None else self.cache.key,
                "standardisation": "per-batch" if self.stats is None else
                f"corpus {self.stats['split']} split ({self.stats['frames']} frames)"}

    # --- targets -----------------------------------------------------------------------------
    def targets(self, wav: torch.Tensor, lengths: torch.Tensor,
                info: CropInfo | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised targets [B, K, 97] and valid frame counts [B] of the crops (zero beyond)."""
        raw, frames = self.raw_targets(wav, lengths, info)
        return self.standardise(raw, frames), frames

    def raw_targets(self, wav: torch.Tensor, lengths: torch.Tensor,
                    info: CropInfo | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw targets of the crops: sliced from the cache with `info`, else computed from `wav`."""
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(max=wav.shape[-1])
        if info is None:
            with torch.no_grad():
                return self.target_fn(wav, lengths)
        if self.cache is None:
            raise ConfigError("attribute pretext: crops came with CropInfo but the pretext has no manifest "
                              "(context.manifest is None), so there are no cached targets to slice")
        starts = torch.as_tensor(info.starts).to(torch.long).cpu()
        if bool((starts % HOP != 0).any()):
            raise ValueError(f"attribute pretext: crop starts {starts.tolist()} are not multiples of {HOP}; the "
                             f"pretraining loop must honour crop_align={self.crop_align}")
        want = self.target_fn.output_lengths(lengths.cpu()).tolist()
        K = int(self.target_fn.output_lengths(torch.tensor(wav.shape[-1])))
        out = torch.zeros(len(want), K, self.target_fn.dim)
        frames = torch.zeros(len(want), dtype=torch.long)
        for b, (row, clip_id, start, n) in enumerate(zip(info.rows, info.clip_ids, starts.tolist(), want)):
            if self.cache.clip_ids[row] != str(clip_id):
                raise ValueError(f"attribute pretext: crop {b} says row {row} is clip {clip_id!r}, but the target "
                                 f"cache has {self.cache.clip_ids[row]!r} there (another manifest?)")
            piece = self.cache.get(row)[start // HOP:start // HOP + min(n, K)]
            frames[b] = piece.shape[0]
            out[b, :piece.shape[0]] = torch.from_numpy(piece.astype(np.float32))
        return out.to(wav.device), frames.to(wav.device)

    def standardise(self, raw: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """(raw - mean) / std with the corpus statistics, or those of the batch's valid frames."""
        if self.stats is not None:
            mean, std = self.target_mean.to(raw), self.target_std.to(raw)
        else:
            mean, std = _batch_stats(raw, frames, self.target_fn.f0_column, self.target_fn.voicing_column)
        z = (raw - mean) / std
        return z * AF.length_mask(frames, raw.shape[1]).unsqueeze(-1).to(z.dtype)

    # --- objective ---------------------------------------------------------------------------
    def forward(self, wav: torch.Tensor, lengths: torch.Tensor,
                info: CropInfo | None = None) -> dict[str, torch.Tensor]:
        if wav.dim() != 2:
            raise ValueError(f"wav must be [B, T], got shape {tuple(wav.shape)}")
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(max=wav.shape[-1])
        feats, out_len = self.encoder(wav, lengths)
        return self.loss_from_features(feats, out_len, wav, lengths, info)

    def loss_from_features(self, feats: torch.Tensor, out_len: torch.Tensor, wav: torch.Tensor,
                           lengths: torch.Tensor, info: CropInfo | None = None) -> dict[str, torch.Tensor]:
        """The objective on already computed 25 Hz features (for objectives that share them)."""
        target, t_len = self.targets(wav, lengths, info)
        common = min(feats.shape[1], target.shape[1])
        valid = AF.length_mask(torch.minimum(out_len.to(wav.device), t_len), common)  # [B, common]
        target, feats = target[:, :common], feats[:, :common]
        voiced = target[..., self.target_fn.voicing_column] >= VOICED  # voicing is stored unstandardised
        losses: dict[str, torch.Tensor] = {}
        for a in self.attributes:
            cols = self.target_fn.slices[a]
            pred = self.heads[a](feats)
            mask = valid.unsqueeze(-1).expand(-1, -1, pred.shape[-1])
            if a == "prosody":
                f0 = PROSODY.index("log_f0")
                mask = mask.clone()
                mask[..., f0] &= voiced
            m = mask.to(pred.dtype)
            losses[a] = ((pred - target[..., cols]).abs() * m).sum() / m.sum().clamp(min=1.0)
        total = sum(self.weights[a] * losses[a] for a in self.attributes)
        return {"loss": total, **{f"loss_{a}": v for a, v in losses.items()}}


def _batch_stats(raw: torch.Tensor, frames: torch.Tensor, f0c: int, vc: int,
                 eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean/std over the valid frames of a batch (log F0: voiced ones; voicing: 0/1)."""
    m = AF.length_mask(frames, raw.shape[1]).to(raw.dtype).unsqueeze(-1)  # [B, K, 1]
    count = m.sum().clamp(min=1.0)
    mean = (raw * m).sum(dim=(0, 1)) / count
    var = ((raw - mean).square() * m).sum(dim=(0, 1)) / count
    v = m[..., 0] * (raw[..., vc] >= VOICED).to(raw.dtype)
    nv = v.sum().clamp(min=1.0)
    f0_mean = (raw[..., f0c] * v).sum() / nv
    f0_var = ((raw[..., f0c] - f0_mean).square() * v).sum() / nv
    mean, var = mean.clone(), var.clone()
    mean[f0c], var[f0c] = f0_mean, f0_var
    mean[vc], var[vc] = 0.0, 1.0 - eps
    return mean, torch.sqrt(var + eps)


_PRETEXT_KWARGS = tuple(p for p in inspect.signature(AttributePretext.__init__).parameters
                        if p not in ("self", "encoder", "context"))


def attribute_pretext(encoder: nn.Module, context: PretextContext, **kwargs) -> AttributePretext:
    """Pretext factory for `av-audio` (register with `register_pretext("av-audio")`); keywords as AttributePretext."""
    unknown = sorted(set(kwargs) - set(_PRETEXT_KWARGS))
    if unknown:
        raise ConfigError(f"attribute pretext: unknown settings {unknown}; known: {', '.join(_PRETEXT_KWARGS)}")
    return AttributePretext(encoder, context, **kwargs)
