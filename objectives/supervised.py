"""Supervised pretraining: the encoder learns a manifest label column, then serves as a frozen
"supervised representation" like any checkpoint.

`avbench pretrain resnet18 --objective supervised --label-column speaker --data embedded:default`:
cross-entropy of a linear layer over the encoder's frames mean-pooled over each clip, on the
crops of the splits the loop reads (train by default). The classes are every value of the column
in the manifest, sorted, so that an index means the same class in every run on that manifest;
classes that only the unread splits hold get no examples. Labels are read per crop from the
manifest rows the loop reports (`CropInfo.rows`). The checkpoint and the pretraining record say
which column it saw (`labels`), and the result tables group its rows as supervised.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bench.errors import ConfigError
from bench.pretrain.objective import CropInfo, ObjectiveNeeds, Pretext, PretextContext, register_objective

LABEL_COLUMNS = ("label", "speaker", "emotion")


class Supervised(Pretext):
    default_lr = 1e-3

    def __init__(self, encoder: nn.Module, context: PretextContext, label_column: str = "label") -> None:
        super().__init__()
        manifest = context.manifest
        if manifest is None:
            raise ConfigError("supervised: needs the manifest whose labels it learns (PretextContext.manifest)")
        table = manifest.table
        if label_column not in table.columns:
            raise ConfigError(f"supervised: {manifest.path} has no column {label_column!r}; its columns: "
                              f"{', '.join(table.columns)}. Choose one with --label-column (label, speaker, emotion).")
        values = table[label_column]
        if values.isna().any():
            rows = table.index[values.isna()][:5].tolist()
            raise ConfigError(f"supervised: {manifest.path}: column {label_column!r} is empty in {int(values.isna().sum())} "
                              f"row(s) (first: {rows}); fill it or choose another --label-column.")
        self.classes = sorted(str(v) for v in values.unique())
        if len(self.classes) < 2:
            raise ConfigError(f"supervised: column {label_column!r} of {manifest.path} has one class; nothing to learn.")
        index = {c: i for i, c in enumerate(self.classes)}
        # The target of every manifest row, looked up by the rows the loop reports.
        self.register_buffer("row_targets", torch.tensor([index[str(v)] for v in values], dtype=torch.long),
                             persistent=False)
        self.encoder, self.label_column = encoder, label_column
        self.head = nn.Linear(encoder.dim, len(self.classes))

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor,
                info: CropInfo | None = None) -> dict[str, torch.Tensor]:
        if info is None:
            raise ConfigError("supervised: needs CropInfo (the manifest rows of the crops) for their labels")
        lengths = torch.as_tensor(lengths, device=wav.device)
        feats, frames = self.encoder(wav, lengths)
        mask = (torch.arange(feats.shape[1], device=feats.device) < frames.unsqueeze(1)).to(feats.dtype)
        pooled = (feats * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        logits = self.head(pooled).float()
        target = self.row_targets[torch.as_tensor(info.rows, device=self.row_targets.device)].to(wav.device)
        return {"loss": F.cross_entropy(logits, target), "accuracy": (logits.argmax(1) == target).float().mean()}

    def config(self) -> dict:
        return {"objective": "supervised", "label_column": self.label_column, "classes": len(self.classes)}


@register_objective("supervised", needs=ObjectiveNeeds(features="pooled", labels=True))
def supervised(encoder: nn.Module, context: PretextContext, label_column: str = "label") -> Supervised:
    """Cross-entropy on a manifest label column through a mean-pooled linear head."""
    return Supervised(encoder, context, label_column)
