"""The generator of the visual pretext: a still mouth frame, the audio encoder's features and noise in,
one generated mouth frame per 25 fps video frame out.

It lives apart from the pretext (encoders/visual.py) because it is a plain network: it knows
nothing of crops, manifests, losses, the discriminators or the pretraining loop. The
discriminators (encoders/mouth_adversary.py) reuse its downsampling block and its number of
halvings (LEVELS).

It is the generator of the speech-driven facial animation family of Vougioukas, Petridis and
Pantic (BMVC 2018, IJCV 2019; encoders/visual.py gives the references). For every 25 fps video
frame of a crop:

    still frame --identity encoder (strided 2D convs)--> identity vector + skip maps
    audio crop  --the encoder being pretrained (25 Hz, `dim`)--> one feature per frame --Linear-->
    Gaussian noise per frame --GRU--> temporal noise
    [identity, audio feature, noise] --frame decoder (transposed convs, U-Net skips)--> frame in [0, 1]

Choices of ours (the papers give the family, not these sizes): 64x64 grayscale mouth frames;
identity encoder channels 32-64-128-128 down to 4x4 plus a 128-d identity vector; the audio feature
projected linearly to 128 (no recurrent layer on the audio side: the temporal modelling of speech
is the encoder's job, not the head's); 10-d noise through a 10-unit GRU (Vougioukas' sizes); the
decoder mirrors the identity encoder and ends with a 3x3 convolution that also sees the still
itself; its output is added to the still's logit, then a sigmoid (the generator edits the still,
starting from an exact copy: see FrameDecoder). With these defaults and a 512-d encoder the generator has 2,186,334
parameters and costs about 77 M multiply-adds per generated frame (the two discriminators, when
enabled, add 1,218,242 parameters), small enough for CPU runs; `channels=(8, 16, 16)` and the like
give test-sized models.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from bench.errors import ConfigError

__all__ = ["SpeechDrivenGenerator", "IdentityEncoder", "TemporalNoise", "FrameDecoder", "DEFAULT_CHANNELS"]

DEFAULT_CHANNELS = (32, 64, 128)
LEVELS = 4  # the identity encoder halves the frame 4 times: 64 -> 4
STILL_EPS = 1e-3  # keeps the still's logit finite at pure black and white pixels


def _down(cin: int, cout: int, norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _check_sizes(size: int, channels: Sequence[int], who: str) -> tuple[int, int, int]:
    if size < 2 ** LEVELS or size % 2 ** LEVELS:
        raise ConfigError(f"{who}: size must be a positive multiple of {2 ** LEVELS} (the frame is halved "
                          f"{LEVELS} times), got {size}")
    channels = tuple(int(c) for c in channels)
    if len(channels) != 3 or any(c <= 0 for c in channels):
        raise ConfigError(f"{who}: channels must be 3 positive ints (e.g. 32, 64, 128), got {list(channels)}")
    return channels  # type: ignore[return-value]


class IdentityEncoder(nn.Module):
    """Still [N, 1, S, S] in [-1, 1] -> identity vector [N, id_dim] and the maps at S/2, S/4, S/8, S/16."""

    def __init__(self, size: int, channels: tuple[int, int, int], id_dim: int) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.blocks = nn.ModuleList([_down(1, c1, norm=False), _down(c1, c2), _down(c2, c3), _down(c3, c3)])
        self.to_vector = nn.Sequential(nn.Conv2d(c3, id_dim, size // 2 ** LEVELS), nn.Tanh())

    def forward(self, still: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        x = still
        for block in self.blocks:
            x = block(x)
            skips.append(x)
        return self.to_vector(x).flatten(1), skips


class TemporalNoise(nn.Module):
    """Per-frame Gaussian noise through a GRU: noise that varies smoothly over the frames of a clip."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.gru = nn.GRU(dim, dim, batch_first=True) if dim > 0 else None

    def forward(self, batch: int, frames: int, device: torch.device,
                generator: torch.Generator | None = None) -> torch.Tensor:
        if self.gru is None:
            return torch.zeros(batch, frames, 0, device=device)
        # Drawn on the CPU from the given generator (or torch's global one), then moved: the same
        # numbers on any device, and the loop's checkpoints hold the generator's state.
        eps = torch.randn(batch, frames, self.dim, generator=generator).to(device)
        out, _ = self.gru(eps)
        return out


