"""Batched spectral feature functions in torch, matching librosa's conventions.

torchaudio-style `functional`: plain functions on tensors, batched, device-agnostic and
differentiable where that is natural (STFT, mel projection, log, DCT, deltas, CMVN). The
constant matrices (mel filterbank, DCT, Savitzky-Golay weights) are computed once in float64 with
librosa/numpy and cached on the CPU; callers move them to their device (or register them as
buffers).

Layout: time is the LAST axis everywhere here (`[B, C, frames]`, as librosa and torchaudio), and
`lengths` always counts valid items along that axis. Functions that take `lengths` use the valid
part of each row only, so the padding of a batch never leaks into the features of a shorter clip.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

WINDOWS = ("hann", "hamming")
# librosa 0.11 stft pads with zeros for center=True; torch.stft also knows "reflect".
PAD_MODES = ("constant", "reflect")


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean [B, max_len]: True at positions < lengths[b]."""
    return torch.arange(max_len, device=lengths.device) < lengths.reshape(-1, 1)


def frame_lengths(lengths: torch.Tensor, hop: int, center: bool = True, n_fft: int | None = None) -> torch.Tensor:
    """Number of valid STFT frames for each signal length.

    center=True (librosa's default): 1 + len // hop, the frame count of a clip computed alone.
    center=False needs n_fft: 1 + (len - n_fft) // hop, never below 0.
    """
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    if center:
        return torch.div(lengths, hop, rounding_mode="floor") + 1
    if n_fft is None:
        raise ValueError("frame_lengths(center=False) needs n_fft")
    return (torch.div(lengths - n_fft, hop, rounding_mode="floor") + 1).clamp(min=0)


@lru_cache(maxsize=32)
def _window64(window: str, win_length: int) -> torch.Tensor:
    # Periodic ("fftbins=True") windows, as scipy.signal.get_window and librosa use for STFTs.
    if window == "hann":
        return torch.hann_window(win_length, periodic=True, dtype=torch.float64)
    if window == "hamming":
        return torch.hamming_window(win_length, periodic=True, dtype=torch.float64)
    raise ValueError(f"unknown window {window!r}; use one of {', '.join(WINDOWS)}")


def stft_power(wav: torch.Tensor, n_fft: int, win_length: int | None = None, hop_length: int | None = None,
               window: str = "hann", center: bool = True, pad_mode: str = "constant") -> torch.Tensor:
    """Power spectrogram |STFT|^2, [B, T] -> [B, n_fft // 2 + 1, frames].

    Same framing as librosa.stft: a periodic window of win_length zero-padded to n_fft in the
    middle, and with center=True the signal padded by n_fft // 2 on each side (zeros by default,
    librosa 0.11's pad_mode="constant"), giving 1 + T // hop frames.
    """
    win_length = win_length or n_fft
    hop_length = hop_length or win_length // 4
    if win_length > n_fft:
        raise ValueError(f"win_length {win_length} is longer than n_fft {n_fft}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"unknown pad_mode {pad_mode!r}; use one of {', '.join(PAD_MODES)}")
    squeeze = wav.dim() == 1
    if squeeze:
        wav = wav.unsqueeze(0)
    win = _window64(window, win_length).to(device=wav.device, dtype=wav.dtype)
    spec = torch.stft(wav, n_fft=n_fft, hop_length=hop_length, win_length=win_length, window=win,
                      center=center, pad_mode=pad_mode, normalized=False, onesided=True, return_complex=True)
    power = spec.real.square() + spec.imag.square()
    return power.squeeze(0) if squeeze else power


@lru_cache(maxsize=32)
def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> torch.Tensor:
    """Slaney-style mel filterbank [n_mels, n_fft // 2 + 1] from librosa.filters.mel (htk=False,
    norm="slaney"), float32 on the CPU. Cached: treat the result as read-only."""
    import librosa

    fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False,
                             norm="slaney", dtype=np.float64)
    return torch.from_numpy(fb.astype(np.float32))


def mel_spectrogram(power: torch.Tensor, fbank: torch.Tensor) -> torch.Tensor:
    """Project a power spectrogram [B, F, frames] onto mel bands [n_mels, F] -> [B, n_mels, frames]."""
    return torch.matmul(fbank.to(device=power.device, dtype=power.dtype), power)


