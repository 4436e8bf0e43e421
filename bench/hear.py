"""Every registered avbench encoder as a HEAR 2021 module: `import bench.hear`.

HEAR 2021's common API (Turian et al., PMLR 176, 2022; https://hearbenchmark.com/hear-api.html),
the rules this module follows (tests/test_hear.py checks each one, and `tox -e hear` runs the
published `hearvalidator` on mfcc39, apc and av-joint):

1. `load_model(model_file_path: str = "")` returns a model object; for PyTorch, a torch.nn.Module.
2. The model has the attributes `sample_rate` (one of 16000, 22050, 44100, 48000),
   `scene_embedding_size` and `timestamp_embedding_size` (ints).
3. `get_timestamp_embeddings(audio, model)`: audio is a float tensor [n_sounds, n_samples] in
   [-1, 1] at the model's rate, on the model's device; it returns (embeddings [n_sounds,
   n_timestamps, timestamp_embedding_size] float32, timestamps [n_sounds, n_timestamps]) with the
   timestamps in milliseconds at the centres of the frames, regularly spaced.
4. `get_scene_embeddings(audio, model)` returns [n_sounds, scene_embedding_size] float32.

Which encoder. `model_file_path` (what `hear-validator -m`, or heareval's `--model`, passes) is:

- `NAME`: a registered encoder with its initial weights (e.g. `mfcc39`; random weights for an SSL
  encoder such as `av-joint`, with a warning);
- `NAME@CHECKPOINT`: the encoder with a checkpoint's weights (e.g. `av-joint@runs/pt/encoder.pt`);
- a path to a checkpoint that avbench's pretraining wrote (`encoder.pt`): it records its encoder's
  name and settings, so the path alone is enough. For a checkpoint that does not (a bare state
  dict), name the encoder in the environment: `AVBENCH_HEAR_ENCODER=av-joint`, or pass
  `NAME@CHECKPOINT`;
- empty (`load_model()`): the encoder named by `AVBENCH_HEAR_ENCODER` (NAME or NAME@CHECKPOINT).

Timestamps are the encoder's frame centres (`Encoder.frame_centres`). Scene embeddings are the mean
of the timestamp embeddings over time, as hearbaseline does. A sound shorter than one frame of the
encoder is zero-padded to one frame, so every sound gets an embedding. Embeddings are computed
without gradients, in the model's eval mode.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Tuple

import torch
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.registry import Encoder, create_encoder, encoder_entry, split_spec

log = logging.getLogger("avbench.hear")

ENCODER_VARIABLE = "AVBENCH_HEAR_ENCODER"
HEAR_SAMPLE_RATES = (16000, 22050, 44100, 48000)
HEAR_API = "https://hearbenchmark.com/hear-api.html"


class HearModel(nn.Module):
    """An avbench encoder with HEAR's model attributes."""

    def __init__(self, encoder: Encoder, spec: str) -> None:
        super().__init__()
        self.encoder = encoder.eval()
        self.spec = spec
        self.sample_rate = int(encoder.sample_rate)
        if self.sample_rate not in HEAR_SAMPLE_RATES:
            raise ConfigError(f"{spec}: HEAR models take audio at one of {HEAR_SAMPLE_RATES} Hz; this encoder's "
                              f"sample_rate is {self.sample_rate}.")
        self.timestamp_embedding_size = int(encoder.dim)
        self.scene_embedding_size = int(encoder.dim)
        self.min_samples = shortest_clip_with_a_frame(encoder)
        # Follows .to(device): where the caller's audio must go.
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    def train(self, mode: bool = True) -> "HearModel":
        # Embeddings are a frozen encoder's: dropout and batch statistics stay off whatever a caller sets.
        super().train(mode)
        self.encoder.eval()
        return self


def shortest_clip_with_a_frame(encoder: Encoder, limit: int = 1 << 20) -> int:
    """The fewest samples for which the encoder gives one output frame (binary search)."""
    if int(encoder.output_lengths(torch.tensor([1]))[0]) >= 1:
        return 1
    low, high = 1, 2
    while int(encoder.output_lengths(torch.tensor([high]))[0]) < 1:
        low, high = high, high * 2
        if high > limit:
            raise ConfigError(f"encoder {encoder.name!r} gives no frame even for {limit} samples")
    while high - low > 1:
        mid = (low + high) // 2
        if int(encoder.output_lengths(torch.tensor([mid]))[0]) >= 1:
            high = mid
        else:
            low = mid
    return high


