"""`logmel-l1`: the earlier visual self-supervision (Shukla et al., ICASSP 2020, "L1"), whose audio
encoder reads log-mel spectrograms, pretrained with the same speech-driven mouth generation
(encoders/visual.py) as the proposed raw-waveform encoder, for the paper's comparison.

Audio encoder (our sizes; the ICASSP paper's exact layers are not known to us):
  80-band log-mel at 100 Hz, per-utterance CMVN: the `logmel` baseline's framing exactly
      (baselines.spectral.LogMel: 25 ms Hann windows every 10 ms, 512-point FFT, centred, so a
      clip of n samples gives 1 + n // 160 frames, frame j centred on sample 160 j)
  Conv1d 80 -> 256, kernel 4, stride 2, padding 1, BatchNorm, ReLU     (50 Hz)
  Conv1d 256 -> 512, kernel 4, stride 2, padding 1, BatchNorm, ReLU    (25 Hz)
  Conv1d 512 -> 512, kernel 3, stride 1, padding 1, BatchNorm, ReLU    (25 Hz, a little context)
That is 512-d at 25 Hz with 1,395,200 parameters (the 1D ResNet18 has 3.85 M). Output frame k is
computed from log-mel frames 4k - 7 .. 4k + 10 (4k - 3 .. 4k + 6 without the context layer),
centred on log-mel frame 4k + 1.5, i.e. on sample 640 k + 240: inside the 40 ms piece
[640 k, 640 k + 640) that the 1D ResNet's frame k summarises, so frame k of either encoder is video
frame k of the crop.

Frame count: n // 640, the whole 40 ms pieces of the clip (1 s -> 25, LRW's 1.16 s -> 29). The
convolution arithmetic gives floor((1 + n // 160) / 4) frames, which is n // 640 or one more; the
extra frame, which would lean on a last piece shorter than 40 ms, is dropped. (The 1D ResNet keeps
a last partial piece when it holds at least 612 samples, so at such lengths the two encoders differ
by that one frame; for 1 s crops and LRW clips they agree.)

Padding never leaks: LogMel zeroes samples beyond a clip's length before its STFT, takes CMVN
statistics over valid frames and zeroes the rest; each convolution's input is zeroed beyond the
valid length at its resolution (floor(L / 2), floor(L / 4) for L log-mel frames), which is exactly
the zero padding that the clip computed alone sees. (In train mode BatchNorm's batch statistics see
padded positions, as in the ResNet; at evaluation it uses running statistics.)
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from baselines.functional import length_mask
from baselines.spectral import LogMel
from bench.errors import ConfigError
from bench.pretrain.objective import ObjectiveNeeds, PretextContext, register_pretext
from bench.registry import Encoder, register_encoder
from encoders.visual import VisualPretext

HOP = 640  # samples per output frame: one 25 fps video frame at 16 kHz
MEL_HOP = 160
# Bump when a change here changes the features of given weights: cached features go stale.
FEATURE_VERSION = 1


def _masked(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return x * length_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)


@register_encoder("logmel-l1")
class LogMelL1Encoder(Encoder):
    """80-d log-mel (100 Hz) -> strided 1D convs -> 512-d at 25 Hz."""

    name = "logmel-l1"
    sample_rate = 16_000
    frame_rate = 25.0
    first_frame_centre_s = HOP / 2 / 16_000  # frame k summarises samples [HOP k, HOP (k + 1))
    dim = 512
    needs_pretraining = True
    trainable = True

    def __init__(self, n_mels: int = 80, channels: Sequence[int] = (256, 512), context_layers: int = 1) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 2 or any(c <= 0 for c in channels):
            raise ConfigError(f"logmel-l1: channels must be 2 positive ints (the two stride-2 layers), "
                              f"got {list(channels)}")
        if context_layers < 0:
            raise ConfigError(f"logmel-l1: context_layers must be >= 0, got {context_layers}")
        self.n_mels, self.channels, self.context_layers = int(n_mels), channels, int(context_layers)
        self.logmel = LogMel(n_mels=self.n_mels, normalize=True)  # no weights: fbank is a non-persistent buffer
        ins = (self.n_mels, channels[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv1d(i, o, 4, stride=2, padding=1, bias=False), nn.BatchNorm1d(o), nn.ReLU(inplace=True))
            for i, o in zip(ins, channels))
        self.context = nn.ModuleList(
            nn.Sequential(nn.Conv1d(channels[1], channels[1], 3, padding=1, bias=False), nn.BatchNorm1d(channels[1]),
                          nn.ReLU(inplace=True))
            for _ in range(self.context_layers))
        self.dim = channels[1]
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(torch.as_tensor(lengths).to(torch.long), HOP, rounding_mode="floor")

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if wav.dim() != 2:
            raise ValueError(f"wav must be [B, T], got shape {tuple(wav.shape)}")
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(max=wav.shape[-1])
        out_frames = int(self.output_lengths(torch.tensor(wav.shape[-1])))
        if wav.shape[-1] < HOP:  # too short for the kernels; such a clip has no frame anyway
            wav = nn.functional.pad(wav, (0, HOP - wav.shape[-1]))
        mel, n = self.logmel(wav, lengths)          # [B, 1 + T // 160, n_mels], zero beyond n
        x = mel.transpose(1, 2)
        for layer in self.down:                     # kernel 4, stride 2, padding 1: floor(L / 2) frames
            x = layer(x)
            n = torch.div(n, 2, rounding_mode="floor")
            x = _masked(x, n)
        for layer in self.context:
            x = _masked(layer(x), n)
        frames = self.output_lengths(lengths)
        x = _masked(x[..., :out_frames], frames)
        return x.transpose(1, 2).contiguous(), frames

    def config(self) -> dict:
        return {**super().config(), "version": FEATURE_VERSION, "arch": "logmel-conv1d", "hop": HOP,
                "n_mels": self.n_mels, "channels": list(self.channels), "context_layers": self.context_layers,
                "logmel": self.logmel.config()}


@register_pretext("logmel-l1", needs=ObjectiveNeeds(encoders=("logmel-l1",), mouth_frames=True))
def logmel_l1_pretext(encoder: LogMelL1Encoder, context: PretextContext, **kwargs) -> VisualPretext:
    """The L1 method: speech-driven mouth generation with an L1 loss (adversarial off unless asked)."""
    return VisualPretext(encoder, context, **kwargs)
