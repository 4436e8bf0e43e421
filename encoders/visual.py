"""The visual pretext: generate the speaker's mouth frames from the audio, so that the audio encoder
learns what the lips do.

This is the generator of the speech-driven facial animation family (Vougioukas, Petridis and Pantic,
"End-to-end speech-driven facial animation with temporal GANs", BMVC 2018, and "Realistic
speech-driven facial animation with GANs", IJCV 2019), which Shukla et al. used as a pretext: the
"L1" method (ICASSP 2020, log-mel audio encoder, see encoders/logmel_l1.py) and the paper's visual
and joint variants (the 1D ResNet18 on raw audio). For every 25 fps video frame of a crop:

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

Loss: L1 between generated and real frames, averaged over the pixels of valid frames only. Valid
means: the encoder produced the frame (`out_lengths`) and the clip's video has it (crops near the
end of a clip, or a clip whose audio outlasts its video, are zero padded and masked). Only the
valid frames are decoded at all, so padding costs nothing and never touches BatchNorm's statistics.

Adversarial training (`adversarial=True`, off by default): a frame discriminator (a frame paired
with the still, as in Vougioukas et al.) and a sequence discriminator (the same still/frame pairs
through a conv encoder and a GRU over the clip's valid frames), with the non-saturating GAN loss.
Weights: Vougioukas et al. (IJCV 2019) weight L1 600, frame 1 and sequence 0.2 (and an
audio-visual sync discriminator 0.8, which we leave out: the pretext already ties frames to audio
through L1); we keep L1 at 1 and scale the others by the same ratio, 1/600 and 0.2/600, so the
adversarial terms sharpen the frames without outweighing the reconstruction that carries the
signal. These are our recollection of the paper's values, not verified here: tune them with
`frame_adv_weight` / `seq_adv_weight`.

The pretraining loop owns one Adam over `pretext.parameters()` and minimises the returned "loss",
which is the generator's. The discriminators must not be updated by it (their gradient there would
help the generator), so they live in `self.adversary`, which has its own Adam (lr `d_lr`, betas
(0.5, 0.999)), and:
  - they are the pretext's `self_optimised_parameters()`, which `Pretext.parameters()` /
    `named_parameters()` leave out, so the loop's Adam, its gradient clipping and the parameter
    count never see them;
  - the discriminator step happens inside `forward` (training mode with grad enabled only): it
    scores real frames and the detached generated frames, backpropagates its own loss and steps
    its own optimiser, before the generator's adversarial terms are computed;
  - those terms are computed with the discriminators' parameters frozen (requires_grad False), so
    the loop's backward gives the discriminators no gradient at all, even if the pretext is wrapped
    in another module whose parameters() does include them (e.g. a joint objective);
  - the discriminators' weights are in `state_dict()` and their optimiser's state is the
    adversary's extra state, so the loop's checkpoints resume it exactly;
  - under torchrun, the loop tells DistributedDataParallel to ignore them (every parameter that
    `named_parameters()` hides), and the discriminator step averages their gradients over ranks
    itself, so all ranks keep the same discriminators.

`snapshot(out_dir, step)` (called by the loop at each checkpoint) and `generation_l1(...)` measure
generation on held-out clips (whole clips of the valid split, else test, else train; evenly spaced
in clip_id order, so always the same ones) against two baselines that ignore the audio: the still
frame repeated, and the mean training frame. Snapshots draw their noise from a private generator,
so they change nothing a resumed run depends on.

An objective that combines this one with another on the same encoder features (e.g. a joint
audio + visual pretext) calls `loss_from_features(feats, out_lengths, info)` with the features it
already computed, rather than `forward`, so the encoder runs once.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.functional import length_mask
from bench.data.audio import load_audio
from bench.errors import ConfigError
from bench.data.manifest import Manifest
from bench.files import atomic_write_bytes
from bench.data.mouth_frames import SAMPLES_PER_FRAME, MouthFrameSource, evenly_spaced_rows, first_video_frames
from bench.pretrain.objective import CropInfo, Pretext, PretextContext
from bench.registry import Encoder

__all__ = ["SpeechDrivenGenerator", "FrameDiscriminator", "SequenceDiscriminator", "VisualPretext",
           "masked_l1", "generation_l1", "FRAME_ADV_WEIGHT", "SEQ_ADV_WEIGHT"]

VIDEO_FRAME_RATE = 25.0
DEFAULT_CHANNELS = (32, 64, 128)
# Vougioukas et al. 2019: L1 600, frame adversarial 1, sequence adversarial 0.2; ours keep L1 at 1.
FRAME_ADV_WEIGHT = 1.0 / 600.0
SEQ_ADV_WEIGHT = 0.2 / 600.0
LEVELS = 4  # the identity encoder halves the frame 4 times: 64 -> 4
STILL_EPS = 1e-3  # keeps the still's logit finite at pure black and white pixels


def masked_l1(generated: torch.Tensor, real: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean |generated - real| over the pixels of valid frames; [B, T, H, W] frames, [B, T] bool valid."""
    weight = valid.to(generated.dtype)[..., None, None]
    pixels = generated.shape[-1] * generated.shape[-2]
    return ((generated - real).abs() * weight).sum() / (weight.sum() * pixels).clamp(min=1.0)


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


