"""The PASE+ regression targets: the signal processing behind each regression worker.

Each function turns a clean batch [B, T] into one worker's target at 100 Hz (log power spectrum,
log mel filterbank, log gammatone energies, MFCCs, prosody with its batched F0 tracker), and
`compute_targets` assembles the named ones with deltas and batch z-normalisation. They live apart
from the workers (baselines.pase_workers) because they are pure feature computations, with no
parameters and no randomness, reused outside the pretext (encoders.attributes takes `pitch`).
How each one follows or departs from the reference is in baselines.pase_workers' docstring.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from baselines import functional as AF
from bench.errors import ConfigError

SAMPLE_RATE = 16_000
HOP = 160  # targets at 100 Hz, the encoder's frame rate
REGRESSION_WORKERS = ("lps", "lps_long", "fbank", "fbank_long", "gtn", "gtn_long", "mfcc", "mfcc_long", "prosody")


def _frames(wav: torch.Tensor, win: int, n_frames: int, center: bool) -> torch.Tensor:
    """[B, T] -> [B, n_frames, win]: frame j starts at j * HOP (minus win // 2 when centred), zeros outside."""
    left = win // 2 if center else 0
    need = (n_frames - 1) * HOP + win
    x = F.pad(wav, (left, max(0, need - left - wav.shape[-1])))
    return x.unfold(-1, win, HOP)[:, :n_frames]


def _next_pow2(n: int) -> int:
    return 1 << (int(n) - 1).bit_length()


def _power(frames: torch.Tensor, n_fft: int) -> torch.Tensor:
    """|rfft|^2 of each frame (rectangular window), [B, n, win] -> [B, n_fft // 2 + 1, n]."""
    spec = torch.fft.rfft(frames, n=n_fft)
    return (spec.real.square() + spec.imag.square()).transpose(1, 2)


def log_power_spectrum(wav: torch.Tensor, n_frames: int, win: int, n_fft: int) -> torch.Tensor:
    """pase LPS: 10 log10(|STFT|^2 + 1e-19), rectangular window (torch.stft without one), centred frames."""
    power = _power(_frames(wav, win, n_frames, center=True), max(n_fft, _next_pow2(win)))
    return 10.0 * torch.log10(power + 1e-19)


@lru_cache(maxsize=16)
def mel_filterbank(n_fft: int, n_mels: int, htk: bool) -> torch.Tensor:
    """librosa.filters.mel(sr=16000, n_fft, n_mels, fmin=0, fmax=8000, htk=htk) without librosa:
    slaney-normalised triangles on the Slaney mel scale (htk=False), or unnormalised triangles on
    the HTK scale (htk=True, norm=None, as python_speech_features). numpy in float64, cached."""
    def to_mel(f):
        if htk:
            return 2595.0 * np.log10(1.0 + f / 700.0)
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0),
                        f / (200.0 / 3))

    def to_hz(m):
        if htk:
            return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
        return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), (200.0 / 3) * m)

    fft_f = np.linspace(0, SAMPLE_RATE / 2, 1 + n_fft // 2)
    mel_f = to_hz(np.linspace(to_mel(0.0), to_mel(SAMPLE_RATE / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_f[None, :]
    weights = np.maximum(0, np.minimum(-ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]))
    if not htk:
        weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


def log_fbank(wav: torch.Tensor, n_frames: int, win: int, n_fft: int, n_filters: int = 40) -> torch.Tensor:
    """python_speech_features.logfbank: pre-emphasis 0.97, frames from 0, rectangular, |X|^2 / n_fft, HTK mel."""
    emph = torch.cat([wav[:, :1], wav[:, 1:] - 0.97 * wav[:, :-1]], dim=1)
    n_fft = max(n_fft, _next_pow2(win))
    power = _power(_frames(emph, win, n_frames, center=False), n_fft) / n_fft
    energies = torch.matmul(mel_filterbank(n_fft, n_filters, htk=True).to(power), power)
    return torch.log(energies.clamp(min=float(np.finfo(np.float64).eps)))


@lru_cache(maxsize=8)
def _gammatone_weights(n_fft: int, n_channels: int, f_min: float) -> torch.Tensor:
    """Squared 4th-order gammatone magnitude responses on the FFT bins, ERB-spaced centres (Slaney)."""
    ear_q, min_bw = 9.26449, 24.7
    high = SAMPLE_RATE / 2
    i = np.arange(1, n_channels + 1)
    cf = -(ear_q * min_bw) + np.exp(i * (-np.log(high + ear_q * min_bw) + np.log(f_min + ear_q * min_bw))
                                    / n_channels) * (high + ear_q * min_bw)
    cf = cf[::-1]
    b = 1.019 * (cf / ear_q + min_bw)
    f = np.arange(n_fft // 2 + 1) * SAMPLE_RATE / n_fft
    mag = (1.0 + ((f[None, :] - cf[:, None]) / b[:, None]) ** 2) ** -2.0
    return torch.from_numpy((mag ** 2).astype(np.float32))


def log_gammatone(wav: torch.Tensor, n_frames: int, win: int, n_channels: int = 40,
                  f_min: float = 500.0) -> torch.Tensor:
    """log(RMS of each gammatone channel over the window + 1e-10), by FFT weighting (Parseval)."""
    n_fft = _next_pow2(win)
    power = _power(_frames(wav, win, n_frames, center=True), n_fft)
    energy = torch.matmul(_gammatone_weights(n_fft, n_channels, float(f_min)).to(power), power)
    return torch.log(torch.sqrt(2.0 * energy / (n_fft * win)) + 1e-10)


def mfcc(wav: torch.Tensor, lengths: torch.Tensor, n_frames: int, win: int, order: int) -> torch.Tensor:
    """librosa.feature.mfcc(y, sr=16000, n_mfcc=order, n_fft=win, hop_length=160): Hann, 128 slaney
    mel bands, power_to_db with top_db=80, orthonormal DCT-II."""
    power = AF.stft_power(wav, n_fft=win, win_length=win, hop_length=HOP, window="hann", center=True,
                          pad_mode="constant")
    mel = AF.mel_spectrogram(power, mel_filterbank(win, 128, htk=False))
    db = AF.power_to_db(mel, top_db=80.0, lengths=AF.frame_lengths(lengths, HOP))
    return torch.matmul(AF.dct_matrix(order, 128).to(db), db)[..., :n_frames]


@lru_cache(maxsize=4)
def _window_autocorr(win: int, n_fft: int) -> torch.Tensor:
    w = torch.hann_window(win, periodic=True, dtype=torch.float64)
    r = torch.fft.irfft(torch.fft.rfft(w, n=n_fft).abs().square(), n=n_fft)
    return (r / r[0]).to(torch.float32)


def pitch(wav: torch.Tensor, lengths: torch.Tensor, n_frames: int, f0_min: float = 60.0, f0_max: float = 300.0,
          win: int = 640, voicing_threshold: float = 0.45, silence: float = 0.05,
          octave_cost: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched F0 by window-corrected normalised autocorrelation (Boersma 1993). -> (f0 [B, n], voiced [B, n]).

    Frames of `win` samples (Hann) centred every 10 ms; the best lag in [sr/f0_max, sr/f0_min] by
    r(tau) - octave_cost * log2(f0_min * tau / sr), refined by parabolic interpolation. A frame is
    voiced when its normalised autocorrelation peak exceeds `voicing_threshold` and its RMS exceeds
    `silence` times the clip's loudest valid frame.
    """
    n_fft = _next_pow2(2 * win)
    frames = _frames(wav, win, n_frames, center=True)
    w = torch.hann_window(win, periodic=True, dtype=wav.dtype, device=wav.device)
    spec = torch.fft.rfft(frames * w, n=n_fft)
    lo, hi = int(math.floor(SAMPLE_RATE / f0_max)), int(math.ceil(SAMPLE_RATE / f0_min))
    r = torch.fft.irfft(spec.real.square() + spec.imag.square(), n=n_fft)[..., :hi + 2]  # [B, n, hi + 2]
    r0 = r[..., :1]
    rw = _window_autocorr(win, n_fft)[:hi + 2].to(r)
    rn = torch.where(r0 > 0, r / r0.clamp(min=1e-20), torch.zeros_like(r)) / rw.clamp(min=1e-6)
    lags = torch.arange(lo, hi + 1, device=wav.device, dtype=wav.dtype)
    score = rn[..., lo:hi + 1] - octave_cost * torch.log2(f0_min * lags / SAMPLE_RATE)
    best = score.argmax(dim=-1) + lo  # [B, n]
    b = rn.gather(-1, best.unsqueeze(-1)).squeeze(-1)
    a = rn.gather(-1, (best - 1).unsqueeze(-1)).squeeze(-1)
    c = rn.gather(-1, (best + 1).clamp(max=hi + 1).unsqueeze(-1)).squeeze(-1)
    denom = a - 2 * b + c
    shift = torch.where(denom.abs() > 1e-9, 0.5 * (a - c) / denom, torch.zeros_like(denom)).clamp(-0.5, 0.5)
    f0 = SAMPLE_RATE / (best.to(wav.dtype) + shift)
    rms = torch.sqrt((frames * w).square().mean(dim=-1))
    valid = AF.length_mask(torch.div(lengths, HOP, rounding_mode="floor").clamp(min=1), n_frames)
    loudest = rms.masked_fill(~valid, 0.0).amax(dim=-1, keepdim=True)
    voiced = (b > voicing_threshold) & (rms > silence * loudest) & (r0.squeeze(-1) > 0) & valid
    return f0, voiced


def interpolate_log_f0(f0: torch.Tensor, voiced: torch.Tensor, floor_hz: float) -> torch.Tensor:
    """log F0 with unvoiced frames linearly interpolated between voiced neighbours (held at the
    ends); log(floor_hz) throughout a clip with no voiced frame, as pase's Prosody does."""
    n = f0.shape[-1]
    t = torch.arange(n, device=f0.device).expand_as(f0)
    lf0 = torch.log(f0.clamp(min=1.0))
    big = n + 1
    prev = torch.cummax(torch.where(voiced, t, torch.full_like(t, -1)), dim=-1).values
    later = torch.flip(torch.where(voiced, t, torch.full_like(t, big)), [-1])
    nxt = torch.flip(torch.cummin(later, dim=-1).values, [-1])
    has_prev, has_next = prev >= 0, nxt < big
    lp = lf0.gather(-1, prev.clamp(min=0))
    ln = lf0.gather(-1, nxt.clamp(max=n - 1))
    span = (nxt - prev).clamp(min=1).to(f0.dtype)
    inter = lp + (ln - lp) * (t - prev).to(f0.dtype) / span
    out = torch.where(has_prev & has_next, inter, torch.where(has_prev, lp, ln))
    out = torch.where(has_prev | has_next, out, torch.full_like(out, math.log(floor_hz)))
    return torch.where(voiced, lf0, out)


def prosody(wav: torch.Tensor, lengths: torch.Tensor, n_frames: int, win: int = 320, f0_min: float = 60.0,
            f0_max: float = 300.0) -> torch.Tensor:
    """pase Prosody: [log F0 (interpolated), voiced flag, RMS energy, zero-crossing rate] -> [B, 4, n]."""
    f0, voiced = pitch(wav, lengths, n_frames, f0_min=f0_min, f0_max=f0_max)
    lf0 = interpolate_log_f0(f0, voiced, f0_min)
    sq = F.pad(wav.square().unsqueeze(1), (win // 2, win // 2))
    energy = torch.sqrt(F.avg_pool1d(sq, win, HOP).squeeze(1)[:, :n_frames].clamp(min=0))
    sign = wav >= -1e-10  # librosa: |x| <= 1e-10 counts as 0, and 0 as positive
    cross = torch.cat([torch.zeros_like(wav[:, :1]), (sign[:, 1:] != sign[:, :-1]).to(wav.dtype)], dim=1)
    zcr = F.avg_pool1d(F.pad(cross.unsqueeze(1), (win // 2, win // 2)), win, HOP).squeeze(1)[:, :n_frames]
    return torch.stack([lf0, voiced.to(wav.dtype), energy, zcr], dim=1)


def with_deltas(x: torch.Tensor, frames: torch.Tensor, order: int = 2) -> torch.Tensor:
    """x [B, D, n] -> [B, D * (order + 1), n]: static, delta, delta-delta (librosa width 9)."""
    return torch.cat([x] + [AF.deltas(x, width=9, order=k, lengths=frames) for k in range(1, order + 1)], dim=1)


def target_dims(lps_n_fft: int = 2048) -> dict[str, int]:
    """Output size of each regression worker (with deltas)."""
    lps = lambda win: 3 * (max(lps_n_fft, _next_pow2(win)) // 2 + 1)  # noqa: E731
    return {"lps": lps(400), "lps_long": lps(512), "fbank": 120, "fbank_long": 120, "gtn": 120, "gtn_long": 120,
            "mfcc": 39, "mfcc_long": 60, "prosody": 12}


def compute_targets(clean: torch.Tensor, lengths: torch.Tensor, names: tuple[str, ...], lps_n_fft: int = 2048,
                    normalize: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every named regression target of the clean batch [B, T] at 100 Hz -> ({name: [B, D, n]}, frames [B]).

    n = T // 160 (pase's max_frames); clip b has lengths[b] // 160 valid frames, the rest are zero.
    """
    n = clean.shape[-1] // HOP
    frames = torch.div(lengths, HOP, rounding_mode="floor")
    mask = AF.length_mask(frames, n).unsqueeze(1)
    out = {}
    for name in names:
        if name in ("lps", "lps_long"):
            x = log_power_spectrum(clean, n, 400 if name == "lps" else 512, lps_n_fft)
        elif name in ("fbank", "fbank_long"):
            x = log_fbank(clean, n, *((400, 512) if name == "fbank" else (1024, 1024)))
        elif name in ("gtn", "gtn_long"):
            x = log_gammatone(clean, n, 400 if name == "gtn" else 2048)
        elif name in ("mfcc", "mfcc_long"):
            x = mfcc(clean, lengths, n, *((400, 13) if name == "mfcc" else (2048, 20)))
        elif name == "prosody":
            x = prosody(clean, lengths, n)
        else:
            raise ConfigError(f"pase+: unknown regression worker {name!r}; known: {', '.join(REGRESSION_WORKERS)}")
        x = with_deltas(x * mask.to(x.dtype), frames)
        if normalize:
            x = _znorm(x, mask)
        out[name] = x * mask.to(x.dtype)
    return out, frames


def _znorm(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    m = mask.to(x.dtype)
    count = m.sum().clamp(min=1)
    mean = (x * m).sum(dim=(0, 2), keepdim=True) / count
    var = ((x - mean).square() * m).sum(dim=(0, 2), keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + eps)
