"""DINO for speakers: self-distillation with no labels (Caron et al., 2021; sslsv's DINO).

A student (the encoder, statistics pooling over frames, a head) and a teacher (momentum copies of
both) see views of the same utterance: 2 global segments and 4 local ones half as long
(objectives.views: 0.6 s and 0.3 s here, sslsv uses 4 s and 2 s of longer utterances). The
teacher sees only the global views; the student learns to give, for every view, the teacher's
distribution of each other view:

    loss = mean over (teacher view i, student view j != i) of
           H(softmax((t_i - center) / teacher_temperature), softmax(s_j / student_temperature))

The head is sslsv's: Linear(2D, 2048) - BN - GELU - Linear(2048, 2048) - BN - GELU -
Linear(2048, 256), L2 normalisation, then a weight-normalised Linear(256, 65536) without bias whose
row norms are fixed to 1 (weight_g = 1). Temperatures 0.1 (student) and 0.04 (teacher),
teacher momentum 0.996, center momentum 0.9.

Two mechanisms keep the teacher from collapsing, and both are here: centering (subtracting a
running mean of the teacher's outputs) keeps one dimension from dominating, and sharpening (the
low teacher temperature) keeps the output from becoming uniform. `centering=False` removes the
first, to show what it prevents (tests/test_speaker_objectives.py): the teacher's entropy falls
towards 0. The logged `teacher_entropy` is the mean entropy (nats) of the teacher's distributions,
between 0 (collapsed on one dimension) and log(output_dim) (uniform); `teacher_batch_entropy` is
the entropy of their batch mean (low when every clip picks the same dimension).

Departures from sslsv, for the budget of hundreds of steps: the momentum is constant (sslsv
raises it to 1 on a cosine over training, which needs the total step count, not known to an
objective), the last layer is not frozen during the first epoch (our budgets are shorter than one
epoch), and the lr is the loop's constant Adam lr (sslsv: cosine decay with weight decay).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from bench.errors import ConfigError
from bench.pretrain.objective import CropInfo, ObjectiveNeeds, Pretext, PretextContext, register_objective
from objectives.views import GLOBAL_SECONDS, LOCAL_SECONDS, SpeakerViews, embed, frozen_copy, mlp, momentum_update


class DINOHead(nn.Module):
    """MLP to a bottleneck, L2 normalisation, then prototypes with unit-norm rows."""

    def __init__(self, input_dim: int, hidden_dim: int, bottleneck_dim: int, output_dim: int) -> None:
        super().__init__()
        self.mlp = mlp([input_dim, hidden_dim, hidden_dim, bottleneck_dim], activation=nn.GELU)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.prototypes = nn.Parameter(torch.empty(output_dim, bottleneck_dim))
        nn.init.kaiming_uniform_(self.prototypes, a=math.sqrt(5))  # nn.Linear's initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        # weight_norm with weight_g fixed to 1: the direction of each row only.
        return x @ F.normalize(self.prototypes, dim=-1).t()


class DINO(Pretext):
    default_lr = 1e-3

    def __init__(self, encoder: nn.Module, context: PretextContext, output_dim: int = 65536,
                 hidden_dim: int = 2048, bottleneck_dim: int = 256, local_views: int = 4,
                 global_seconds: float = GLOBAL_SECONDS, local_seconds: float = LOCAL_SECONDS,
                 student_temperature: float = 0.1, teacher_temperature: float = 0.04,
                 momentum: float = 0.996, center_momentum: float = 0.9, centering: bool = True,
                 augment: bool = True) -> None:
        super().__init__()
        if min(student_temperature, teacher_temperature) <= 0 or not 0 <= momentum < 1 \
                or not 0 <= center_momentum < 1 or local_views < 0:
            raise ConfigError("dino: temperatures must be positive, momentum and center_momentum in [0, 1), "
                              f"local_views >= 0; got {student_temperature}, {teacher_temperature}, {momentum}, "
                              f"{center_momentum}, {local_views}")
        self.encoder = encoder
        self.head = DINOHead(2 * encoder.dim, int(hidden_dim), int(bottleneck_dim), int(output_dim))
        self.teacher_encoder, self.teacher_head = frozen_copy(encoder), frozen_copy(self.head)
        self.views = SpeakerViews(context, augment)
        self.register_buffer("center", torch.zeros(1, int(output_dim)))
        self.settings = {"output_dim": int(output_dim), "hidden_dim": int(hidden_dim),
                         "bottleneck_dim": int(bottleneck_dim), "local_views": int(local_views),
                         "global_seconds": float(global_seconds), "local_seconds": float(local_seconds),
                         "student_temperature": float(student_temperature),
                         "teacher_temperature": float(teacher_temperature), "momentum": float(momentum),
                         "center_momentum": float(center_momentum), "centering": bool(centering)}

    def self_optimised_parameters(self) -> list[nn.Parameter]:
        return [*self.teacher_encoder.parameters(), *self.teacher_head.parameters()]

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor,
                info: CropInfo | None = None) -> dict[str, torch.Tensor]:
        s = self.settings
        lengths = torch.as_tensor(lengths, device=wav.device)
        if self.training:
            momentum_update(self.encoder, self.teacher_encoder, s["momentum"])
            momentum_update(self.head, self.teacher_head, s["momentum"])
        global_views = [self.views(wav, lengths, s["global_seconds"]) for _ in range(2)]
        local_views = [self.views(wav, lengths, s["local_seconds"]) for _ in range(s["local_views"])]
        student = [self.head(embed(self.encoder, *v)).float() / s["student_temperature"]
                   for v in global_views + local_views]
        with torch.no_grad():
            teacher_logits = [self.teacher_head(embed(self.teacher_encoder, *v)).float() for v in global_views]
            teacher = [F.softmax((t - self.center) / s["teacher_temperature"], dim=-1) for t in teacher_logits]
        terms = [torch.sum(-t * F.log_softmax(student[j], dim=-1), dim=-1).mean()
                 for i, t in enumerate(teacher) for j in range(len(student)) if j != i]
        loss = torch.stack(terms).mean()
        if self.training and s["centering"]:
            batch_center = torch.cat(teacher_logits).mean(0, keepdim=True)
            self.center.mul_(s["center_momentum"]).add_(batch_center, alpha=1 - s["center_momentum"])
        probs = torch.cat(teacher)
        return {"loss": loss, **teacher_entropies(probs)}

    def config(self) -> dict:
        return {"objective": "dino", **self.settings, "views": self.views.config()}


def teacher_entropies(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean entropy of the teacher's distributions and entropy of their mean, in nats."""
    def entropy(p: torch.Tensor) -> torch.Tensor:
        return -(p * torch.log(p.clamp(min=1e-12))).sum(-1)

    return {"teacher_entropy": entropy(probs).mean(), "teacher_batch_entropy": entropy(probs.mean(0))}


@register_objective("dino", needs=ObjectiveNeeds(features="pooled"))
def dino(encoder: nn.Module, context: PretextContext, **kwargs) -> DINO:
    """DINO: a student matches a momentum teacher across global and local segments."""
    return DINO(encoder, context, **kwargs)