class FrameDecoder(nn.Module):
    """Latent [N, L] + identity skips -> frame [N, 1, S, S] in [0, 1] (U-Net decoder)."""

    def __init__(self, size: int, channels: tuple[int, int, int], latent_dim: int) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.start = nn.Sequential(nn.ConvTranspose2d(latent_dim, c3, size // 2 ** LEVELS, bias=False),
                                   nn.BatchNorm2d(c3), nn.ReLU(inplace=True))
        # Each step sees the decoder's map concatenated with the identity map of the same size.
        self.ups = nn.ModuleList([_up(c3 + c3, c3), _up(c3 + c3, c2), _up(c2 + c2, c1), _up(c1 + c1, c1)])
        self.out = nn.Conv2d(c1 + 1, 1, 3, padding=1)
        # The frame is the still edited in logit space, and the edit starts at zero: an untrained
        # generator reproduces the still exactly. Most of a mouth crop never moves, so an absolute
        # decoder spends its first thousands of steps relearning the static pixels (its L1 starts
        # near 0.12, the still's is under 0.01) before the audio can matter at all.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor, skips: list[torch.Tensor], still: torch.Tensor) -> torch.Tensor:
        x = self.start(z[:, :, None, None])
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(torch.cat([x, skip], dim=1))
        still01 = ((still + 1.0) * 0.5).clamp(STILL_EPS, 1.0 - STILL_EPS)
        return torch.sigmoid(torch.logit(still01) + self.out(torch.cat([x, still], dim=1)))


class SpeechDrivenGenerator(nn.Module):
    """(still [B, S, S], audio features [B, T, D], valid [B, T]) -> frames [B, T, S, S] in [0, 1].

    Frames where `valid` is False are not generated (they are zero).
    """

    def __init__(self, audio_dim_in: int, size: int = 64, channels: Sequence[int] = DEFAULT_CHANNELS,
                 id_dim: int = 128, audio_dim: int = 128, noise_dim: int = 10) -> None:
        super().__init__()
        channels = _check_sizes(size, channels, "visual generator")
        if audio_dim_in <= 0 or id_dim <= 0 or audio_dim <= 0 or noise_dim < 0:
            raise ConfigError(f"visual generator: audio_dim_in, id_dim and audio_dim must be positive and noise_dim "
                              f">= 0, got {audio_dim_in}, {id_dim}, {audio_dim}, {noise_dim}")
        self.size = size
        self.identity = IdentityEncoder(size, channels, id_dim)
        self.audio = nn.Linear(audio_dim_in, audio_dim)
        self.noise = TemporalNoise(noise_dim)
        self.decoder = FrameDecoder(size, channels, id_dim + audio_dim + noise_dim)

    def forward(self, still: torch.Tensor, audio: torch.Tensor, valid: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        B, T = valid.shape
        if still.shape != (B, self.size, self.size) or audio.shape[:2] != (B, T):
            raise ValueError(f"generator: still {tuple(still.shape)}, audio {tuple(audio.shape)} and valid "
                             f"{tuple(valid.shape)} do not fit [B, {self.size}, {self.size}], [B, T, D], [B, T]")
        ident = still.unsqueeze(1) * 2.0 - 1.0
        id_vec, skips = self.identity(ident)
        content = self.audio(audio)
        noise = self.noise(B, T, audio.device, generator)
        frames = still.new_zeros(B, T, self.size, self.size)
        b_idx, t_idx = valid.nonzero(as_tuple=True)
        if len(b_idx) == 0:  # keep the graph so that backward() still works
            return frames + 0.0 * content.sum()
        z = torch.cat([id_vec[b_idx], content[b_idx, t_idx], noise[b_idx, t_idx]], dim=1)
        out = self.decoder(z, [s[b_idx] for s in skips], ident[b_idx])
        return frames.index_put((b_idx, t_idx), out[:, 0])
