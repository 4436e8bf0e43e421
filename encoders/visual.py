"""The visual pretext: generate the speaker's mouth frames from the audio, so that the audio encoder
learns what the lips do.

The generator is that of the speech-driven facial animation family (Vougioukas, Petridis and
Pantic, "End-to-end speech-driven facial animation with temporal GANs", BMVC 2018, and "Realistic
speech-driven facial animation with GANs", IJCV 2019), which Shukla et al. used as a pretext: the
"L1" method (ICASSP 2020, log-mel audio encoder, see encoders/logmel_l1.py) and the paper's visual
and joint variants (the 1D ResNet18 on raw audio).

The generator network (its architecture and sizes) is in encoders/mouth_generator.py, the optional
discriminators and their separate optimiser in encoders/mouth_adversary.py. This module holds the
pretext that ties them to the encoder, the crops' real frames and the loss, and the measurements
and snapshot images of generation on held-out clips.

Loss: L1 between generated and real frames, averaged over the pixels of valid frames only. Valid
means: the encoder produced the frame (`out_lengths`) and the clip's video has it (crops near the
end of a clip, or a clip whose audio outlasts its video, are zero padded and masked). Only the
valid frames are decoded at all, so padding costs nothing and never touches BatchNorm's statistics.

Adversarial training (`adversarial=True`, off by default) adds the discriminators' terms to the
loss, weighted by `frame_adv_weight` / `seq_adv_weight`; encoders/mouth_adversary.py says how they
are trained without the pretraining loop's optimiser ever updating them.

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

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from baselines.functional import length_mask
from bench.data.audio import load_audio
from bench.data.manifest import Manifest
from bench.data.mouth_frames import SAMPLES_PER_FRAME, MouthFrameSource, evenly_spaced_rows, first_video_frames
from bench.errors import ConfigError
from bench.files import atomic_write_bytes
from bench.pretrain.objective import CropInfo, Pretext, PretextContext
from bench.registry import Encoder
from encoders.mouth_adversary import FRAME_ADV_WEIGHT, SEQ_ADV_WEIGHT, Adversary
from encoders.mouth_generator import DEFAULT_CHANNELS, SpeechDrivenGenerator, _check_sizes

__all__ = ["VisualPretext", "masked_l1", "generation_l1"]

VIDEO_FRAME_RATE = 25.0


def masked_l1(generated: torch.Tensor, real: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean |generated - real| over the pixels of valid frames; [B, T, H, W] frames, [B, T] bool valid."""
    weight = valid.to(generated.dtype)[..., None, None]
    pixels = generated.shape[-1] * generated.shape[-2]
    return ((generated - real).abs() * weight).sum() / (weight.sum() * pixels).clamp(min=1.0)


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
        # Rendered once into shards here, as the attribute objective caches its targets: a step
        # then reads frames at thousands of clips/s per core instead of rendering ~180.
        self.mouths.ensure_shards(progress=False)
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

    def crop_reader(self) -> "MouthCropReader":
        return MouthCropReader(self.mouths)

    def targets(self, info: CropInfo, out_lengths: torch.Tensor,
                frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Real frames [B, frames, S, S], stills [B, S, S] and valid [B, frames] of a batch of crops.

        Encoder frame k of crop b is video frame starts[b] // 640 + k of its clip (bench.data.mouth_frames);
        it is valid when the encoder produced it (k < out_lengths[b]) and the video has it.
        """
        if len(info.rows) != len(out_lengths):
            raise ValueError(f"visual pretext: {len(out_lengths)} crops but CropInfo names {len(info.rows)} rows")
        loaded = info.extras.get("mouth_frames")
        if loaded is None:  # no loader worker read them: read them here
            real, counts, stills = self.mouths.batch(info.rows, first_video_frames(info.starts), frames)
        else:
            real, counts, stills = loaded
            real = _first_frames(real, frames)
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


class MouthCropReader:
    """The mouth frames of a batch's crops, read in a pretraining loader worker (Pretext.crop_reader).

    It reads ceil(crop_samples / 640) frames per crop, the most frames an encoder emits for the
    crop (bench.data.mouth_frames); `targets` keeps the first as many as the encoder gave.
    """

    def __init__(self, mouths: MouthFrameSource) -> None:
        self.mouths = mouths

    def __call__(self, info: CropInfo, crop_samples: int) -> dict:
        frames = -(-int(crop_samples) // SAMPLES_PER_FRAME)
        return {"mouth_frames": self.mouths.batch(info.rows, first_video_frames(info.starts), frames)}


def _first_frames(real: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, n, S, S] -> [B, frames, S, S]: cut, or padded with zero frames (which the loss masks)."""
    if real.shape[1] >= frames:
        return real[:, :frames]
    pad = real.new_zeros((real.shape[0], frames - real.shape[1]) + tuple(real.shape[2:]))
    return torch.cat([real, pad], dim=1)


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
