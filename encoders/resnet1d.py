"""The 1D ResNet18 raw-waveform encoder: one definition for the proposed encoder and its baselines.

Architecture (PROTOCOL.md; the same lab's public 1D ResNet front end):
  front   Conv1d 1->64, kernel 80, stride 4, then BatchNorm and ReLU
  stages  4 x 2 BasicBlocks (two kernel-3 convolutions each), channels 64/128/256/512,
          strides 1/2/2/2; a strided block's shortcut is a 1x1 strided conv with BatchNorm
  pool    average pooling, kernel 20, stride 20
Total stride 4 * 2 * 2 * 2 * 20 = 640 samples: one 512-d frame per 40 ms (25 Hz), one per video
frame at 25 fps. About 3.85 M parameters.

Padding (our choice; the reference's is not published) makes 1 s give exactly 25 frames: the
front conv pads 38 on each side, so it emits T // 4 frames, each kernel-3 conv pads 1, so a
stride-2 stage emits ceil(L / 2), and the pooling keeps whole windows only. In general a clip of
T samples gives ceil((T // 4) / 8) // 20 frames, which is T // 640 when T is a multiple of 32.

Padding never leaks into valid frames: every convolution's input is zeroed beyond the clip's
valid length at that resolution, which is exactly the zero padding the clip would see alone, and
the final pooling windows that would reach past a clip's end are not counted as frames. (In train
mode, BatchNorm's batch statistics do see padded positions; with equal-length 1 s clips there are
none, and at evaluation BatchNorm uses its running statistics.)
"""

from __future__ import annotations

import torch
from torch import nn

from baselines.functional import length_mask
from bench.errors import ConfigError
from bench.registry import Encoder, register_encoder

STAGE_CHANNELS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
FRONT_KERNEL, FRONT_STRIDE, FRONT_PADDING = 80, 4, 38
POOL = 20
HOP = FRONT_STRIDE * 2 * 2 * 2 * POOL  # 640 samples = 40 ms
# Conv frame j is centred on sample 32 j + 1.5 (the front conv's centre, padding taken off; the
# stride-2 convs keep centres); output frame k averages conv frames 20 k ... 20 k + 19.
FIRST_CENTRE_SAMPLES = (HOP // POOL) * (POOL - 1) / 2 + (FRONT_KERNEL - 1) / 2 - FRONT_PADDING  # 305.5
# Bump when a change here changes the features of given weights: cached features go stale.
FEATURE_VERSION = 1


def _masked(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return x * length_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)


def _conv_lengths(lengths: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    return torch.div(lengths + 2 * padding - kernel, stride, rounding_mode="floor") + 1


class BasicBlock1d(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv1d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv1d(in_channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm1d(channels))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x is zero beyond `lengths`; so is the output, beyond the returned lengths."""
        out_lengths = _conv_lengths(lengths, 3, self.stride, 1)
        out = _masked(self.relu(self.bn1(self.conv1(x))), out_lengths)
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return _masked(self.relu(out + shortcut), out_lengths), out_lengths


class ResNet18Audio(nn.Module):
    """Waveform [B, T] -> 512-d frames [B, T // 640, 512] at 25 Hz, and their valid counts."""

    def __init__(self, stage_channels: tuple[int, ...] = STAGE_CHANNELS) -> None:
        super().__init__()
        if len(stage_channels) != 4 or any(c <= 0 for c in stage_channels):
            raise ConfigError(f"resnet1d: stage_channels must be 4 positive ints, got {stage_channels}")
        self.front = nn.Sequential(
            nn.Conv1d(1, stage_channels[0], FRONT_KERNEL, stride=FRONT_STRIDE, padding=FRONT_PADDING, bias=False),
            nn.BatchNorm1d(stage_channels[0]), nn.ReLU(inplace=True))
        blocks, in_channels = [], stage_channels[0]
        for channels, stride in zip(stage_channels, STAGE_STRIDES):
            blocks += [BasicBlock1d(in_channels, channels, stride), BasicBlock1d(channels, channels, 1)]
            in_channels = channels
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = in_channels
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        n = _conv_lengths(torch.as_tensor(lengths).to(torch.long), FRONT_KERNEL, FRONT_STRIDE, FRONT_PADDING)
        for stride in STAGE_STRIDES:
            n = _conv_lengths(n, 3, stride, 1)
        return torch.div(n, POOL, rounding_mode="floor")

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if wav.dim() != 2:
            raise ValueError(f"wav must be [B, T], got shape {tuple(wav.shape)}")
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(max=wav.shape[-1])
        n = _conv_lengths(lengths, FRONT_KERNEL, FRONT_STRIDE, FRONT_PADDING)
        x = _masked(self.front(_masked(wav.unsqueeze(1), lengths)), n)
        for block in self.blocks:
            x, n = block(x, n)
        frames = torch.div(n, POOL, rounding_mode="floor")
        x = nn.functional.avg_pool1d(x, POOL, POOL)
        x = _masked(x, frames)
        return x.transpose(1, 2).contiguous(), frames


class ResNet1dEncoder(Encoder):
    """The registry-facing wrapper: the contract's attributes around `ResNet18Audio`.

    Registered names build it with their own pretraining story: `resnet18-scratch` (random weights,
    trained with labels in mode scratch) here in baselines, the audiovisual ones in encoders/.
    """

    sample_rate = 16_000
    frame_rate = 16_000 / HOP
    first_frame_centre_s = FIRST_CENTRE_SAMPLES / 16_000
    dim = STAGE_CHANNELS[-1]

    def __init__(self, stage_channels: tuple[int, ...] = STAGE_CHANNELS) -> None:
        super().__init__()
        self.stage_channels = tuple(int(c) for c in stage_channels)
        self.backbone = ResNet18Audio(self.stage_channels)
        self.dim = self.backbone.out_channels

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return ResNet18Audio.output_lengths(lengths)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone(wav, lengths)

    def config(self) -> dict:
        return {**super().config(), "version": FEATURE_VERSION, "arch": "resnet18-1d",
                "stage_channels": list(self.stage_channels), "hop": HOP}


@register_encoder("resnet18")
class ResNet18(ResNet1dEncoder):
    """The 1D ResNet18 with no objective of its own: pretrain it with any objective
    (`avbench pretrain resnet18 --objective dino`), then evaluate `resnet18@pretrained:...`.
    The same architecture and initialisation as av-joint, av-audio, av-visual and resnet18-scratch,
    so that rows differ only in what trained the weights."""

    name = "resnet18"
    needs_pretraining = True
