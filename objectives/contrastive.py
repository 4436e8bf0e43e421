"""Contrastive speaker SSL: SimCLR and MoCo on any trainable encoder, pooled over time.

simclr (Chen et al., 2020; sslsv's SimCLR): two augmented segments of each utterance
(objectives.views), each encoded, statistics-pooled (mean and std over frames) and projected by
Linear(2D, 2048) - ReLU - Linear(2048, 256); NT-Xent at temperature 0.2 over the 2B views of the
batch. sslsv's settings, except: segments of 0.6 s, not 2 s (our clips are 1 s long), and the
loop's constant-lr Adam instead of sslsv's schedule.

moco (MoCo v2+, Chen et al., 2020; sslsv's MoCo): queries from the encoder and a 3-layer projector
(2048-2048-128, BatchNorm, ReLU); keys from momentum copies of both; the loss is InfoNCE at
temperature 0.2 against the other view's key and a queue of earlier keys, symmetrised over the two
views. Departures, because of our budget (hundreds of steps of batch 8, a corpus of thousands of
clips): a queue of 1,024 keys per view, not 65,536 (a queue longer than the keys a run ever makes
would hold mostly random vectors), and momentum 0.99, not 0.999 (after 400 steps a 0.999 teacher
would still be two thirds its random initialisation). The keys' batch is not shuffled (shuffle-BN
matters across GPUs; on one process a permutation leaves the batch statistics unchanged).

The momentum copies are updated at the start of each forward from the weights the optimiser has
just made, so they live in the objective's state and a resumed run continues them exactly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bench.errors import ConfigError
from bench.pretrain.objective import CropInfo, ObjectiveNeeds, Pretext, PretextContext, register_objective
from objectives.views import GLOBAL_SECONDS, SpeakerViews, embed, frozen_copy, mlp, momentum_update, nt_xent

POOLED = ObjectiveNeeds(features="pooled")


class SimCLR(Pretext):
    default_lr = 1e-3

    def __init__(self, encoder: nn.Module, context: PretextContext, temperature: float = 0.2,
                 hidden_dim: int = 2048, output_dim: int = 256, segment_seconds: float = GLOBAL_SECONDS,
                 augment: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"simclr: temperature must be positive, got {temperature}")
        self.encoder = encoder
        self.temperature, self.segment_seconds = float(temperature), float(segment_seconds)
        self.views = SpeakerViews(context, augment)
        self.projector = mlp([2 * encoder.dim, int(hidden_dim), int(output_dim)], batch_norm=False)
        self.dims = (int(hidden_dim), int(output_dim))

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor,
                info: CropInfo | None = None) -> dict[str, torch.Tensor]:
        lengths = torch.as_tensor(lengths, device=wav.device)
        a = self.projector(embed(self.encoder, *self.views(wav, lengths, self.segment_seconds)))
        b = self.projector(embed(self.encoder, *self.views(wav, lengths, self.segment_seconds)))
        loss, accuracy = nt_xent(a, b, self.temperature)
        return {"loss": loss, "positive_top1": accuracy}

    def config(self) -> dict:
        return {"objective": "simclr", "temperature": self.temperature, "projector": list(self.dims),
                "segment_seconds": self.segment_seconds, "views": self.views.config()}


class MoCo(Pretext):
    default_lr = 1e-3

    def __init__(self, encoder: nn.Module, context: PretextContext, temperature: float = 0.2,
                 momentum: float = 0.99, queue_size: int = 1024, hidden_dim: int = 2048, output_dim: int = 128,
                 segment_seconds: float = GLOBAL_SECONDS, augment: bool = True) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0 or temperature <= 0 or queue_size < 1:
            raise ConfigError(f"moco: need 0 <= momentum < 1, temperature > 0, queue_size >= 1; got {momentum}, "
                              f"{temperature}, {queue_size}")
        self.encoder = encoder
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.segment_seconds = float(segment_seconds)
        self.views = SpeakerViews(context, augment)
        self.projector = mlp([2 * encoder.dim, int(hidden_dim), int(hidden_dim), int(output_dim)])
        self.key_encoder, self.key_projector = frozen_copy(encoder), frozen_copy(self.projector)
        # The queue starts as random unit vectors (MoCo's initialisation), one per view.
        queue = torch.randn(2, int(queue_size), int(output_dim), generator=context.generator)
        self.register_buffer("queue", F.normalize(queue, dim=-1))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))
        self.dims = (int(hidden_dim), int(output_dim))

    def self_optimised_parameters(self) -> list[nn.Parameter]:
        return [*self.key_encoder.parameters(), *self.key_projector.parameters()]

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor,
                info: CropInfo | None = None) -> dict[str, torch.Tensor]:
        lengths = torch.as_tensor(lengths, device=wav.device)
        if self.training:
            momentum_update(self.encoder, self.key_encoder, self.momentum)
            momentum_update(self.projector, self.key_projector, self.momentum)
        views = [self.views(wav, lengths, self.segment_seconds) for _ in range(2)]
        queries = [F.normalize(self.projector(embed(self.encoder, *v)), dim=-1) for v in views]
        with torch.no_grad():
            keys = [F.normalize(self.key_projector(embed(self.key_encoder, *v)), dim=-1) for v in views]
        queue = self.queue.clone()
        loss_1, top1_1 = self._info_nce(queries[0], keys[1], queue[1])
        loss_2, top1_2 = self._info_nce(queries[1], keys[0], queue[0])
        if self.training:
            self._enqueue(torch.stack(keys).float())
        return {"loss": (loss_1 + loss_2) / 2, "positive_top1": (top1_1 + top1_2) / 2}

    def _info_nce(self, query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor):
        positive = (query * key).sum(-1, keepdim=True)
        negatives = query @ queue.to(query.dtype).t()
        logits = torch.cat([positive, negatives], dim=1) / self.temperature
        target = torch.zeros(len(query), dtype=torch.long, device=query.device)
        return F.cross_entropy(logits.float(), target), (logits.argmax(1) == 0).float().mean()

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest entries of each view's queue with this batch's keys (wrapping)."""
        size = self.queue.shape[1]
        keys = keys[:, -size:]  # a batch larger than the queue keeps its last keys
        batch = keys.shape[1]
        slots = (int(self.queue_pointer) + torch.arange(batch)) % size
        self.queue[:, slots.to(self.queue.device)] = keys
        self.queue_pointer.fill_((int(self.queue_pointer) + batch) % size)

    def config(self) -> dict:
        return {"objective": "moco", "temperature": self.temperature, "momentum": self.momentum,
                "queue_size": int(self.queue.shape[1]), "projector": list(self.dims),
                "segment_seconds": self.segment_seconds, "views": self.views.config()}


@register_objective("simclr", needs=POOLED)
def simclr(encoder: nn.Module, context: PretextContext, **kwargs) -> SimCLR:
    """SimCLR: NT-Xent between two augmented segments of each utterance."""
    return SimCLR(encoder, context, **kwargs)


@register_objective("moco", needs=POOLED)
def moco(encoder: nn.Module, context: PretextContext, **kwargs) -> MoCo:
    """MoCo v2+: InfoNCE against a momentum encoder's keys and a queue of earlier keys."""
    return MoCo(encoder, context, **kwargs)
