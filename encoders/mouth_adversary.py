"""The adversary of the visual pretext: frame and sequence discriminators with their own optimiser.

It lives apart from the pretext (encoders/visual.py) because it is optimised apart from it: the
pretraining loop must never update these weights, so everything that keeps them out of the loop's
optimiser, and their own update step, is here. Their downsampling blocks are the generator's
(encoders/mouth_generator.py).

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
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from encoders.mouth_generator import LEVELS, _down

__all__ = ["Adversary", "FrameDiscriminator", "SequenceDiscriminator", "FRAME_ADV_WEIGHT", "SEQ_ADV_WEIGHT"]

# Vougioukas et al. 2019: L1 600, frame adversarial 1, sequence adversarial 0.2; ours keep L1 at 1.
FRAME_ADV_WEIGHT = 1.0 / 600.0
SEQ_ADV_WEIGHT = 0.2 / 600.0


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
