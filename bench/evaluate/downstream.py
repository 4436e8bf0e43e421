"""The one shared downstream model: a 2-layer BiGRU over encoder frames, pooled, then linear.

Sequences are packed, so padding never enters the recurrence. Pooling (configurable):
  "last": concatenation of the last layer's final forward state (at each clip's true last frame)
          and final backward state (at its first frame): the paper-style default;
  "mean": mean of the last layer's outputs over valid frames only.
The pooled 2*hidden vector is the clip embedding (`embed`); the linear layer maps it to classes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

POOLINGS = ("last", "mean")


class BiGRUClassifier(nn.Module):
    def __init__(self, input_dim: int, num_classes: int, hidden: int = 256, layers: int = 2,
                 pooling: str = "last", dropout: float = 0.0) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.gru = nn.GRU(input_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.classifier = nn.Linear(2 * hidden, num_classes)

    def embed(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Pooled [B, 2*hidden] clip embedding (the layer before the classifier)."""
        lengths = lengths.clamp(min=1).to("cpu", torch.int64)
        if bool((lengths == feats.shape[1]).all()):
            # No clip is padded: the plain GRU computes exactly what the packed one would, and the
            # packed CPU kernel is about 2.4x slower (measured with benchmarks/loop_benchmark.py).
            padded, h_n = self.gru(feats)
        else:
            packed = pack_padded_sequence(feats, lengths, batch_first=True, enforce_sorted=False)
            out, h_n = self.gru(packed)
            padded = None
        if self.pooling == "last":
            # h_n is [layers*2, B, H], already restored to the input order by the packed GRU.
            return torch.cat([h_n[-2], h_n[-1]], dim=1)
        if padded is None:
            padded, _ = pad_packed_sequence(out, batch_first=True, total_length=feats.shape[1])
        mask = (torch.arange(padded.shape[1])[None, :] < lengths[:, None]).to(padded.dtype)
        mask = mask.to(padded.device)
        return (padded * mask[..., None]).sum(1) / lengths.to(padded.device)[:, None].to(padded.dtype)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(feats, lengths))
