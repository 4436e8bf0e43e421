"""The wav2vec 1.0 pretext: fairseq's Wav2VecPredictionsModel with its binary cross-entropy criterion.

The prediction head and the loss that trains the encoder (see `Wav2VecPretext`). It is apart from
baselines.wav2vec, which holds the encoders and registers this pretext for both of them, because
the objective is only needed for pretraining; the head's weights load from the same published
checkpoints as the encoder's.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from baselines.wav2vec_arch import auto_offset
from baselines.wav2vec_checkpoint import HEAD_PREFIX, read_published_checkpoint
from bench.errors import ConfigError
from bench.pretrain.objective import Pretext, PretextContext
from bench.registry import Encoder, load_state_exactly


class Wav2VecPredictions(nn.Module):
    """The step projections: one ConvTranspose2d(D, C, (1, steps)) maps c_t to a prediction for
    each step (fairseq's `wav2vec_predictions.project_to_steps`, same parameter shapes)."""

    def __init__(self, in_dim: int, out_dim: int, prediction_steps: int, dropout: float) -> None:
        super().__init__()
        self.project_to_steps = nn.ConvTranspose2d(in_dim, out_dim, (1, prediction_steps))
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """c [B, D, T] -> predictions [B, C, T, steps]."""
        return self.dropout(self.project_to_steps(c.unsqueeze(-1)))


class Wav2VecPretext(Pretext):
    """wav2vec's objective: tell the true future z from distractors, k steps ahead, with BCE.

    As fairseq (Wav2VecPredictionsModel + its wav2vec/binary_cross_entropy criterion):
    - step s (0-based) of c_t predicts z_{t + offset + s}; offset="auto" is ceil(receptive field /
      hop) = 3 for the published encoders, the first frame whose samples c_t has not seen; steps
      run s = 0..prediction_steps-1 (12);
    - logits are dot products of the prediction with z (z is the target, not detached, after log
      compression, without the feature dropout);
    - num_negatives (10, the paper's K) distractors per target position, drawn uniformly from the
      same utterance's frames other than the target's, and shared by all steps predicting it;
    - loss = sum of BCE-with-logits over positives (label 1) and negatives (label 0), divided by
      the number of positives (fairseq's sample_size). With balanced_classes, negatives weigh
      1/num_negatives (fairseq's option, off for the published models).
    Unlike fairseq, batches may be padded: targets and negatives come from each utterance's valid
    frames only. "acc" is the fraction of (context, step) pairs whose positive outscores all its
    negatives.
    """

    def __init__(self, encoder: Encoder, context: PretextContext, prediction_steps: int = 12,
                 num_negatives: int = 10, offset: int | str = "auto", balanced_classes: bool = False) -> None:
        super().__init__()
        if prediction_steps < 1 or num_negatives < 1:
            raise ConfigError(f"wav2vec pretext: prediction_steps and num_negatives must be >= 1, got "
                              f"{prediction_steps}, {num_negatives}")
        if offset == "auto":
            offset = auto_offset(encoder.arch["conv_feature_layers"])
        try:
            offset = int(offset)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"wav2vec pretext: offset must be 'auto' or an integer, got {offset!r}") from exc
        if offset < 1:
            raise ConfigError(f"wav2vec pretext: offset must be >= 1, got {offset}")
        self.encoder = encoder
        self.wav2vec_predictions = Wav2VecPredictions(encoder.dim, encoder.embed, prediction_steps,
                                                      encoder.arch["dropout"])
        self.prediction_steps = prediction_steps
        self.num_negatives = num_negatives
        self.offset = offset
        self.balanced_classes = bool(balanced_classes)
        self.generator = context.generator

    def config(self) -> dict:
        return {"objective": "wav2vec-bce", "prediction_steps": self.prediction_steps,
                "num_negatives": self.num_negatives, "offset": self.offset,
                "balanced_classes": self.balanced_classes, "negatives": "same utterance, valid frames, uniform",
                "normalisation": "per positive"}

    def sample_negatives(self, frames: torch.Tensor, max_frames: int) -> torch.Tensor:
        """Indices [B, max_frames, N]: for target position j of row b, uniform over the valid
        frames 0..frames[b]-1 other than j (fairseq's draw-from-high-1-and-skip)."""
        frames = frames.cpu()
        others = (frames - 1).clamp(min=1).to(torch.float64).reshape(-1, 1, 1)
        u = torch.rand((len(frames), max_frames, self.num_negatives), generator=self.generator, dtype=torch.float64)
        idx = torch.minimum((u * others).floor(), others - 1).to(torch.long)
        idx = idx + (idx >= torch.arange(max_frames).reshape(1, -1, 1)).to(torch.long)
        return idx.clamp(max=max(max_frames - 1, 0))

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor, info=None) -> dict[str, torch.Tensor]:
        z, c, frames = self.encoder.encode(wav, lengths)
        batch, _, n_frames = z.shape
        if n_frames <= self.offset or int(frames.max()) <= self.offset:
            return self._nothing_to_predict(z)
        x = self.wav2vec_predictions(self.encoder.dropout_agg(c))  # [B, C, T, S]
        negs_idx = self.sample_negatives(frames, n_frames).to(z.device)
        zt = z.transpose(1, 2)  # [B, T, C]
        negs = zt[torch.arange(batch, device=z.device).reshape(-1, 1, 1), negs_idx]  # [B, T, N, C]
        frames = frames.to(z.device)
        neg_weight = 1.0 / self.num_negatives if self.balanced_classes else 1.0
        total = x.new_zeros(())
        n_pos = x.new_zeros(())
        n_correct = x.new_zeros(())
        for step in range(min(self.prediction_steps, n_frames - self.offset)):
            off = self.offset + step
            pred = x[:, :, : n_frames - off, step]                                   # [B, C, T-off]
            pos = (pred * z[:, :, off:]).sum(dim=1)                                  # [B, T-off]
            neg = torch.einsum("bct,btnc->btn", pred, negs[:, off:])                 # [B, T-off, N]
            valid = (torch.arange(n_frames - off, device=z.device).reshape(1, -1) + off
                     < frames.reshape(-1, 1)).to(x.dtype)                            # target is a valid frame
            loss = F.softplus(-pos) + neg_weight * F.softplus(neg).sum(dim=-1)       # BCE: label 1 / label 0
            total = total + (loss * valid).sum()
            n_pos = n_pos + valid.sum()
            with torch.no_grad():
                n_correct = n_correct + ((pos > neg.max(dim=-1).values).to(x.dtype) * valid).sum()
        if n_pos.item() == 0:
            return self._nothing_to_predict(z)
        return {"loss": total / n_pos, "acc": (n_correct / n_pos).detach()}

    def _nothing_to_predict(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every clip too short for a target: a zero loss that still backpropagates (zero grads)."""
        zero = sum(p.reshape(-1)[0] for p in self.parameters()) * 0.0
        return {"loss": zero, "acc": z.new_zeros(())}

    def load_published(self, path: str | Path) -> None:
        """Load a fairseq/s3prl checkpoint into the encoder AND the prediction head."""
        ckpt = read_published_checkpoint(path)
        if ckpt is None:
            raise ConfigError(f"{path}: not a fairseq or s3prl wav2vec checkpoint.")
        self.encoder.load_published(ckpt)
        head = {k[len(HEAD_PREFIX):]: v for k, v in ckpt.state.items() if k.startswith(HEAD_PREFIX)}
        load_state_exactly(self.wav2vec_predictions, head, source=ckpt.path,
                           hint=f"(the {HEAD_PREFIX}* keys; prediction_steps of the checkpoint: "
                                f"{ckpt.objective['prediction_steps']})")
