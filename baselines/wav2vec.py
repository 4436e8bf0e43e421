"""wav2vec 1.0 (Schneider et al. 2019), in plain torch, loadable from fairseq's published checkpoint.

Two registered encoders, both giving the context network's output `c` (512-d, 100 Hz):

- `wav2vec`: fairseq's base architecture (`base_wav2vec_architecture`): a 5-layer encoder
  (kernels 10,8,4,4,4; strides 5,4,2,2,2; 512 channels, no bias) and 9 context layers of kernel 3,
  without skip connections or log compression.
- `wav2vec_large`: the published `wav2vec_large.pt`, trained with fairseq's README command
  `--conv-feature-layers [(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2),
  (512, 1, 1), (512, 1, 1)]` (2 extra 1x1 layers), 12 context layers of kernels 2..13,
  `--skip-connections-agg --residual-scale 0.5 --log-compression --num-negatives 10`.

Every block is fairseq's: Conv1d, Dropout, GroupNorm(1 group, i.e. over channels AND time of each
utterance, eps 1e-5, affine, computed in float32 as fairseq's Fp32GroupNorm), ReLU. The encoder
convs have no padding and no bias; a context layer left-pads k-1 frames by *replicating* the first
frame (fairseq's default `agg_zero_pad=False`; the published model's printout shows
`ReplicationPad1d((k-1, 0))`) before a biased conv, so it is causal and keeps the length. With
skip connections a context layer outputs `(block(x) + x) * sqrt(residual_scale)` (fairseq stores
`math.sqrt(residual_scale)`: 0.5 gives 0.7071). Log compression is `log(|z| + 1)` after the encoder.

Module and parameter names are fairseq's `Wav2VecModel` ones (`feature_extractor.conv_layers.N.0`
conv, `.2` norm; `feature_aggregator.conv_layers.N.1` conv, `.3` norm; `feature_aggregator.
residual_proj.N` where in/out channels differ), so fairseq's `model` state dict loads as it is.
Its `wav2vec_predictions.*` (the prediction head) belongs to the pretext, not to the encoder: the
encoder drops those keys and loads the rest exactly.

Padding does not leak. Each conv's valid output frames only read valid inputs (no padding in the
encoder; causal context layers), so the one leak is the group norm, whose statistics span the time
axis: with padding in the batch they are computed over each utterance's valid frames only, which
is what a clip computed alone gets, and frames beyond each length are zeroed after every layer.
A batch without padding takes fairseq's exact F.group_norm path (bit-for-bit its numbers).

Frames: each conv gives floor((L - k) / s) + 1 frames (0 when L < k); for the published stacks
this is floor((T - 465) / 160) + 1 for T >= 465 samples (the 465-sample receptive field), so one
second gives 98 frames.

The pretext (`register_pretext("wav2vec")` and `("wav2vec_large")`) is fairseq's
Wav2VecPredictionsModel with its binary cross-entropy criterion; see `Wav2VecPretext`.
"""

from __future__ import annotations

import argparse
import ast
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from baselines.functional import length_mask
from bench.checkpoints import load_published_checkpoint
from bench.errors import ConfigError
from bench.pretrain.objective import Pretext, PretextContext, register_pretext
from bench.registry import Encoder, load_state_exactly, register_encoder

__all__ = ["Wav2Vec", "Wav2VecLarge", "Wav2VecPretext", "Wav2VecPredictions", "parse_conv_layers",
           "conv_output_lengths", "read_published_checkpoint", "PublishedCheckpoint", "BASE_ARCH",
           "LARGE_ARCH"]

SAMPLE_RATE = 16_000
# Bump when a change to this module changes the features: cached ones go stale.
FEATURE_VERSION = 1
GROUP_NORM_EPS = 1e-5  # nn.GroupNorm's default, which fairseq's Fp32GroupNorm keeps
HEAD_PREFIX = "wav2vec_predictions."

Layer = tuple[int, int, int]  # (channels, kernel, stride), fairseq's layer triples