def power_to_db(S: torch.Tensor, ref: float = 1.0, amin: float = 1e-10, top_db: float | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
    """10 * log10(max(S, amin) / ref), as librosa.power_to_db with a scalar ref.

    top_db clips each item of a batch [B, ..., T] to (its maximum - top_db), like librosa on one
    clip; a 1-D or 2-D S is one item. With `lengths` (valid frames per item, batched input only)
    the maximum is taken over valid frames only, so padding cannot move it.
    """
    if amin <= 0:
        raise ValueError("amin must be strictly positive")
    if ref <= 0:
        raise ValueError("ref must be strictly positive")
    log_spec = 10.0 * torch.log10(S.clamp(min=amin))
    log_spec = log_spec - 10.0 * math.log10(max(amin, ref))
    if top_db is None:
        return log_spec
    if top_db < 0:
        raise ValueError("top_db must be non-negative")
    if S.dim() < 3:  # one spectrogram [F, T] (or [T]): its global peak, as librosa
        return torch.maximum(log_spec, log_spec.max() - top_db)
    flat = log_spec.reshape(log_spec.shape[0], -1, log_spec.shape[-1])  # [B, C, T]
    if lengths is not None:
        valid = length_mask(lengths.to(flat.device), flat.shape[-1]).unsqueeze(1)
        flat = flat.masked_fill(~valid, float("-inf"))
    peak = flat.amax(dim=(1, 2)).reshape((-1,) + (1,) * (S.dim() - 1))
    return torch.maximum(log_spec, peak - top_db)


@lru_cache(maxsize=32)
def dct_matrix(n_mfcc: int, n_mels: int) -> torch.Tensor:
    """Orthonormal DCT-II [n_mfcc, n_mels]: D @ x == scipy.fft.dct(x, type=2, norm="ortho")[:n_mfcc],
    the transform librosa.feature.mfcc applies over mel bands. Cached: treat as read-only."""
    if n_mfcc > n_mels:
        raise ValueError(f"n_mfcc {n_mfcc} exceeds n_mels {n_mels}")
    n = np.arange(n_mels, dtype=np.float64)
    k = np.arange(n_mfcc, dtype=np.float64)[:, None]
    d = np.cos(np.pi * k * (2.0 * n + 1.0) / (2.0 * n_mels)) * np.sqrt(2.0 / n_mels)
    d[0] *= 1.0 / np.sqrt(2.0)
    return torch.from_numpy(d.astype(np.float32))


@lru_cache(maxsize=32)
def _savgol_table(width: int, order: int) -> torch.Tensor:
    """Row w (0..width): weights over a w-frame window that give the order-th derivative of the
    least-squares polynomial of degree `order` fitted to it (zeros past w; all zeros when w <= order,
    as no such polynomial bends). For a degree-`order` fit that derivative is the same anywhere in
    the window, which is what makes librosa's mode="interp" edges a copy of the nearest full window.
    """
    table = np.zeros((width + 1, width), dtype=np.float64)
    for w in range(order + 1, width + 1):
        pos = np.arange(w, dtype=np.float64) - (w - 1) / 2.0  # centred for conditioning
        vander = np.vander(pos, order + 1, increasing=True)  # [w, order + 1]
        table[w, :w] = math.factorial(order) * np.linalg.pinv(vander)[order]
    return torch.from_numpy(table)


def deltas(x: torch.Tensor, width: int = 9, order: int = 1, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Delta features of x [B, ..., T] along time, as librosa.feature.delta(x, width, order, mode="interp").

    librosa runs scipy's savgol_filter(polyorder=order, deriv=order, mode="interp"): inside, the
    Savitzky-Golay derivative over a centred `width`-frame window; in the first and last width // 2
    frames, the derivative of the fit to the first (last) `width` frames, which is the centred
    value at frame width // 2 (T - 1 - width // 2). With `lengths`, each row's edges are its own
    valid ends and frames beyond it are zero. Where a row has fewer than `width` frames (librosa
    refuses those) the fit covers all of its frames.
    """
    if x.dim() == 1:
        return deltas(x.unsqueeze(0), width, order, lengths).squeeze(0)
    if width < 3 or width % 2 == 0:
        raise ValueError(f"width must be an odd integer >= 3, got {width}")
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    B, T = x.shape[0], x.shape[-1]
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long, device=x.device)
    lengths = lengths.to(device=x.device, dtype=torch.long).clamp(max=T)
    shape = x.shape
    x3 = x.reshape(B, -1, T)  # [B, C, T]
    half = width // 2
    w = lengths.clamp(max=width)  # window actually fitted per row
    weights = _savgol_table(width, order).to(device=x.device, dtype=x.dtype)[w]  # [B, width]
    # Value of the fit starting at every frame s: sum_j weights[j] * x[s + j].
    windows = F.pad(x3, (0, width - 1)).unfold(-1, width, 1)  # [B, C, T, width]
    by_start = torch.einsum("bctj,bj->bct", windows, weights)
    t = torch.arange(T, device=x.device)
    start = torch.minimum((t - half).clamp(min=0).unsqueeze(0), (lengths - w).unsqueeze(1))  # [B, T]
    out = torch.gather(by_start, -1, start.unsqueeze(1).expand(-1, x3.shape[1], -1))
    out = out * length_mask(lengths, T).unsqueeze(1).to(out.dtype)
    return out.reshape(shape)


def cmvn(x: torch.Tensor, lengths: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Per-utterance mean and variance normalisation of x [B, ..., T] over each item's valid frames.

    Statistics come from frames < lengths[b] only, and frames beyond are set to zero, so a clip's
    features do not depend on what it is batched with. eps is added to the variance: it keeps a
    channel that never varies (digital silence) near 0 instead of blowing float32 roundoff up to
    O(1), and is negligible next to the variances of dB-scale features (>= 1e-2 on speech).
    """
    B, T = x.shape[0], x.shape[-1]
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long, device=x.device)
    lengths = lengths.to(device=x.device, dtype=torch.long).clamp(max=T)
    mask = length_mask(lengths, T).to(x.dtype).reshape((B,) + (1,) * (x.dim() - 2) + (T,))
    count = lengths.clamp(min=1).to(x.dtype).reshape((B,) + (1,) * (x.dim() - 1))
    mean = (x * mask).sum(-1, keepdim=True) / count
    centred = (x - mean) * mask
    var = centred.square().sum(-1, keepdim=True) / count
    return centred * torch.rsqrt(var + eps)
