"""Kaldi-style log-mel filterbanks in torch, batched: the conventions of compute-fbank-feats.

APC's published checkpoints (s3prl `upstream/apc`) were trained on `torchaudio.compliance.kaldi.fbank`
features, so an APC that is to load them must see the same numbers. torchaudio itself cannot be
installed next to avbench's CPU torch (its wheels are linked against a CUDA torch), and its fbank
takes one clip at a time, so this module re-implements the same arithmetic for a padded batch
[B, T] with per-clip lengths. The conventions, all from torchaudio's `compliance/kaldi.py` (which
mirrors Kaldi's feature-window.cc / mel-computations.cc):

- framing `snip_edges=True`: only frames that fit entirely in the clip, frame t covering samples
  [t * shift, t * shift + size), so a clip of n samples gives 1 + (n - size) // shift frames (none
  below `size` samples; torchaudio refuses such clips). Window and shift in samples are
  int(sample_rate * ms * 0.001), Kaldi's truncation: 400 and 160 at 16 kHz for 25 ms / 10 ms;
- no dither (torchaudio's default, and what makes features deterministic); Kaldi's CLI dithers;
- per frame: remove the DC offset (subtract the frame mean), then pre-emphasis
  x[j] - 0.97 * x[j - 1] with x[-1] := x[0] (so the first sample becomes 0.03 * x[0]);
- a symmetric window of `size` samples: "hamming" 0.54 - 0.46 cos(2 pi n / (N - 1)), "hanning"
  (symmetric Hann), "povey" (Kaldi's default: Hann ** 0.85), "rectangular", "blackman" (coefficient
  0.42). Kaldi and torchaudio default to "povey"; APC's s3prl front end hard-codes "hamming", which
  is also what the APC paper describes, so that is our default;
- zero-padded to the next power of two (512 for 400 samples), |rfft|^2 (power, not magnitude);
- triangular filters that are linear on the HTK mel scale 1127 ln(1 + f / 700), between low_freq
  (20 Hz) and high_freq (0 = Nyquist, negative = offset from it), centres equally spaced in mel,
  peak 1 and no area normalisation; the Nyquist bin gets weight 0;
- natural log with a floor at float32's epsilon (1.1920929e-07), not an additive offset.

Layout: time is the MIDDLE axis here, [B, frames, bins], as Kaldi and torchaudio write fbank
matrices (and as APC's GRU reads them). Padding never leaks: a valid frame only covers samples
below its clip's length, and frames beyond each clip's count are zero.

`utterance_cmvn` is the per-utterance normalisation of s3prl's APC front end:
(x - mean) / (1e-10 + std) per bin over the clip's frames, with the unbiased (n - 1) std.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from bench.errors import ConfigError

__all__ = ["WINDOW_TYPES", "FLOAT_EPSILON", "window_sizes", "num_frames", "feature_window", "mel_banks",
           "fbank", "utterance_cmvn"]

WINDOW_TYPES = ("hamming", "hanning", "povey", "rectangular", "blackman")
# std::numeric_limits<float>::epsilon(): Kaldi's (and torchaudio's) floor before the log.
FLOAT_EPSILON = float(np.finfo(np.float32).eps)
BLACKMAN_COEFF = 0.42  # torchaudio's default generalised-Blackman coefficient


def window_sizes(sample_rate: float, frame_length: float, frame_shift: float,
                 round_to_power_of_two: bool = True) -> tuple[int, int, int]:
    """(window size, shift, FFT size) in samples for frame_length/frame_shift in milliseconds.

    Kaldi truncates: int(sample_rate * ms * 0.001), evaluated in this order as torchaudio does.
    The FFT size is the next power of two at or above the window when round_to_power_of_two.
    """
    size = int(sample_rate * frame_length * 0.001)
    shift = int(sample_rate * frame_shift * 0.001)
    if size < 2:
        raise ConfigError(f"frame_length {frame_length} ms gives a window of {size} samples at "
                          f"{sample_rate} Hz; need at least 2")
    if shift < 1:
        raise ConfigError(f"frame_shift {frame_shift} ms gives a shift of {shift} samples at {sample_rate} Hz")
    n_fft = 1 << (size - 1).bit_length() if round_to_power_of_two else size
    if n_fft % 2:
        raise ConfigError(f"the FFT size {n_fft} must be even: set round_to_power_of_two=True or change "
                          "frame_length")
    return size, shift, n_fft


def num_frames(lengths: torch.Tensor, size: int, shift: int) -> torch.Tensor:
    """snip_edges frame counts: 1 + (n - size) // shift for n >= size, else 0."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    frames = torch.div(lengths - size, shift, rounding_mode="floor") + 1
    return torch.where(lengths >= size, frames, torch.zeros_like(frames))