BASE_ARCH: dict[str, Any] = {
    "conv_feature_layers": ((512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2)),
    "conv_aggregator_layers": ((512, 3, 1),) * 9,
    "skip_connections_agg": False,
    "residual_scale": 0.5,
    "log_compression": False,
    "agg_zero_pad": False,
    "no_conv_bias": False,
    "non_affine_group_norm": False,
    "activation": "relu",
    "dropout": 0.0,
    "dropout_features": 0.0,
    "dropout_agg": 0.0,
}
LARGE_ARCH: dict[str, Any] = {
    **BASE_ARCH,
    "conv_feature_layers": BASE_ARCH["conv_feature_layers"] + ((512, 1, 1), (512, 1, 1)),
    "conv_aggregator_layers": tuple((512, k, 1) for k in range(2, 14)),
    "skip_connections_agg": True,
    "log_compression": True,
}
PRESETS = {"wav2vec": BASE_ARCH, "wav2vec_large": LARGE_ARCH}
# The fields that decide the weights' shapes and the features; dropout only acts in training.
ARCH_KEYS = ("conv_feature_layers", "conv_aggregator_layers", "skip_connections_agg", "residual_scale",
             "log_compression", "agg_zero_pad", "no_conv_bias", "non_affine_group_norm", "activation")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}

# Defaults of a fairseq argparse `args` Namespace lacking a field: fairseq's
# `base_wav2vec_architecture` (the values s3prl's wav2vec expert fills in before building).
_NAMESPACE_DEFAULTS: dict[str, Any] = {
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 8, 4)] + [(512, 4, 2)] * 3",
    "conv_aggregator_layers": "[(512, 3, 1)] * 9",
    "prediction_steps": 12, "num_negatives": 1, "sample_distance": None, "cross_sample_negatives": 0,
    "dropout": 0.0, "dropout_features": 0.0, "dropout_agg": 0.0, "aggregator": "cnn",
    "skip_connections_feat": False, "skip_connections_agg": False, "residual_scale": 0.5,
    "no_conv_bias": False, "agg_zero_pad": False, "log_compression": False, "balanced_classes": False,
    "infonce": False, "project_features": "none", "non_affine_group_norm": False, "offset": "auto",
    "activation": "relu", "vq_type": "none",
}
# Defaults of a hydra-era model config (fairseq's / s3prl's `Wav2VecConfig` dataclass), used for
# s3prl's converted checkpoints, whose `model_cfg` is that config as a plain dict.
_DATACLASS_DEFAULTS: dict[str, Any] = {
    **_NAMESPACE_DEFAULTS,
    "conv_feature_layers": "[(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2), "
                           "(512, 1, 1), (512, 1, 1), (512, 1, 1)]",
    "conv_aggregator_layers": "[" + ", ".join(f"(512, {k}, 1)" for k in range(2, 14)) + "]",
    "num_negatives": 10, "skip_connections_agg": True, "log_compression": True,
}


# ----------------------------------------------------------------------------------------------
# Architecture helpers


def parse_conv_layers(spec: str | Sequence[Sequence[int]], field: str = "conv layers") -> tuple[Layer, ...]:
    """fairseq's layer spec -> ((channels, kernel, stride), ...), without eval().

    fairseq evals strings such as "[(512, 10, 5)] + [(512, 4, 2)] * 3"; this accepts exactly that
    language (lists and tuples of integers, list + list, list * int) and nothing else.
    """
    if isinstance(spec, str):
        try:
            tree = ast.parse(spec.strip(), mode="eval").body
            value = _literal_layers(tree)
        except (SyntaxError, ValueError) as exc:
            raise ConfigError(f"{field}: cannot read {spec!r} ({exc}); give fairseq's form, e.g. "
                              "'[(512, 10, 5), (512, 8, 4)]' or '[(512, 3, 1)] * 9'.") from exc
    else:
        value = spec
    try:
        layers = tuple((int(c), int(k), int(s)) for c, k, s in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field}: expected a list of (channels, kernel, stride) triples, got {spec!r}") from exc
    if not layers or any(v <= 0 for layer in layers for v in layer):
        raise ConfigError(f"{field}: need at least one layer and positive channels, kernels and strides, "
                          f"got {list(layers)}")
    return layers


