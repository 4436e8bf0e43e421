"""What the speaker SSL objectives share: random segments of an utterance, the augmentations speaker
SSL relies on, statistics pooling and projection heads.

Segments. Speaker SSL draws its views as segments of one utterance, so two views share the speaker
and not the exact samples (sslsv: 2 s frames of VoxCeleb utterances of about 8 s; DINO's local
views are half as long as its global ones). Our clips are 1 s long, so the segments are shorter:
0.6 s for the contrastive views and DINO's global views, 0.3 s for DINO's local views (the same
2:1 ratio). Two 0.6 s segments of a 1 s clip overlap by at least 0.2 s; they differ in where they
start and in their augmentation. A clip shorter than a segment gives its whole valid part.

Augmentation. Each view is augmented independently with PASE+'s batched contamination
(baselines.pase_contamination), restricted to what speaker SSL uses: reverberation with a
synthetic room response (RT60 0.2-0.8 s; sslsv convolves simulated RIRs, which cannot be
downloaded here), additive noise from the corpus noise recordings at 0/5/10/15 dB (sslsv: MUSAN
noise at 0-15 dB) and another utterance of the batch at 13/15/17/20 dB (sslsv: MUSAN speech at
13-20 dB). Each is applied with its own probability (defaults below). Every draw comes from the
pretraining loop's generator, so a resumed run draws the same views.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from baselines.pase_contamination import Contamination
from bench.errors import ConfigError
from bench.pretrain.objective import PretextContext

SAMPLE_RATE = 16_000
GLOBAL_SECONDS = 0.6
LOCAL_SECONDS = 0.3
AUGMENT_PROBS = {"reverb": 0.5, "noise": 0.5, "overlap": 0.25}
NOISE_SNRS = (0.0, 5.0, 10.0, 15.0)
SPEECH_SNRS = (13.0, 15.0, 17.0, 20.0)


def random_segments(wav: torch.Tensor, lengths: torch.Tensor, seconds: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random segment of `seconds` from each clip: ([B, S] zero beyond its length, lengths [B])."""
    size = int(round(seconds * SAMPLE_RATE))
    if size < 1:
        raise ConfigError(f"segment length {seconds} s is shorter than one sample")
    size = min(size, wav.shape[1])
    lengths = lengths.to(torch.long).clamp(max=wav.shape[1])
    room = (lengths - size).clamp(min=0)
    starts = (torch.rand(wav.shape[0], generator=generator) * (room.cpu() + 1).to(torch.float32)).long()
    starts = starts.clamp(max=room.cpu()).to(wav.device)
    index = starts.unsqueeze(1) + torch.arange(size, device=wav.device).unsqueeze(0)
    seg_lengths = lengths.clamp(max=size)
    segments = wav.gather(1, index.clamp(max=wav.shape[1] - 1))
    segments = segments * (torch.arange(size, device=wav.device) < seg_lengths.unsqueeze(1)).to(wav.dtype)
    return segments, seg_lengths


class SpeakerViews(nn.Module):
    """Draws augmented segments of each utterance: the views of the speaker SSL objectives."""

    def __init__(self, context: PretextContext, augment: bool = True, probs: dict | None = None) -> None:
        super().__init__()
        self.generator = context.generator
        self.probs = dict(AUGMENT_PROBS if probs is None else probs)
        unknown = sorted(set(self.probs) - set(AUGMENT_PROBS))
        if unknown:
            raise ConfigError(f"augmentation probabilities: unknown {unknown}; known: {sorted(AUGMENT_PROBS)}")
        self.augment = bool(augment)
        self.contamination = Contamination(context.generator, list(context.noise_sources), self.probs,
                                           noise_snrs=NOISE_SNRS, overlap_snrs=SPEECH_SNRS)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor, seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
        segments, seg_lengths = random_segments(wav, lengths, seconds, self.generator)
        if self.augment:
            segments = self.contamination(segments, seg_lengths)
        return segments, seg_lengths

    def config(self) -> dict:
        return {"augment": self.augment, "probs": self.probs, "noise_snrs": list(NOISE_SNRS),
                "speech_snrs": list(SPEECH_SNRS), "rt60": list(self.contamination.rt60),
                "noise_sources": len(self.contamination.noise_sources)}


def stats_pool(feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation over each clip's valid frames: [B, T, D] -> [B, 2D]."""
    mask = (torch.arange(feats.shape[1], device=feats.device) < lengths.unsqueeze(1)).to(feats.dtype).unsqueeze(-1)
    count = mask.sum(1).clamp(min=1.0)
    mean = (feats * mask).sum(1) / count
    var = (((feats - mean.unsqueeze(1)) ** 2) * mask).sum(1) / count
    return torch.cat([mean, torch.sqrt(var + 1e-5)], dim=-1)


def embed(encoder: nn.Module, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The encoder's frames of `wav`, statistics-pooled into one vector per clip."""
    feats, frames = encoder(wav, lengths)
    if int(frames.min()) < 1:
        raise ConfigError(f"a segment of {int(lengths.min())} samples gives no frame of {encoder.name!r}; "
                          "use longer segments (segment_seconds)")
    return stats_pool(feats.float(), frames)


def mlp(dims: list[int], batch_norm: bool = True, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers with BatchNorm and an activation between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.extend([nn.BatchNorm1d(b)] if batch_norm else [])
            layers.append(activation())
    return nn.Sequential(*layers)


@torch.no_grad()
def momentum_update(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    for s, t in zip(student.parameters(), teacher.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters the optimiser never sees (a momentum teacher)."""
    import copy

    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's NT-Xent over 2B normalised embeddings: each view's positive is its pair, its
    negatives are the other 2B - 2 views. Returns (loss, accuracy of finding the positive)."""
    z = F.normalize(torch.cat([a, b]), dim=-1)
    n = a.shape[0]
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target), (logits.argmax(1) == target).float().mean()