@lru_cache(maxsize=32)
def _window64(window_type: str, size: int) -> torch.Tensor:
    n = torch.arange(size, dtype=torch.float64)
    a = 2.0 * math.pi / (size - 1)  # symmetric windows: period N - 1
    if window_type == "hamming":
        return 0.54 - 0.46 * torch.cos(a * n)
    if window_type == "hanning":
        return 0.5 - 0.5 * torch.cos(a * n)
    if window_type == "povey":
        return (0.5 - 0.5 * torch.cos(a * n)).pow(0.85)
    if window_type == "rectangular":
        return torch.ones(size, dtype=torch.float64)
    if window_type == "blackman":
        return BLACKMAN_COEFF - 0.5 * torch.cos(a * n) + (0.5 - BLACKMAN_COEFF) * torch.cos(2 * a * n)
    raise ConfigError(f"unknown window_type {window_type!r}; use one of {', '.join(WINDOW_TYPES)}")


def feature_window(window_type: str, size: int) -> torch.Tensor:
    """Kaldi's symmetric analysis window [size], float64 on the CPU (cached: treat as read-only)."""
    return _window64(window_type, size)


@lru_cache(maxsize=32)
def mel_banks(num_bins: int, n_fft: int, sample_rate: float, low_freq: float = 20.0,
              high_freq: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular mel filters [num_bins, n_fft // 2 + 1], float64 on the CPU (cached).

    Filter m rises linearly in mel from left_m to centre_m and falls to right_m, with
    left_m = mel(low) + m * delta and delta = (mel(high) - mel(low)) / (num_bins + 1); FFT bin k
    sits at k * sample_rate / n_fft Hz. The last (Nyquist) column is zero, as in Kaldi.
    """
    if num_bins <= 3:
        raise ConfigError(f"num_mel_bins must be at least 4 (Kaldi's limit), got {num_bins}")
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ConfigError(f"mel range: need 0 <= low_freq < high_freq <= {nyquist:g} Hz (high_freq <= 0 is an "
                          f"offset from Nyquist), got low_freq={low_freq}, high_freq={high_freq}")

    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)

    lo, hi = float(mel(low_freq)), float(mel(high_freq))
    delta = (hi - lo) / (num_bins + 1)
    left = lo + delta * np.arange(num_bins, dtype=np.float64)[:, None]
    centre, right = left + delta, left + 2.0 * delta
    bin_mel = mel(np.arange(n_fft // 2, dtype=np.float64) * (sample_rate / n_fft))[None, :]
    up = (bin_mel - left) / (centre - left)
    down = (right - bin_mel) / (right - centre)
    banks = np.maximum(0.0, np.minimum(up, down))
    banks = np.concatenate([banks, np.zeros((num_bins, 1))], axis=1)
    return torch.from_numpy(banks)


def fbank(wav: torch.Tensor, lengths: torch.Tensor | None = None, *, sample_rate: float = 16_000,
          num_mel_bins: int = 80, frame_length: float = 25.0, frame_shift: float = 10.0,
          window_type: str = "hamming", preemphasis_coefficient: float = 0.97, remove_dc_offset: bool = True,
          round_to_power_of_two: bool = True, low_freq: float = 20.0, high_freq: float = 0.0,
          window: torch.Tensor | None = None, banks: torch.Tensor | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel filterbank energies of a padded batch, as torchaudio.compliance.kaldi.fbank per clip.

    wav [B, T] (or [T]) with `lengths` [B] valid samples (default: all T) ->
    (feats [B, frames, num_mel_bins], frames [B]) with frames = 1 + (length - size) // shift; rows
    past a clip's frame count are zero. Options are kaldi.fbank's, with dither 0, snip_edges=True,
    use_power and use_log_fbank fixed; window_type defaults to "hamming" (Kaldi's is "povey").
    `window` [size] and `banks` [num_mel_bins, n_fft // 2 + 1] may be passed precomputed (e.g. as
    module buffers on the right device); they must be what these options give.
    Differentiable in wav. Clips shorter than one window give zero frames (torchaudio raises).
    """
    squeeze = wav.dim() == 1
    if squeeze:
        wav = wav.unsqueeze(0)
    if wav.dim() != 2:
        raise ValueError(f"wav must be [B, T] or [T], got shape {tuple(wav.shape)}")
    if not 0.0 <= preemphasis_coefficient <= 1.0:
        raise ConfigError(f"preemphasis_coefficient must be in [0, 1], got {preemphasis_coefficient}")
    size, shift, n_fft = window_sizes(sample_rate, frame_length, frame_shift, round_to_power_of_two)
    B, T = wav.shape
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long)
    lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(max=T)
    frames = num_frames(lengths, size, shift)
    M = max(int(frames.max()) if B else 0, 0)
    if M == 0:
        return wav.new_zeros(B, 0, num_mel_bins), frames
    # Zero the padding anyway: then even a caller who reads past `frames` sees no foreign samples.
    wav = wav * (torch.arange(T, device=wav.device) < lengths[:, None]).to(wav.dtype)
    x = wav[:, : (M - 1) * shift + size].unfold(-1, size, shift)  # [B, M, size] (a view)
    if remove_dc_offset:
        x = x - x.mean(dim=-1, keepdim=True)
    if preemphasis_coefficient != 0.0:
        previous = torch.cat([x[..., :1], x[..., :-1]], dim=-1)
        x = x - preemphasis_coefficient * previous
    if window is None:
        window = feature_window(window_type, size)
    x = x * window.to(device=wav.device, dtype=wav.dtype)
    spec = torch.fft.rfft(x, n=n_fft, dim=-1)  # zero-pads each frame on the right to n_fft
    power = spec.real.square() + spec.imag.square()
    if banks is None:
        banks = mel_banks(num_mel_bins, n_fft, float(sample_rate), float(low_freq), float(high_freq))
    if banks.shape != (num_mel_bins, n_fft // 2 + 1):
        raise ValueError(f"banks must be [{num_mel_bins}, {n_fft // 2 + 1}], got {tuple(banks.shape)}")
    mel = torch.matmul(power, banks.to(device=wav.device, dtype=wav.dtype).T)  # [B, M, bins]
    feats = mel.clamp(min=FLOAT_EPSILON).log()
    valid = (torch.arange(M, device=wav.device) < frames.to(wav.device)[:, None]).unsqueeze(-1)
    feats = feats * valid.to(feats.dtype)
    return (feats.squeeze(0), frames.squeeze(0)) if squeeze else (feats, frames)


def utterance_cmvn(x: torch.Tensor, lengths: torch.Tensor | None = None, eps: float = 1e-10) -> torch.Tensor:
    """Per-utterance CMVN of x [B, T, C] over each clip's valid frames: (x - mean) / (eps + std).

    s3prl's APC front end (its `CMVN` module) divides by eps + the unbiased (n - 1) standard
    deviation, eps = 1e-10. Statistics come from frames < lengths[b] only and frames beyond are
    zero. They are accumulated in float64: in float32, a bin that is constant over the clip (digital
    silence floors every bin at log(eps)) would keep a roundoff residue of ~1e-7 that the tiny eps
    blows up to ~1e3; in float64 the mean of identical values is exact, so such a bin becomes 0.
    A clip with a single frame has no unbiased std (s3prl gives NaN); here its features are 0.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, C], got shape {tuple(x.shape)}")
    B, T, _ = x.shape
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long)
    lengths = torch.as_tensor(lengths, device=x.device).to(torch.long).clamp(max=T)
    x64 = x.to(torch.float64)
    mask = (torch.arange(T, device=x.device) < lengths[:, None]).to(torch.float64).unsqueeze(-1)  # [B, T, 1]
    count = lengths.to(torch.float64).reshape(B, 1, 1)
    mean = (x64 * mask).sum(1, keepdim=True) / count.clamp(min=1.0)
    centred = (x64 - mean) * mask
    std = (centred.square().sum(1, keepdim=True) / (count - 1.0).clamp(min=1.0)).sqrt()
    return (centred / (std + eps)).to(x.dtype)
