"""A small HEAR 2021 module, written for the tests: log-power spectra of framed audio, projected.

It follows the HEAR API (https://hearbenchmark.com/hear-api.html) and hearbaseline's framing:
frames of FRAME samples centred on round(k * step) (the audio zero-padded by half a frame at each
end), k = 0, 1, ... while the frame still ends inside the padded audio; timestamps in ms at the
centres. The hop, 25 ms at 22.05 kHz, is a fractional 551.25 samples, as many real modules' are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SAMPLE_RATE = 22_050
HOP_MS = 25.0
FRAME = 1024
DIM = 64


class ToyModel(torch.nn.Module):
    sample_rate = SAMPLE_RATE
    scene_embedding_size = DIM
    timestamp_embedding_size = DIM

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.projection = torch.nn.Parameter(torch.randn(FRAME // 2 + 1, DIM, generator=generator) / 23.0)
        self.register_buffer("window", torch.hann_window(FRAME))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        power = torch.fft.rfft(frames * self.window).abs() ** 2
        return torch.log(power + 1e-6) @ self.projection


def load_model(model_file_path: str = "") -> ToyModel:
    model = ToyModel()
    if model_file_path:
        model.load_state_dict(torch.load(model_file_path, map_location="cpu", weights_only=True))
    return model


def frame_starts(samples: int, hop_ms: float = HOP_MS) -> list[int]:
    step = hop_ms / 1000.0 * SAMPLE_RATE
    starts, k = [], 0
    while math.floor(k * step + 0.5) <= samples:
        starts.append(math.floor(k * step + 0.5))
        k += 1
    return starts


def get_timestamp_embeddings(audio: torch.Tensor, model: ToyModel) -> tuple[torch.Tensor, torch.Tensor]:
    if audio.ndim != 2:
        raise ValueError("audio must be [n_sounds, n_samples]")
    padded = F.pad(audio, (FRAME // 2, FRAME - FRAME // 2))
    starts = frame_starts(audio.shape[1])
    frames = torch.stack([padded[:, s:s + FRAME] for s in starts], dim=1)
    model = model.to(audio.device)
    with torch.no_grad():
        embeddings = model(frames)
    timestamps = torch.arange(len(starts), dtype=torch.float32) * HOP_MS
    return embeddings, timestamps.expand(audio.shape[0], -1).to(audio.device)


def get_scene_embeddings(audio: torch.Tensor, model: ToyModel) -> torch.Tensor:
    return get_timestamp_embeddings(audio, model)[0].mean(dim=1)
