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

Layout: this module holds the registered encoders and registers their pretext; the presets and
layer-spec arithmetic are in baselines.wav2vec_arch, the networks in baselines.wav2vec_layers, the
published checkpoint formats in baselines.wav2vec_checkpoint and the pretext in
baselines.wav2vec_pretext. The names in `__all__` stay importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from baselines.functional import length_mask
from baselines.wav2vec_arch import (ACTIVATIONS, ARCH_KEYS, BASE_ARCH, LARGE_ARCH, PRESETS, _normalised_arch,
                                    conv_output_lengths, parse_conv_layers, receptive_field)
from baselines.wav2vec_checkpoint import HEAD_PREFIX, PublishedCheckpoint, read_published_checkpoint
from baselines.wav2vec_layers import GROUP_NORM_EPS, ConvAggregator, ConvFeatureExtractor
from baselines.wav2vec_pretext import Wav2VecPredictions, Wav2VecPretext
from bench.errors import ConfigError
from bench.pretrain.objective import PretextContext, register_pretext
from bench.registry import Encoder, load_state_exactly, register_encoder

__all__ = ["Wav2Vec", "Wav2VecLarge", "Wav2VecPretext", "Wav2VecPredictions", "parse_conv_layers",
           "conv_output_lengths", "read_published_checkpoint", "PublishedCheckpoint", "BASE_ARCH",
           "LARGE_ARCH"]

SAMPLE_RATE = 16_000
# Bump when a change to this module, baselines.wav2vec_arch or baselines.wav2vec_layers changes the
# features: cached ones go stale.
FEATURE_VERSION = 1


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
        # Unpadded convs: frame 0 sees samples [0, receptive_field). (The aggregator adds past context.)
        self.first_frame_centre_s = (self.receptive_field - 1) / 2 / self.sample_rate

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


@register_pretext("wav2vec")
@register_pretext("wav2vec_large")
def wav2vec_pretext(encoder: Encoder, context: PretextContext, prediction_steps: int = 12,
                    num_negatives: int = 10, offset: int | str = "auto",
                    balanced_classes: bool = False) -> Wav2VecPretext:
    if not isinstance(encoder, Wav2Vec):
        raise ConfigError(f"the wav2vec pretext needs a wav2vec encoder, got {type(encoder).__name__}")
    return Wav2VecPretext(encoder, context, prediction_steps=prediction_steps, num_negatives=num_negatives,
                          offset=offset, balanced_classes=balanced_classes)