def _literal_layers(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal_layers(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _literal_layers(node.left), _literal_layers(node.right)
        if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
            return left + right
        if isinstance(node.op, ast.Mult) and isinstance(left, list) and isinstance(right, int):
            return left * right
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, list):
            return right * left
    raise ValueError(f"unsupported expression {ast.dump(node)[:60]}")


def conv_output_lengths(lengths: torch.Tensor, layers: Sequence[Layer]) -> torch.Tensor:
    """Valid frames after unpadded convs: floor((L - k) / s) + 1 per layer, 0 once L < k."""
    out = torch.as_tensor(lengths, dtype=torch.long)
    for _, k, s in layers:
        out = torch.where(out >= k, torch.div(out - k, s, rounding_mode="floor") + 1, torch.zeros_like(out))
    return out


def receptive_field(layers: Sequence[Layer]) -> tuple[int, int]:
    """(receptive field, hop) in samples of the encoder's last layer."""
    rf, hop = 1, 1
    for _, k, s in layers:
        rf += (k - 1) * hop
        hop *= s
    return rf, hop


def auto_offset(layers: Sequence[Layer]) -> int:
    """fairseq's `offset="auto"`: ceil(receptive field / hop), the first step whose target z no
    longer overlaps the receptive field of the context frame predicting it (3 for both models)."""
    rf, hop = receptive_field(layers)
    return math.ceil(rf / hop)


def _normalised_arch(arch: Mapping[str, Any]) -> dict[str, Any]:
    """The ARCH_KEYS of `arch`, typed, with residual_scale dropped where no skip uses it."""
    out = {
        "conv_feature_layers": parse_conv_layers(arch["conv_feature_layers"], "conv_feature_layers"),
        "conv_aggregator_layers": parse_conv_layers(arch["conv_aggregator_layers"], "conv_aggregator_layers"),
        "skip_connections_agg": bool(arch["skip_connections_agg"]),
        "residual_scale": float(arch["residual_scale"]) if arch["skip_connections_agg"] else None,
        "log_compression": bool(arch["log_compression"]),
        "agg_zero_pad": bool(arch["agg_zero_pad"]),
        "no_conv_bias": bool(arch["no_conv_bias"]),
        "non_affine_group_norm": bool(arch["non_affine_group_norm"]),
        "activation": str(arch["activation"]),
    }
    return out


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


# ----------------------------------------------------------------------------------------------
# The networks (fairseq's module layout)


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


@register_encoder("wav2vec")
class Wav2Vec(Encoder):
    """wav2vec 1.0; features are the context network output c [B, T', 512] at 100 Hz.

    Every keyword defaults to the class preset (fairseq's base architecture here, the published
    large model in `Wav2VecLarge`); pass any of them to change the architecture, e.g. small
    channels for tests. Layer specs take fairseq's strings or lists of (channels, kernel, stride).
    """

    name = "wav2vec"
    sample_rate = SAMPLE_RATE
    frame_rate = 100.0
    dim = 512
    needs_pretraining = True
    trainable = True
    PRESET: Mapping[str, Any] = BASE_ARCH

    def __init__(self, conv_feature_layers: str | Sequence[Sequence[int]] | None = None,
                 conv_aggregator_layers: str | Sequence[Sequence[int]] | None = None,
                 skip_connections_agg: bool | None = None, residual_scale: float | None = None,
                 log_compression: bool | None = None, agg_zero_pad: bool | None = None,
                 no_conv_bias: bool | None = None, non_affine_group_norm: bool | None = None,
                 activation: str | None = None, dropout: float | None = None,
                 dropout_features: float | None = None, dropout_agg: float | None = None) -> None:
        params = dict(locals())
        super().__init__()
        given = {k: v for k, v in params.items() if k in self.PRESET and v is not None}
        arch = {**self.PRESET, **given}
        if arch["activation"] not in ACTIVATIONS:
            raise ConfigError(f"{self.name}: unknown activation {arch['activation']!r}; use one of "
                              f"{', '.join(ACTIVATIONS)}")
        if not float(arch["residual_scale"]) > 0:
            raise ConfigError(f"{self.name}: residual_scale must be positive, got {arch['residual_scale']}")
        for key in ("dropout", "dropout_features", "dropout_agg"):
            if not 0.0 <= float(arch[key]) < 1.0:
                raise ConfigError(f"{self.name}: {key} must be in [0, 1), got {arch[key]}")
        self.arch = {**_normalised_arch(arch), "residual_scale": float(arch["residual_scale"]),
                     "dropout": float(arch["dropout"]), "dropout_features": float(arch["dropout_features"]),
                     "dropout_agg": float(arch["dropout_agg"])}
        feat, agg = self.arch["conv_feature_layers"], self.arch["conv_aggregator_layers"]
        activation_module = ACTIVATIONS[self.arch["activation"]]()  # shared, as in fairseq (no weights)
        self.feature_extractor = ConvFeatureExtractor(feat, self.arch["log_compression"],
                                                      self.arch["non_affine_group_norm"], activation_module)
        self.embed = feat[-1][0]
        self.feature_aggregator = ConvAggregator(
            agg, self.embed, dropout=self.arch["dropout"], skip_connections=self.arch["skip_connections_agg"],
            residual_scale=self.arch["residual_scale"], non_affine_group_norm=self.arch["non_affine_group_norm"],
            conv_bias=not self.arch["no_conv_bias"], zero_pad=self.arch["agg_zero_pad"],
            activation=activation_module)
        self.dropout_feats = nn.Dropout(p=self.arch["dropout_features"])
        self.dropout_agg = nn.Dropout(p=self.arch["dropout_agg"])  # applied by the pretext, as fairseq
        self.dim = agg[-1][0]
        self.receptive_field, self.hop = receptive_field(feat)
        self.frame_rate = self.sample_rate / self.hop

    # -- features --------------------------------------------------------------------------

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return conv_output_lengths(lengths, self.arch["conv_feature_layers"])

    def encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z [B, C, T'] after log compression, c [B, D, T'], valid frames [B]); zeros beyond them."""
        if wav.dim() != 2:
            raise ValueError(f"wav must be [B, T], got shape {tuple(wav.shape)}")
        batch, samples = wav.shape
        weight = self.feature_extractor.conv_layers[0][0].weight
        wav = wav.to(weight.dtype)
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(0, samples)
        frames = self.output_lengths(lengths)
        n_out = int(self.output_lengths(torch.tensor(samples)))
        if n_out == 0:  # shorter than the receptive field: no frame at all
            return (wav.new_zeros(batch, self.embed, 0), wav.new_zeros(batch, self.dim, 0), frames)
        padded = bool((lengths < samples).any())
        if padded:
            wav = wav * length_mask(lengths, samples).to(wav.dtype)
        z = self.feature_extractor(wav, lengths if padded else None)
        c = self.feature_aggregator(self.dropout_feats(z), frames if padded else None)
        return z, c, frames

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, c, frames = self.encode(wav, lengths)
        return c.transpose(1, 2).contiguous(), frames

    def architecture(self) -> dict[str, Any]:
        """The fields that decide the weights and the features, normalised for comparison."""
        return _normalised_arch(self.arch)

    def config(self) -> dict:
        arch = self.architecture()
        arch["conv_feature_layers"] = [list(x) for x in arch["conv_feature_layers"]]
        arch["conv_aggregator_layers"] = [list(x) for x in arch["conv_aggregator_layers"]]
        return {**super().config(), "version": FEATURE_VERSION, "sample_rate": self.sample_rate,
                "representation": "c", **arch, "group_norm_eps": GROUP_NORM_EPS}

    # -- checkpoints ------------------------------------------------------------------------

    def load_checkpoint(self, path: str | Path) -> None:
        """Load fairseq's `wav2vec_large.pt` format, s3prl's converted format, or avbench's own.

        fairseq: {"args": argparse.Namespace, "model": state dict, ...}; s3prl (its
        upstream/wav2vec/convert.py): {"task_cfg": dict, "model_cfg": dict, "model_weight": state
        dict}. The args must describe this encoder's architecture (else the error says which
        registered encoder they do describe); `wav2vec_predictions.*` is dropped, and every other
        key must fit exactly. The checkpoint's dropout settings act only in training and are not
        adopted. Anything else goes to the base class (avbench's format).
        """
        ckpt = read_published_checkpoint(path)
        if ckpt is None:
            super().load_checkpoint(path)
            return
        self.load_published(ckpt)

    def load_published(self, ckpt: PublishedCheckpoint) -> None:
        self.check_architecture(ckpt)
        state = {k: v for k, v in ckpt.state.items() if not k.startswith(HEAD_PREFIX)}
        load_state_exactly(self, state, source=ckpt.path,
                           hint=f"({ckpt.kind} format; the prediction head {HEAD_PREFIX}* is dropped on purpose: "
                                "it belongs to the pretext.)")

    def check_architecture(self, ckpt: PublishedCheckpoint) -> None:
        mine, theirs = self.architecture(), ckpt.arch
        diffs = [f"{k}: checkpoint {_show(theirs[k])} vs encoder {_show(mine[k])}"
                 for k in ARCH_KEYS if theirs[k] != mine[k]]
        if not diffs:
            return
        matches = [name for name, preset in PRESETS.items() if _normalised_arch(preset) == theirs]
        if matches:
            hint = (f"The checkpoint is the {matches[0]!r} architecture: use encoder {matches[0]!r} "
                    f"(e.g. '{matches[0]}@{ckpt.path}').")
        else:
            hint = ("No registered preset has this architecture: build 'wav2vec' with keyword arguments "
                    "matching the checkpoint's args.")
        raise ConfigError(f"{ckpt.path}: the {ckpt.kind} checkpoint's args describe another wav2vec "
                          f"architecture than encoder {self.name!r}: {'; '.join(diffs)}. {hint}")


@register_encoder("wav2vec_large")
class Wav2VecLarge(Wav2Vec):
    """The published wav2vec large (`wav2vec_large.pt`): 7 encoder layers (two 1x1), 12 context
    layers of kernels 2..13 with skip connections scaled by sqrt(0.5), log compression."""

    name = "wav2vec_large"
    PRESET = LARGE_ARCH


def _show(value: Any) -> str:
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return "[" + ", ".join(str(x) for x in value) + "]"
    return repr(value)


# ----------------------------------------------------------------------------------------------
# Published checkpoint formats


@dataclass
class PublishedCheckpoint:
    """A fairseq or s3prl wav2vec checkpoint, read safely and described."""

    path: Path
    kind: str                   # "fairseq" or "s3prl"
    arch: dict[str, Any]        # normalised ARCH_KEYS (comparable to Wav2Vec.architecture())
    objective: dict[str, Any]   # prediction_steps, num_negatives, offset, balanced_classes, infonce
    dropout: dict[str, float]   # dropout, dropout_features, dropout_agg (training only; not applied)
    state: dict[str, torch.Tensor]


_UNSUPPORTED = {  # field -> (allowed values, why)
    "skip_connections_feat": ({False}, "feature-extractor skip connections subsample the residual by the "
                                       "padded length in fairseq, so they cannot be padding-invariant"),
    "aggregator": ({"cnn"}, "only the convolutional context network is implemented (not the GRU one)"),
    "vq_type": ({"none", None}, "this is a vq-wav2vec checkpoint; only wav2vec 1.0 is implemented"),
    "project_features": ({"none", None}, "projected targets (project_features) are not implemented"),
}


def read_published_checkpoint(path: str | Path) -> PublishedCheckpoint | None:
    """Read a fairseq/s3prl wav2vec checkpoint; None when the file is in neither format."""
    path = Path(path)
    raw = load_published_checkpoint(path, "a wav2vec checkpoint")
    if not isinstance(raw, Mapping):
        return None
    if "model_weight" in raw and "model_cfg" in raw:
        cfg, state, kind = raw["model_cfg"], raw["model_weight"], "s3prl"
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"{path}: s3prl checkpoint's model_cfg is a {type(cfg).__name__}, expected a dict.")
        get, name = (lambda k: cfg.get(k, _DATACLASS_DEFAULTS.get(k))), cfg.get("_name", "wav2vec")
    elif "model" in raw and "args" in raw:
        args, state, kind = raw["args"], raw["model"], "fairseq"
        if not isinstance(args, argparse.Namespace):
            hydra = " (a hydra-era fairseq checkpoint keeps its config under 'cfg': convert it with s3prl)" \
                if args is None and "cfg" in raw else ""
            raise ConfigError(f"{path}: fairseq checkpoint's 'args' is {type(args).__name__}, expected an "
                              f"argparse.Namespace{hydra}.")
        get, name = (lambda k: getattr(args, k, _NAMESPACE_DEFAULTS.get(k))), getattr(args, "arch", "wav2vec")
    else:
        return None
    if name != "wav2vec":
        raise ConfigError(f"{path}: a {kind} checkpoint of model {name!r}, not wav2vec 1.0 ('wav2vec').")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: the {kind} checkpoint's state dict is not a mapping of tensors.")
    for field, (allowed, why) in _UNSUPPORTED.items():
        if get(field) not in allowed:
            raise ConfigError(f"{path}: {field}={get(field)!r} is not supported: {why}.")
    try:
        arch = _normalised_arch({k: get(k) for k in ARCH_KEYS})
    except ConfigError as exc:
        raise ConfigError(f"{path}: bad architecture in the {kind} checkpoint's args: {exc}") from exc
    objective = {k: get(k) for k in ("prediction_steps", "num_negatives", "offset", "balanced_classes", "infonce")}
    dropout = {k: float(get(k)) for k in ("dropout", "dropout_features", "dropout_agg")}
    return PublishedCheckpoint(path=path, kind=kind, arch=arch, objective=objective, dropout=dropout,
                               state=dict(state))


# ----------------------------------------------------------------------------------------------
# The pretext: fairseq's Wav2VecPredictionsModel + binary cross-entropy criterion


class Wav2VecPredictions(nn.Module):
    """The step projections: one ConvTranspose2d(D, C, (1, steps)) maps c_t to a prediction for
    each step (fairseq's `wav2vec_predictions.project_to_steps`, same parameter shapes)."""

    def __init__(self, in_dim: int, out_dim: int, prediction_steps: int, dropout: float) -> None:
        super().__init__()
        self.project_to_steps = nn.ConvTranspose2d(in_dim, out_dim, (1, prediction_steps))
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """c [B, D, T] -> predictions [B, C, T, steps]."""
        return self.dropout(self.project_to_steps(c.unsqueeze(-1)))


class Wav2VecPretext(Pretext):
    """wav2vec's objective: tell the true future z from distractors, k steps ahead, with BCE.

    As fairseq (Wav2VecPredictionsModel + its wav2vec/binary_cross_entropy criterion):
    - step s (0-based) of c_t predicts z_{t + offset + s}; offset="auto" is ceil(receptive field /
      hop) = 3 for the published encoders, the first frame whose samples c_t has not seen; steps
      run s = 0..prediction_steps-1 (12);
    - logits are dot products of the prediction with z (z is the target, not detached, after log
      compression, without the feature dropout);
    - num_negatives (10, the paper's K) distractors per target position, drawn uniformly from the
      same utterance's frames other than the target's, and shared by all steps predicting it;
    - loss = sum of BCE-with-logits over positives (label 1) and negatives (label 0), divided by
      the number of positives (fairseq's sample_size). With balanced_classes, negatives weigh
      1/num_negatives (fairseq's option, off for the published models).
    Unlike fairseq, batches may be padded: targets and negatives come from each utterance's valid
    frames only. "acc" is the fraction of (context, step) pairs whose positive outscores all its
    negatives.
    """

    def __init__(self, encoder: Wav2Vec, context: PretextContext, prediction_steps: int = 12,
                 num_negatives: int = 10, offset: int | str = "auto", balanced_classes: bool = False) -> None:
        super().__init__()
        if prediction_steps < 1 or num_negatives < 1:
            raise ConfigError(f"wav2vec pretext: prediction_steps and num_negatives must be >= 1, got "
                              f"{prediction_steps}, {num_negatives}")
        if offset == "auto":
            offset = auto_offset(encoder.arch["conv_feature_layers"])
        try:
            offset = int(offset)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"wav2vec pretext: offset must be 'auto' or an integer, got {offset!r}") from exc
        if offset < 1:
            raise ConfigError(f"wav2vec pretext: offset must be >= 1, got {offset}")
        self.encoder = encoder
        self.wav2vec_predictions = Wav2VecPredictions(encoder.dim, encoder.embed, prediction_steps,
                                                      encoder.arch["dropout"])
        self.prediction_steps = prediction_steps
        self.num_negatives = num_negatives
        self.offset = offset
        self.balanced_classes = bool(balanced_classes)
        self.generator = context.generator

    def config(self) -> dict:
        return {"objective": "wav2vec-bce", "prediction_steps": self.prediction_steps,
                "num_negatives": self.num_negatives, "offset": self.offset,
                "balanced_classes": self.balanced_classes, "negatives": "same utterance, valid frames, uniform",
                "normalisation": "per positive"}

    def sample_negatives(self, frames: torch.Tensor, max_frames: int) -> torch.Tensor:
        """Indices [B, max_frames, N]: for target position j of row b, uniform over the valid
        frames 0..frames[b]-1 other than j (fairseq's draw-from-high-1-and-skip)."""
        frames = frames.cpu()
        others = (frames - 1).clamp(min=1).to(torch.float64).reshape(-1, 1, 1)
        u = torch.rand((len(frames), max_frames, self.num_negatives), generator=self.generator, dtype=torch.float64)
        idx = torch.minimum((u * others).floor(), others - 1).to(torch.long)
        idx = idx + (idx >= torch.arange(max_frames).reshape(1, -1, 1)).to(torch.long)
        return idx.clamp(max=max(max_frames - 1, 0))

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor, info=None) -> dict[str, torch.Tensor]:
        z, c, frames = self.encoder.encode(wav, lengths)
        batch, _, n_frames = z.shape
        if n_frames <= self.offset or int(frames.max()) <= self.offset:
            return self._nothing_to_predict(z)
        x = self.wav2vec_predictions(self.encoder.dropout_agg(c))  # [B, C, T, S]
        negs_idx = self.sample_negatives(frames, n_frames).to(z.device)
        zt = z.transpose(1, 2)  # [B, T, C]
        negs = zt[torch.arange(batch, device=z.device).reshape(-1, 1, 1), negs_idx]  # [B, T, N, C]
        frames = frames.to(z.device)
        neg_weight = 1.0 / self.num_negatives if self.balanced_classes else 1.0
        total = x.new_zeros(())
        n_pos = x.new_zeros(())
        n_correct = x.new_zeros(())
        for step in range(min(self.prediction_steps, n_frames - self.offset)):
            off = self.offset + step
            pred = x[:, :, : n_frames - off, step]                                   # [B, C, T-off]
            pos = (pred * z[:, :, off:]).sum(dim=1)                                  # [B, T-off]
            neg = torch.einsum("bct,btnc->btn", pred, negs[:, off:])                 # [B, T-off, N]
            valid = (torch.arange(n_frames - off, device=z.device).reshape(1, -1) + off
                     < frames.reshape(-1, 1)).to(x.dtype)                            # target is a valid frame
            loss = F.softplus(-pos) + neg_weight * F.softplus(neg).sum(dim=-1)       # BCE: label 1 / label 0
            total = total + (loss * valid).sum()
            n_pos = n_pos + valid.sum()
            with torch.no_grad():
                n_correct = n_correct + ((pos > neg.max(dim=-1).values).to(x.dtype) * valid).sum()
        if n_pos.item() == 0:
            return self._nothing_to_predict(z)
        return {"loss": total / n_pos, "acc": (n_correct / n_pos).detach()}

    def _nothing_to_predict(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every clip too short for a target: a zero loss that still backpropagates (zero grads)."""
        zero = sum(p.reshape(-1)[0] for p in self.parameters()) * 0.0
        return {"loss": zero, "acc": z.new_zeros(())}

    def load_published(self, path: str | Path) -> None:
        """Load a fairseq/s3prl checkpoint into the encoder AND the prediction head."""
        ckpt = read_published_checkpoint(path)
        if ckpt is None:
            raise ConfigError(f"{path}: not a fairseq or s3prl wav2vec checkpoint.")
        self.encoder.load_published(ckpt)
        head = {k[len(HEAD_PREFIX):]: v for k, v in ckpt.state.items() if k.startswith(HEAD_PREFIX)}
        load_state_exactly(self.wav2vec_predictions, head, source=ckpt.path,
                           hint=f"(the {HEAD_PREFIX}* keys; prediction_steps of the checkpoint: "
                                f"{ckpt.objective['prediction_steps']})")


@register_pretext("wav2vec")
@register_pretext("wav2vec_large")
def wav2vec_pretext(encoder: Encoder, context: PretextContext, prediction_steps: int = 12,
                    num_negatives: int = 10, offset: int | str = "auto",
                    balanced_classes: bool = False) -> Wav2VecPretext:
    if not isinstance(encoder, Wav2Vec):
        raise ConfigError(f"the wav2vec pretext needs a wav2vec encoder, got {type(encoder).__name__}")
    return Wav2VecPretext(encoder, context, prediction_steps=prediction_steps, num_negatives=num_negatives,
                          offset=offset, balanced_classes=balanced_classes)