class FrameDiscriminator(nn.Module):
    """(frame [N, S, S], its still [N, S, S]) -> realness logit [N]."""

    def __init__(self, size: int, channels: tuple[int, int, int]) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.net = nn.Sequential(_down(2, c1, False), _down(c1, c2, False), _down(c2, c3, False),
                                 _down(c3, c3, False), nn.Conv2d(c3, 1, size // 2 ** LEVELS))

    def forward(self, frames: torch.Tensor, stills: torch.Tensor) -> torch.Tensor:
        return self.net(torch.stack([frames, stills], dim=1) * 2.0 - 1.0).flatten()


class SequenceDiscriminator(nn.Module):
    """A clip's (frame, still) pairs [B, T, S, S] with valid counts [B] (>= 1) -> realness logit [B]."""

    def __init__(self, size: int, channels: tuple[int, int, int], hidden: int = 128) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.frame = nn.Sequential(_down(2, c1, False), _down(c1, c2, False), _down(c2, c3, False),
                                   _down(c3, c3, False), nn.Conv2d(c3, hidden, size // 2 ** LEVELS),
                                   nn.LeakyReLU(0.2, inplace=True))
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, frames: torch.Tensor, stills: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        B, T, S, _ = frames.shape
        pairs = torch.stack([frames, stills.unsqueeze(1).expand(-1, T, -1, -1)], dim=2).reshape(B * T, 2, S, S)
        e = self.frame(pairs * 2.0 - 1.0).reshape(B, T, -1)
        packed = nn.utils.rnn.pack_padded_sequence(e, counts.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.out(h[-1]).flatten()


class Adversary(nn.Module):
    """The two discriminators and their own optimiser (see the module docstring)."""

    def __init__(self, size: int, channels: tuple[int, int, int], lr: float, max_grad_norm: float = 10.0) -> None:
        super().__init__()
        self.frame_d = FrameDiscriminator(size, channels)
        self.seq_d = SequenceDiscriminator(size, channels)
        self.max_grad_norm = max_grad_norm
        self.optimizer = torch.optim.Adam(list(self.parameters()), lr=lr, betas=(0.5, 0.999))

    def get_extra_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Parameters do not require grad inside: scores computed here give them no gradient."""
        flags = [(p, p.requires_grad) for p in self.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    def logits(self, frames: torch.Tensor, stills: torch.Tensor,
               valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b_idx, t_idx = valid.nonzero(as_tuple=True)
        frame_logits = self.frame_d(frames[b_idx, t_idx], stills[b_idx])
        counts = valid.sum(1)
        keep = counts > 0
        if not bool(keep.any()):
            return frame_logits, frame_logits.new_zeros(0)
        seq_logits = self.seq_d(frames[keep], stills[keep], counts[keep])
        return frame_logits, seq_logits

    def step(self, real: torch.Tensor, fake: torch.Tensor, stills: torch.Tensor,
             valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """One discriminator update on real vs (detached) generated frames; returns its losses."""
        with torch.enable_grad():
            real_f, real_s = self.logits(real, stills, valid)
            fake_f, fake_s = self.logits(fake.detach(), stills, valid)
            d_frame = _bce(real_f, 1.0) + _bce(fake_f, 0.0)
            d_seq = _bce(real_s, 1.0) + _bce(fake_s, 0.0)
            self.optimizer.zero_grad(set_to_none=True)
            (d_frame + d_seq).backward()
            _average_over_ranks(list(self.parameters()))
            if self.max_grad_norm:
                nn.utils.clip_grad_norm_(list(self.parameters()), self.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return {"disc_frame": d_frame.detach(), "disc_seq": d_seq.detach()}

    def generator_losses(self, fake: torch.Tensor, stills: torch.Tensor,
                         valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The generator's non-saturating losses; no gradient reaches the discriminators."""
        with self.frozen():
            fake_f, fake_s = self.logits(fake, stills, valid)
            return _bce(fake_f, 1.0), _bce(fake_s, 1.0)


def _average_over_ranks(params: list[nn.Parameter]) -> None:
    """Under torchrun, average the discriminators' gradients over ranks (DDP is told to ignore them),
    so that every rank's discriminators stay identical, as the generator's weights do."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world)


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    if logits.numel() == 0:
        return logits.sum()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


class VisualPretext(Pretext):
    """Speech-driven mouth generation around any 25 Hz encoder (`encoder(wav, lengths)`, `dim`)."""

    crop_align = SAMPLES_PER_FRAME
    default_lr = 1e-4  # Vougioukas et al.'s generator learning rate (Adam)

    def __init__(self, encoder: Encoder, context: PretextContext, size: int = 64,
                 channels: Sequence[int] = DEFAULT_CHANNELS, id_dim: int = 128, audio_dim: int = 128,
                 noise_dim: int = 10, l1_weight: float = 1.0, adversarial: bool = False,
                 frame_adv_weight: float = FRAME_ADV_WEIGHT, seq_adv_weight: float = SEQ_ADV_WEIGHT,
                 d_lr: float = 1e-4, snapshot_clips: int = 8, mean_frame_clips: int = 64,
                 frame_cache_clips: int = 256) -> None:
        super().__init__()
        if abs(float(getattr(encoder, "frame_rate", 0.0)) - VIDEO_FRAME_RATE) > 1e-6 or encoder.sample_rate != 16_000:
            raise ConfigError(f"visual pretext: encoder {getattr(encoder, 'name', '?')!r} gives frames at "
                              f"{getattr(encoder, 'frame_rate', '?')} Hz from {encoder.sample_rate} Hz audio; it needs "
                              "one frame per 25 fps video frame (25 Hz from 16 kHz, a 640-sample hop).")
        if context.manifest is None:
            raise ConfigError("visual pretext: no manifest in the pretext context; the objective reads each crop's "
                              "mouth frames from it (pretrain with --data pointing at an audiovisual corpus).")
        if l1_weight < 0 or frame_adv_weight < 0 or seq_adv_weight < 0 or d_lr <= 0:
            raise ConfigError("visual pretext: loss weights must be >= 0 and d_lr > 0, got "
                              f"l1_weight={l1_weight}, frame_adv_weight={frame_adv_weight}, "
                              f"seq_adv_weight={seq_adv_weight}, d_lr={d_lr}")
        channels = _check_sizes(size, channels, "visual pretext")
        self.encoder = encoder
        self.context = context
        self.size = int(size)
        self.channels = channels
        self.id_dim, self.audio_dim, self.noise_dim = int(id_dim), int(audio_dim), int(noise_dim)
        self.l1_weight = float(l1_weight)
        self.adversarial = bool(adversarial)
        self.frame_adv_weight, self.seq_adv_weight = float(frame_adv_weight), float(seq_adv_weight)
        self.d_lr = float(d_lr)
        self.snapshot_clips, self.mean_frame_clips = int(snapshot_clips), int(mean_frame_clips)
        self.mouths = MouthFrameSource(context.manifest, size=self.size, cache_clips=frame_cache_clips)
        self.generator = SpeechDrivenGenerator(encoder.dim, self.size, channels, self.id_dim, self.audio_dim,
                                               self.noise_dim)
        self.adversary = Adversary(self.size, channels, self.d_lr) if self.adversarial else None

    # Pretext.named_parameters hides these from the loop's optimiser, gradient clipping, parameter
    # count and (through the loop's DDP wrapper) DistributedDataParallel.
    def self_optimised_parameters(self) -> list[nn.Parameter]:
        return [] if self.adversary is None else list(self.adversary.parameters())

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor,
                info: CropInfo | None = None) -> dict[str, torch.Tensor]:
        if info is None:
            raise ConfigError("visual pretext: forward() needs the crops' CropInfo (manifest rows and start "
                              "samples) to fetch their mouth frames; the pretraining loop passes it.")
        feats, out_lengths = self.encoder(wav, lengths)
        return self.loss_from_features(feats, out_lengths, info)

    def loss_from_features(self, feats: torch.Tensor, out_lengths: torch.Tensor,
                           info: CropInfo) -> dict[str, torch.Tensor]:
        """The objective on already computed 25 Hz features [B, T, dim] (for objectives that share them)."""
        real, stills, valid = self.targets(info, out_lengths, feats.shape[1])
        real, stills, valid = real.to(feats.device), stills.to(feats.device), valid.to(feats.device)
        generated = self.generator(stills, feats, valid, generator=self.context.generator)
        l1 = masked_l1(generated, real, valid)
        out = {"loss_l1": l1}
        loss = self.l1_weight * l1
        if self.adversary is not None:
            if self.training and torch.is_grad_enabled():
                out.update(self.adversary.step(real, generated, stills, valid))
            adv_frame, adv_seq = self.adversary.generator_losses(generated, stills, valid)
            loss = loss + self.frame_adv_weight * adv_frame + self.seq_adv_weight * adv_seq
            out["loss_adv_frame"], out["loss_adv_seq"] = adv_frame, adv_seq
        out["loss"] = loss
        return out

    def targets(self, info: CropInfo, out_lengths: torch.Tensor,
                frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Real frames [B, frames, S, S], stills [B, S, S] and valid [B, frames] of a batch of crops.

        Encoder frame k of crop b is video frame starts[b] // 640 + k of its clip (bench.data.mouth_frames);
        it is valid when the encoder produced it (k < out_lengths[b]) and the video has it.
        """
        if len(info.rows) != len(out_lengths):
            raise ValueError(f"visual pretext: {len(out_lengths)} crops but CropInfo names {len(info.rows)} rows")
        real, counts, stills = self.mouths.batch(info.rows, first_video_frames(info.starts), frames)
        valid = length_mask(torch.minimum(torch.as_tensor(out_lengths).to(torch.long).cpu(), counts), frames)
        return real, stills, valid

    def config(self) -> dict:
        gen_params = sum(p.numel() for p in self.generator.parameters())
        return {"objective": "speech-driven mouth generation",
                "loss": "l1" + ("+adversarial" if self.adversarial else ""),
                "size": self.size, "channels": list(self.channels), "id_dim": self.id_dim,
                "audio_dim": self.audio_dim, "noise_dim": self.noise_dim, "l1_weight": self.l1_weight,
                "adversarial": self.adversarial, "frame_adv_weight": self.frame_adv_weight,
                "seq_adv_weight": self.seq_adv_weight, "d_lr": self.d_lr, "crop_align": self.crop_align,
                "generator_params": gen_params,
                "discriminator_params": sum(p.numel() for p in self.self_optimised_parameters()),
                "frames": self.mouths.describe()}

    def held_out_split(self) -> str:
        """valid, else test, else train: where snapshots measure generation."""
        table = self.context.manifest.table
        for split in ("valid", "test", "train"):
            if (table["split"] == split).any():
                return split
        return "train"

    def snapshot(self, out_dir: str | Path, step: int) -> dict[str, float]:
        """Generate held-out clips, write `out_dir/frames-step{step:06d}.png`, return the L1 metrics.

        The noise comes from a private generator seeded 0, and the module's train/eval mode is
        restored, so a snapshot changes nothing that the training run depends on.
        """
        result = _evaluate(self, self.context.manifest, self.held_out_split(), self.snapshot_clips)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_grid(out_dir / f"frames-step{int(step):06d}.png", result.pop("_examples"))
        return result


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _evaluate(pretext: VisualPretext, manifest: Manifest | None, split: str, max_clips: int,
              max_seconds: float = 4.0) -> dict:
    manifest = manifest or pretext.context.manifest
    if manifest is pretext.context.manifest:
        source = pretext.mouths
    else:
        source = MouthFrameSource(manifest, size=pretext.size)
    rows = evenly_spaced_rows(manifest, split, max_clips)
    if not rows:
        raise ConfigError(f"{manifest.path}: no clips in split {split!r} to measure generation on.")
    waves = [load_audio(manifest.resolve(manifest.table["audio_path"].iloc[r]))[:int(max_seconds * 16_000)]
             for r in rows]
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    wav = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        wav[i, :len(w)] = torch.from_numpy(w)
    device = _device_of(pretext)
    was_training = pretext.training
    pretext.eval()
    try:
        with torch.no_grad():
            feats, out_lengths = pretext.encoder(wav.to(device), lengths.to(device))
            T = feats.shape[1]
            real, counts, stills = source.batch(rows, [0] * len(rows), T)
            valid = length_mask(torch.minimum(out_lengths.to(torch.long).cpu(), counts), T)
            generated = pretext.generator(stills.to(device), feats, valid.to(device),
                                          generator=torch.Generator().manual_seed(0)).cpu()
    finally:
        pretext.train(was_training)
    mean = torch.from_numpy(source.mean_frame("train", pretext.mean_frame_clips))
    return {
        "l1_generated": float(masked_l1(generated, real, valid)),
        "l1_identity": float(masked_l1(stills.unsqueeze(1).expand_as(real), real, valid)),
        "l1_mean_frame": float(masked_l1(mean.expand_as(real), real, valid)),
        "clips": len(rows),
        "frames": int(valid.sum()),
        "_examples": (real.numpy(), generated.numpy(), stills.numpy(), valid.sum(1).numpy()),
    }


def generation_l1(pretext: VisualPretext, manifest: Manifest | None = None, split: str = "valid",
                  max_clips: int = 8) -> dict[str, float]:
    """Mean pixel L1 of generated frames vs real on `split` (whole clips, evenly spaced, deterministic),
    and of the two audio-blind baselines on the same frames: the still frame repeated
    ("l1_identity") and the mean training frame ("l1_mean_frame"). Frames are in [0, 1]."""
    result = _evaluate(pretext, manifest, split, max_clips)
    result.pop("_examples")
    return result


def _write_grid(path: Path, examples: tuple, columns: int = 8, pad: int = 2) -> None:
    """PNG: per clip a row of real frames over a row of generated ones, the still in the first column."""
    from PIL import Image

    real, generated, stills, counts = examples
    S = real.shape[-1]
    cols = columns + 1
    rows = 2 * len(real)
    canvas = np.full((rows * (S + pad) + pad * len(real), cols * (S + pad) + pad), 255, dtype=np.uint8)
    for i in range(len(real)):
        n = int(counts[i])
        picks = np.unique(np.round(np.linspace(0, n - 1, min(columns, n))).astype(int)) if n > 0 else []
        for r, frames in enumerate((real[i], generated[i])):
            y = (2 * i + r) * (S + pad) + pad * (i + 1)
            tiles = [stills[i]] + [frames[k] for k in picks]
            for c, tile in enumerate(tiles):
                x = c * (S + pad) + pad
                canvas[y:y + S, x:x + S] = np.clip(np.rint(tile * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