def _checkpoint_metadata(path: Path) -> dict:
    """The dict an avbench checkpoint holds ({} for a file that is not one), read without running code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path}: not a checkpoint torch can read safely ({type(exc).__name__}: {exc}); give an "
                          "encoder.pt that `avbench pretrain` wrote, or NAME@CHECKPOINT.") from exc
    return state if isinstance(state, dict) else {}


def _spec_from(model_file_path: str) -> tuple[str, dict | None]:
    """NAME or NAME@CHECKPOINT from what load_model was given (see the module docstring), and the
    checkpoint's contents when reading them named the encoder (None when they were not read)."""
    given = str(model_file_path or "").strip()
    named = os.environ.get(ENCODER_VARIABLE, "").strip()
    if not given:
        if not named:
            raise ConfigError(f"bench.hear.load_model needs an encoder: pass NAME or NAME@CHECKPOINT as the model "
                              f"file path (hear-validator bench.hear -m mfcc39) or set {ENCODER_VARIABLE}=NAME. "
                              "`avbench list` names the encoders.")
        return named, None
    path = Path(given)
    if "@" in given or not path.is_file():
        return given, None
    saved = _checkpoint_metadata(path)
    name = saved.get("encoder_name")
    if name:
        if named and split_spec(named)[0] != name:
            raise ConfigError(f"{path}: the checkpoint is {name!r}'s but {ENCODER_VARIABLE} names {named!r}")
        return f"{name}@{path}", saved
    if named:
        return f"{split_spec(named)[0]}@{path}", saved
    raise ConfigError(f"{path}: the checkpoint does not record its encoder (no 'encoder_name'); pass "
                      f"NAME@{path} as the model file path, or set {ENCODER_VARIABLE}=NAME.")


def load_model(model_file_path: str = "") -> HearModel:
    """The HEAR model of an avbench encoder: NAME, NAME@CHECKPOINT, an avbench checkpoint, or $AVBENCH_HEAR_ENCODER."""
    spec, saved = _spec_from(model_file_path)
    name, checkpoint = split_spec(spec)
    if saved is None and checkpoint and Path(checkpoint).is_file():
        saved = _checkpoint_metadata(Path(checkpoint))
    kwargs = (saved or {}).get("encoder_kwargs")
    kwargs = dict(kwargs) if isinstance(kwargs, dict) else {}  # the settings pretraining built the encoder with
    if not checkpoint and getattr(encoder_entry(name.partition(":")[0]).factory, "needs_pretraining", False):
        log.warning("bench.hear: %s has no checkpoint, so its weights are random; pass %s@CHECKPOINT", name, name)
    encoder = create_encoder(spec, **kwargs)
    return HearModel(encoder, spec)


def _check_audio(audio: Tensor, model: HearModel) -> Tensor:
    if not isinstance(model, HearModel):
        raise ValueError(f"model must come from bench.hear.load_model, got {type(model).__name__}")
    if not isinstance(audio, Tensor) or audio.dim() != 2:
        raise ValueError("audio must be a 2D tensor [n_sounds, n_samples] (HEAR API)")
    audio = audio.to(device=model._device_probe.device, dtype=torch.float32)
    if audio.shape[1] < model.min_samples:
        audio = torch.nn.functional.pad(audio, (0, model.min_samples - audio.shape[1]))
    return audio


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> Tuple[Tensor, Tensor]:
    """(embeddings [n_sounds, T, D] float32, timestamps [n_sounds, T] in ms at the frame centres)."""
    audio = _check_audio(audio, model)
    n_sounds, samples = audio.shape
    lengths = torch.full((n_sounds,), samples, dtype=torch.long, device=audio.device)
    with torch.no_grad():
        feats, out_lengths = model.encoder(audio, lengths)
    frames = int(out_lengths.max()) if n_sounds else int(model.encoder.output_lengths(torch.tensor([samples]))[0])
    embeddings = feats[:, :frames].to(torch.float32).contiguous()
    centres_ms = (model.encoder.frame_centres(frames) * 1000.0).to(torch.float32).to(audio.device)
    return embeddings, centres_ms.expand(n_sounds, frames).contiguous()


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """[n_sounds, D] float32: the timestamp embeddings' mean over time."""
    embeddings, _ = get_timestamp_embeddings(audio, model)
    return embeddings.mean(dim=1)
