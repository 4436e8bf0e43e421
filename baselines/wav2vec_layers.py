"""The wav2vec 1.0 networks in fairseq's module layout: the feature extractor and the context network.

Module and parameter names are fairseq's, so its state dict loads as it is, and both networks take
valid lengths so that padding does not leak (the group norm's statistics over valid frames only).
They are apart from baselines.wav2vec, which builds them from an architecture into the registered
encoders and loads checkpoints; the facts they follow are in baselines.wav2vec's docstring.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from baselines.functional import length_mask
from baselines.wav2vec_arch import Layer, conv_output_lengths
from bench.errors import ConfigError

GROUP_NORM_EPS = 1e-5  # nn.GroupNorm's default, which fairseq's Fp32GroupNorm keeps


def _group_norm(norm: nn.GroupNorm, x: torch.Tensor, frames: torch.Tensor | None) -> torch.Tensor:
    """Single-group norm over channels and time in float32; valid frames only when `frames` given.

    frames=None is fairseq's Fp32GroupNorm exactly. With frames, the statistics of row b are those
    of x[b, :, :frames[b]] (what the clip alone gets); padded positions come out as the bias.
    """
    xf = x.float()
    weight = norm.weight.float() if norm.weight is not None else None
    bias = norm.bias.float() if norm.bias is not None else None
    if frames is None:
        return F.group_norm(xf, norm.num_groups, weight, bias, norm.eps).type_as(x)
    mask = length_mask(frames, x.shape[-1]).unsqueeze(1).to(xf.dtype)
    count = (frames.clamp(min=1) * x.shape[1]).to(xf.dtype).reshape(-1, 1, 1)
    mean = (xf * mask).sum(dim=(1, 2), keepdim=True) / count
    centred = (xf - mean) * mask
    var = centred.square().sum(dim=(1, 2), keepdim=True) / count
    y = centred * torch.rsqrt(var + norm.eps)
    if weight is not None:
        y = y * weight.reshape(1, -1, 1) + bias.reshape(1, -1, 1)
    return y.type_as(x)


class ConvFeatureExtractor(nn.Module):
    """fairseq's ConvFeatureExtractionModel: waveform [B, T] -> z [B, C, T'] (feature-level skip
    connections, which fairseq subsamples by the padded length, are not supported)."""

    def __init__(self, layers: Sequence[Layer], log_compression: bool, non_affine_group_norm: bool,
                 activation: nn.Module) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList()
        in_dim = 1
        for dim, k, stride in layers:
            # fairseq builds this extractor with dropout=0.0 whatever the args say.
            self.conv_layers.append(nn.Sequential(
                nn.Conv1d(in_dim, dim, k, stride=stride, bias=False),
                nn.Dropout(p=0.0),
                nn.GroupNorm(1, dim, eps=GROUP_NORM_EPS, affine=not non_affine_group_norm),
                activation,
            ))
            in_dim = dim
        self.log_compression = log_compression

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = wav.unsqueeze(1)
        for conv, dropout, norm, act in self.conv_layers:
            x = dropout(conv(x))
            if lengths is not None:
                lengths = conv_output_lengths(lengths, [(0, conv.kernel_size[0], conv.stride[0])])
            x = act(_group_norm(norm, x, lengths))
            if lengths is not None:
                x = x * length_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)
        if self.log_compression:
            x = x.abs()
            x = x + 1
            x = x.log()
        return x


class ConvAggregator(nn.Module):
    """fairseq's ConvAggegator (sic): causal context convs over z, optional scaled skips."""

    def __init__(self, layers: Sequence[Layer], embed: int, dropout: float, skip_connections: bool,
                 residual_scale: float, non_affine_group_norm: bool, conv_bias: bool, zero_pad: bool,
                 activation: nn.Module) -> None:
        super().__init__()
        blocks = []
        self.residual_proj = nn.ModuleList()
        in_dim = embed
        for dim, k, stride in layers:
            if stride != 1:
                raise ConfigError(f"conv_aggregator_layers: context layers must have stride 1 (a causal "
                                  f"conv that keeps the frame rate), got {(dim, k, stride)}")
            # A None entry keeps fairseq's indices (and so its key names) for later projections.
            self.residual_proj.append(nn.Conv1d(in_dim, dim, 1, bias=False)
                                      if skip_connections and in_dim != dim else None)
            pad = nn.ConstantPad1d((k - 1, 0), 0.0) if zero_pad else nn.ReplicationPad1d((k - 1, 0))
            blocks.append(nn.Sequential(
                pad,
                nn.Conv1d(in_dim, dim, k, stride=1, bias=conv_bias),
                nn.Dropout(p=dropout),
                nn.GroupNorm(1, dim, eps=GROUP_NORM_EPS, affine=not non_affine_group_norm),
                activation,
            ))
            in_dim = dim
        self.conv_layers = nn.Sequential(*blocks)
        self.skip_connections = skip_connections
        self.residual_scale = math.sqrt(residual_scale)  # fairseq scales by sqrt(residual_scale)

    def forward(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        mask = None if frames is None else length_mask(frames, x.shape[-1]).unsqueeze(1).to(x.dtype)
        for rproj, (pad, conv, dropout, norm, act) in zip(self.residual_proj, self.conv_layers):
            residual = x
            x = act(_group_norm(norm, dropout(conv(pad(x))), frames))
            if self.skip_connections:
                if rproj is not None:
                    residual = rproj(residual)
                x = (x + residual) * self.residual_scale
            if mask is not None:
                x = x * mask
        return x
