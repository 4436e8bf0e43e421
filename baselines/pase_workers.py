"""The PASE+ self-supervised objective: workers, their targets, and online contamination.

PASE+ (Ravanelli et al. 2020) trains its encoder by making small "workers" solve many tasks from
the features of a *contaminated* waveform, with every target computed from the *clean* one. This
module follows the public recipe (santi-pdp/pase: cfg/PASE+workers.cfg, cfg/distortions/pase+.cfg,
pase/transforms.py, pase/models/Minions/{minions,cls_minions}.py), within what the avbench loop
gives an objective (a batch of clean crops and their lengths):

Workers (all MLP heads read the 256-d encoder output frame by frame):
- cchunk: waveform decoder, three transposed convolutions (512, 256, 128 maps; kernel 30; strides
  4, 4, 10, i.e. x160 back to samples; PReLU) + a 64-unit 1x1 layer + a 1x1 output, L1 loss on the
  clean waveform.
- lps, lps_long: log power spectrum (|STFT|^2 in dB, rectangular window of 400 / 512 samples, 2048-
  point FFT), 1025 bins.
- fbank, fbank_long: 40 log mel energies as python_speech_features' logfbank (pre-emphasis 0.97,
  rectangular 400 / 1024-sample frames starting at 0, 512 / 1024-point FFT, HTK-style triangles).
- gtn, gtn_long: 40 log gammatone energies from 500 Hz up (ERB spacing), 400 / 2048-sample windows.
- mfcc (13) and mfcc_long (20 coefficients, 2048-sample window), as librosa.feature.mfcc.
- prosody: log F0 (interpolated through unvoiced frames), voicing, RMS energy and zero-crossing
  rate on 320-sample windows.
  Every regression target has its first and second deltas appended (der_order 2, librosa width 9),
  giving 3075, 120, 120, 39, 60 and 12 outputs; heads are 1x1 conv 256 -> 256 -> PReLU -> outputs,
  MSE loss.
- mi (local info max, LIM) and cmi (global info max, GIM): a 256-unit MLP discriminator on the
  concatenation of two embeddings, BCE with logits: LIM per frame (a frame with another frame of
  the same clip vs with a frame of another clip in the batch), GIM on time averages (first half
  of a clip with its second half vs with the second half of another clip; both orders, the
  reference's "augment"). The reference draws its pairs from separate 1 s chunks of the same and of
  another utterance; the loop here feeds one crop per utterance, so the pairs come from within it.
- The loss is the unweighted sum of the worker losses, as in the reference.

Simplifications, stated plainly:
- Targets are z-normalised per dimension with the statistics of the batch's valid frames; the
  reference normalises with statistics precomputed over the training set (--stats).
- The reference predicts r = 7 frames per output (num_outputs * r); here each frame predicts its own.
- F0 comes from a batched normalised-autocorrelation tracker (Boersma 1993: window-corrected
  autocorrelation, 60-300 Hz, voicing threshold 0.45, octave cost 0.01, silence below 5% of the
  clip's loudest frame), not SWIPE (pysptk); gammatone energies use FFT weighting (4th-order
  gammatone magnitude responses), like gammatone.fftweight, not the IIR gtgram; the spectral
  targets zero-pad the clip edges where the reference reflects.
- Contamination (applied to the encoder input only, each with its own probability, in this order):
  reverb 0.5 (a synthetic exponentially decaying impulse response, RT60 0.2-0.8 s, instead of the
  reference's measured ones), overlap 0.1 (another clip of the batch at 5 / 7.5 / 10 dB, shifted),
  additive noise 0.4 (a random segment of the corpus noise recordings at 0 / 5 / 10 dB), band-drop
  0.35 (a random band zeroed in the spectrum instead of the reference's precomputed FIR notches),
  low-pass 0.25 (the 16 -> 8 kHz resampling filter, as a 4 kHz brick wall), time masking 0.2 (1-2
  chops of N(0.05, 0.025) or N(0.1, 0.05) s, at random places rather than VAD-chosen ones),
  clipping 0.2 (at 0.1 / 0.3 / 0.5 of the clip's extremes). Each operation keeps the clip's energy
  where the reference does (reverb, noise, overlap, filters). No random rescaling of the input.
All randomness draws from `context.generator` (seeded and checkpointed by the pretraining loop).
"""

from __future__ import annotations

import inspect
import logging
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines import functional as AF
from bench.errors import ConfigError
from bench.pretrain.objective import Pretext, PretextContext, register_pretext

log = logging.getLogger("avbench.pase")

SAMPLE_RATE = 16_000
HOP = 160  # targets at 100 Hz, the encoder's frame rate
REGRESSION_WORKERS = ("lps", "lps_long", "fbank", "fbank_long", "gtn", "gtn_long", "mfcc", "mfcc_long", "prosody")
DEFAULT_WORKERS = ("cchunk",) + REGRESSION_WORKERS + ("mi", "cmi")
CONTAMINATIONS = ("reverb", "overlap", "noise", "bandrop", "lowpass", "chop", "clip")
# cfg/distortions/pase+.cfg
DEFAULT_PROBS = {"reverb": 0.5, "overlap": 0.1, "noise": 0.4, "bandrop": 0.35, "lowpass": 0.25, "chop": 0.2,
                 "clip": 0.2}


# ----------------------------------------------------------------------------- target features
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


# ----------------------------------------------------------------------------- contamination
def _energy(x: torch.Tensor) -> torch.Tensor:
    return x.square().sum(dim=-1)


def _match_energy(y: torch.Tensor, ref_energy: torch.Tensor) -> torch.Tensor:
    ey = _energy(y)
    scale = torch.where(ey > 0, torch.sqrt(ref_energy / ey.clamp(min=1e-20)), torch.ones_like(ey))
    return y * scale.unsqueeze(-1)


class Contamination:
    """PASE+'s online distortions of the encoder input, batched; see the module docstring.

    Every operation takes (wav [B, T] zero beyond lengths, lengths [B], which [B] bool) and returns
    a new [B, T] tensor, changed only for the clips in `which`, still zero beyond each length.
    """

    def __init__(self, generator: torch.Generator, noise_sources: list[Path], probs: dict[str, float],
                 noise_snrs=(0.0, 5.0, 10.0), overlap_snrs=(5.0, 7.5, 10.0), clip_factors=(0.1, 0.3, 0.5),
                 chop_factors=((0.05, 0.025), (0.1, 0.05)), max_chops: int = 2, rt60=(0.2, 0.8),
                 bandrop_hz=(50.0, 3000.0), lowpass_hz: float = 4000.0) -> None:
        self.generator = generator
        self.noise_sources = [Path(p) for p in noise_sources]
        self.probs = dict(probs)
        self.noise_snrs = tuple(float(s) for s in noise_snrs)
        self.overlap_snrs = tuple(float(s) for s in overlap_snrs)
        self.clip_factors = tuple(float(c) for c in clip_factors)
        self.chop_factors = tuple((float(m), float(s)) for m, s in chop_factors)
        self.max_chops = int(max_chops)
        self.rt60 = (float(rt60[0]), float(rt60[1]))
        self.bandrop_hz = (float(bandrop_hz[0]), float(bandrop_hz[1]))
        self.lowpass_hz = float(lowpass_hz)
        self._noises: list[torch.Tensor] | None = None
        self._warned = False

    # random draws: always on the CPU generator, then moved
    def _rand(self, *shape: int, device=None) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator).to(device)

    def _randn(self, *shape: int, device=None) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator).to(device)

    def _choice(self, values, n: int, device=None) -> torch.Tensor:
        idx = torch.randint(len(values), (n,), generator=self.generator)
        return torch.tensor(values, dtype=torch.float32)[idx].to(device)

    def __call__(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        B = wav.shape[0]
        for name in CONTAMINATIONS:
            p = self.probs.get(name, 0.0)
            if p <= 0:
                continue
            which = (self._rand(B) < p).to(wav.device)
            if bool(which.any()):
                wav = getattr(self, name)(wav, lengths, which)
        return wav

    def reverb(self, wav, lengths, which):
        """Convolve with a synthetic room response: a unit direct path then Gaussian noise decaying
        by 60 dB over RT60 (uniform in self.rt60), scaled by 0.1-0.5; energy kept."""
        B, T = wav.shape
        dev = wav.device
        rt60 = self.rt60[0] + (self.rt60[1] - self.rt60[0]) * self._rand(B, device=dev)
        n_ir = int(math.ceil(self.rt60[1] * SAMPLE_RATE))
        t = torch.arange(n_ir, device=dev, dtype=wav.dtype) / SAMPLE_RATE
        tail = self._randn(B, n_ir, device=dev) * (0.1 + 0.4 * self._rand(B, 1, device=dev))
        ir = tail * torch.exp(-math.log(1000.0) * t / rt60.unsqueeze(1))
        ir[:, 0] = 1.0
        ir = ir / ir.abs().amax(dim=1, keepdim=True)
        n = _next_pow2(T + n_ir)
        y = torch.fft.irfft(torch.fft.rfft(wav, n=n) * torch.fft.rfft(ir, n=n), n=n)[:, :T]
        y = _match_energy(y * AF.length_mask(lengths, T).to(y.dtype), _energy(wav))
        return torch.where(which.unsqueeze(1), y, wav)

    def overlap(self, wav, lengths, which):
        """Add another clip of the batch, shifted by up to 3/4 of this clip, at 5 / 7.5 / 10 dB."""
        B, T = wav.shape
        if B < 2:
            return wav
        dev = wav.device
        roll = int(torch.randint(1, B, (1,), generator=self.generator))
        other = torch.roll(wav, roll, dims=0)
        start = (self._rand(B, device=dev) * 0.75 * lengths.to(wav.dtype)).long()
        t = torch.arange(T, device=dev).unsqueeze(0)
        src = t - start.unsqueeze(1)
        shifted = other.gather(1, src.clamp(min=0)) * (src >= 0).to(wav.dtype)
        shifted = shifted * AF.length_mask(lengths, T).to(wav.dtype)
        snr = self._choice(self.overlap_snrs, B, device=dev)
        return self._mix(wav, shifted, snr, which)

    def _mix(self, wav, noise, snr, which):
        ex, en = _energy(wav), _energy(noise)
        k = torch.where(en > 0, torch.sqrt(ex / (10 ** (snr / 10) * en.clamp(min=1e-20))), torch.zeros_like(en))
        y = _match_energy(wav + k.unsqueeze(1) * noise, ex)
        return torch.where(which.unsqueeze(1), y, wav)

    def _load_noises(self) -> list[torch.Tensor]:
        if self._noises is None:
            from bench.data.audio import load_audio

            self._noises = [torch.from_numpy(load_audio(p)) for p in self.noise_sources]
        return self._noises

    def noise(self, wav, lengths, which):
        """Add a random segment of a random corpus noise recording at 0 / 5 / 10 dB SNR."""
        B, T = wav.shape
        if not self.noise_sources:
            if not self._warned:
                log.warning("pase+: the corpus lists no noise_sources, so additive-noise contamination is skipped")
                self._warned = True
            return wav
        noises = self._load_noises()
        dev = wav.device
        pick = torch.randint(len(noises), (B,), generator=self.generator)
        offset = torch.rand(B, generator=self.generator)
        snr = self._choice(self.noise_snrs, B, device=dev)
        segs = torch.zeros_like(wav)
        for b in range(B):
            n_b, src = int(lengths[b]), noises[int(pick[b])]
            if len(src) < n_b:  # tile a short recording
                src = src.repeat(n_b // len(src) + 1)
            beg = int(offset[b] * (len(src) - n_b + 1))
            segs[b, :n_b] = src[beg:beg + n_b].to(wav)
        return self._mix(wav, segs, snr, which)

    def _filter(self, wav, lengths, which, keep: torch.Tensor):
        """Zero-phase filtering by a [B, F] spectral mask; energy kept."""
        T = wav.shape[-1]
        y = torch.fft.irfft(torch.fft.rfft(wav, n=T) * keep.to(wav.dtype), n=T)
        y = _match_energy(y * AF.length_mask(lengths, T).to(y.dtype), _energy(wav))
        return torch.where(which.unsqueeze(1), y, wav)

    def _freqs(self, wav):
        T = wav.shape[-1]
        return torch.arange(T // 2 + 1, device=wav.device, dtype=wav.dtype) * SAMPLE_RATE / T

    def bandrop(self, wav, lengths, which):
        """Remove a random band (width log-uniform in self.bandrop_hz, anywhere below 8 kHz)."""
        B = wav.shape[0]
        dev = wav.device
        lo_w, hi_w = math.log(self.bandrop_hz[0]), math.log(self.bandrop_hz[1])
        width = torch.exp(lo_w + (hi_w - lo_w) * self._rand(B, 1, device=dev))
        low = self._rand(B, 1, device=dev) * (SAMPLE_RATE / 2 - width)
        f = self._freqs(wav).unsqueeze(0)
        return self._filter(wav, lengths, which, ~((f >= low) & (f <= low + width)))

    def lowpass(self, wav, lengths, which):
        """Band-limit to self.lowpass_hz (the reference's 16 -> 8 kHz resampling filter)."""
        keep = (self._freqs(wav) <= self.lowpass_hz).unsqueeze(0).expand(wav.shape[0], -1)
        return self._filter(wav, lengths, which, keep)

    def chop(self, wav, lengths, which):
        """Zero 1..max_chops stretches, each N(mean, std) seconds long (a random chop_factor)."""
        B, T = wav.shape
        dev = wav.device
        count = torch.randint(1, self.max_chops + 1, (B,), generator=self.generator).to(dev)
        t = torch.arange(T, device=dev).unsqueeze(0)
        drop = torch.zeros(B, T, dtype=torch.bool, device=dev)
        for slot in range(self.max_chops):
            factor = torch.randint(len(self.chop_factors), (B,), generator=self.generator)
            mean = torch.tensor([self.chop_factors[i][0] for i in factor]).to(dev)
            std = torch.tensor([self.chop_factors[i][1] for i in factor]).to(dev)
            dur = ((mean + std * self._randn(B, device=dev)).clamp(min=0) * SAMPLE_RATE).long()
            centre = (self._rand(B, device=dev) * lengths.to(torch.float32)).long()
            beg, end = centre - dur // 2, centre + (dur - dur // 2)
            drop |= (t >= beg.unsqueeze(1)) & (t < end.unsqueeze(1)) & (slot < count).unsqueeze(1)
        y = wav.masked_fill(drop, 0.0)
        return torch.where(which.unsqueeze(1), y, wav)

    def clip(self, wav, lengths, which):
        """Clip at a factor (random from clip_factors) of the clip's own minimum and maximum."""
        B, T = wav.shape
        valid = AF.length_mask(lengths, T)
        cf = self._choice(self.clip_factors, B, device=wav.device).to(wav.dtype)
        hi = cf * wav.masked_fill(~valid, float("-inf")).amax(dim=1)
        lo = cf * wav.masked_fill(~valid, float("inf")).amin(dim=1)
        y = torch.maximum(torch.minimum(wav, hi.unsqueeze(1)), lo.unsqueeze(1)) * valid.to(wav.dtype)
        return torch.where(which.unsqueeze(1), y, wav)


# ----------------------------------------------------------------------------- workers
class MLPBlock(nn.Module):
    """pase MLPBlock: a 1x1 convolution and a PReLU."""

    def __init__(self, ninp: int, fmaps: int) -> None:
        super().__init__()
        self.W = nn.Conv1d(ninp, fmaps, 1)
        self.act = nn.PReLU(fmaps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.W(x))


class MLPHead(nn.Module):
    """pase MLPMinion: hidden_layers MLPBlocks then a 1x1 output layer, frame by frame ([B, C, T])."""

    def __init__(self, num_inputs: int, num_outputs: int, hidden_size: int = 256, hidden_layers: int = 1) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        ninp = num_inputs
        for _ in range(hidden_layers):
            self.blocks.append(MLPBlock(ninp, hidden_size))
            ninp = hidden_size
        self.W = nn.Conv1d(ninp, num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.W(x)


class DeconvBlock(nn.Module):
    """pase GDeconv1DBlock without normalisation: transposed conv, end crop, PReLU."""

    def __init__(self, ninp: int, fmaps: int, kwidth: int, stride: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose1d(ninp, fmaps, kwidth, stride=stride, padding=max(0, (stride - kwidth) // -2))
        self.act = nn.PReLU(fmaps, init=0)
        self.crop = (stride % 2 != 0 and kwidth % 2 == 0) or (stride % 2 == 0 and kwidth % 2 != 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.deconv(x)
        if self.crop:
            h = h[..., :-1]
        return self.act(h)


class WaveDecoder(nn.Module):
    """pase DecoderMinion (the "cchunk" worker): features at 100 Hz back to 16 kHz samples."""

    def __init__(self, num_inputs: int, fmaps=(512, 256, 128), kwidths=(30, 30, 30), strides=(4, 4, 10),
                 hidden_size: int = 64, hidden_layers: int = 1) -> None:
        super().__init__()
        if not (len(fmaps) == len(kwidths) == len(strides)):
            raise ConfigError("pase+: decoder_fmaps, decoder_kwidths and decoder_strides need one length each")
        self.blocks = nn.ModuleList()
        ninp = num_inputs
        for fmap, kw, st in zip(fmaps, kwidths, strides):
            self.blocks.append(DeconvBlock(ninp, fmap, kw, st))
            ninp = fmap
        for _ in range(hidden_layers):
            self.blocks.append(MLPBlock(ninp, hidden_size))
            ninp = hidden_size
        self.W = nn.Conv1d(ninp, 1, 1)
        with torch.no_grad():
            for n in (1, 3):
                out = self(torch.zeros(1, num_inputs, n)).shape[-1]
                if out != HOP * n:
                    raise ConfigError(f"pase+: the waveform decoder turns {n} frames into {out} samples, not "
                                      f"{HOP * n}; its strides must multiply to {HOP} with matching kernels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.W(x)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values [B, D, T] over the positions of mask [B, T] (and all D)."""
    m = mask.unsqueeze(1).to(values.dtype)
    return (values * m).sum() / (m.sum() * values.shape[1]).clamp(min=1)


class PASEPretext(Pretext):
    """PASE+'s multi-task objective around an encoder at 100 Hz (see the module docstring)."""

    default_lr = 5e-4  # the reference trains its workers at 5e-4 (--min_lr) and its encoder at 1e-3 (--fe_lr)

    def __init__(self, encoder: nn.Module, context: PretextContext, workers=DEFAULT_WORKERS, hidden_size: int = 256,
                 lps_n_fft: int = 2048, decoder_fmaps=(512, 256, 128), decoder_kwidths=(30, 30, 30),
                 decoder_strides=(4, 4, 10), decoder_hidden: int = 64, normalize_targets: bool = True,
                 p_reverb: float = 0.5, p_overlap: float = 0.1, p_noise: float = 0.4, p_bandrop: float = 0.35,
                 p_lowpass: float = 0.25, p_chop: float = 0.2, p_clip: float = 0.2, noise_snrs=(0.0, 5.0, 10.0),
                 overlap_snrs=(5.0, 7.5, 10.0), clip_factors=(0.1, 0.3, 0.5),
                 chop_factors=((0.05, 0.025), (0.1, 0.05)), max_chops: int = 2, rt60=(0.2, 0.8)) -> None:
        super().__init__()
        rate = getattr(encoder, "sample_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE or float(encoder.frame_rate) != SAMPLE_RATE / HOP:
            raise ConfigError(f"pase+ pretext: the encoder must read 16 kHz audio and give 100 frames per second "
                              f"(got {encoder.sample_rate} Hz, {encoder.frame_rate} fps)")
        workers = tuple(workers)
        unknown = sorted(set(workers) - set(DEFAULT_WORKERS))
        if unknown or not workers:
            raise ConfigError(f"pase+ pretext: unknown workers {unknown or '(none given)'}; "
                              f"choose from {', '.join(DEFAULT_WORKERS)}")
        probs = {"reverb": p_reverb, "overlap": p_overlap, "noise": p_noise, "bandrop": p_bandrop,
                 "lowpass": p_lowpass, "chop": p_chop, "clip": p_clip}
        bad = {k: v for k, v in probs.items() if not 0.0 <= float(v) <= 1.0}
        if bad:
            raise ConfigError(f"pase+ pretext: contamination probabilities must lie in [0, 1], got {bad}")
        for name, values in (("noise_snrs", noise_snrs), ("overlap_snrs", overlap_snrs), ("clip_factors", clip_factors),
                             ("chop_factors", chop_factors)):
            if len(values) == 0:
                raise ConfigError(f"pase+ pretext: {name} must not be empty")
        if not 0 < float(rt60[0]) <= float(rt60[1]):
            raise ConfigError(f"pase+ pretext: rt60 must be (low, high) seconds with 0 < low <= high, got {rt60}")
        if int(max_chops) < 1 or int(lps_n_fft) < 2:
            raise ConfigError("pase+ pretext: max_chops must be >= 1 and lps_n_fft >= 2")
        self.encoder = encoder
        self.context = context
        self.workers = workers
        self.regression = tuple(w for w in workers if w in REGRESSION_WORKERS)
        self.lps_n_fft = int(lps_n_fft)
        self.normalize_targets = bool(normalize_targets)
        dim = int(encoder.dim)
        dims = target_dims(self.lps_n_fft)
        self.heads = nn.ModuleDict({w: MLPHead(dim, dims[w], hidden_size) for w in self.regression})
        if "cchunk" in workers:
            self.heads["cchunk"] = WaveDecoder(dim, decoder_fmaps, decoder_kwidths, decoder_strides, decoder_hidden)
        for w in ("mi", "cmi"):
            if w in workers:
                self.heads[w] = MLPHead(2 * dim, 1, hidden_size)
        self.contamination = Contamination(context.generator, list(context.noise_sources), probs,
                                           noise_snrs=noise_snrs, overlap_snrs=overlap_snrs,
                                           clip_factors=clip_factors, chop_factors=chop_factors,
                                           max_chops=max_chops, rt60=rt60)
        self._settings = dict(workers=list(workers), hidden_size=hidden_size, lps_n_fft=self.lps_n_fft,
                              decoder_fmaps=list(decoder_fmaps), decoder_kwidths=list(decoder_kwidths),
                              decoder_strides=list(decoder_strides), decoder_hidden=decoder_hidden,
                              normalize_targets=self.normalize_targets, probs=probs,
                              noise_snrs=list(noise_snrs), overlap_snrs=list(overlap_snrs),
                              clip_factors=list(clip_factors), chop_factors=[list(c) for c in chop_factors],
                              max_chops=int(max_chops), rt60=list(rt60),
                              noise_sources=len(context.noise_sources))
        self._warned_pairs = False

    def config(self) -> dict:
        return dict(self._settings)

    def compute_targets(self, clean: torch.Tensor,
                        lengths: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return compute_targets(clean, lengths, self.regression, self.lps_n_fft, self.normalize_targets)

    def contaminate(self, clean: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.contamination(clean, lengths)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor, info=None) -> dict[str, torch.Tensor]:
        if wav.dim() != 2:
            raise ValueError(f"wav must be [B, T], got shape {tuple(wav.shape)}")
        T = wav.shape[-1]
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(max=T)
        clean = wav * AF.length_mask(lengths, T).to(wav.dtype)
        with torch.no_grad():
            targets, t_frames = self.compute_targets(clean, lengths)
            noisy = self.contaminate(clean, lengths)
        feats, f_len = self.encoder(noisy, lengths)
        h = feats.transpose(1, 2)  # [B, dim, T']
        f_len = f_len.to(wav.device)
        losses: dict[str, torch.Tensor] = {}
        for name in self.regression:
            tgt = targets[name]
            common = min(h.shape[-1], tgt.shape[-1])
            mask = AF.length_mask(torch.minimum(f_len, t_frames), common)
            pred = self.heads[name](h[..., :common])
            losses[name] = _masked_mean((pred - tgt[..., :common]).square(), mask)
        if "cchunk" in self.workers:
            pred = self.heads["cchunk"](h)[:, 0]
            common = min(pred.shape[-1], T)
            mask = AF.length_mask(torch.minimum(lengths, HOP * f_len), common)
            losses["cchunk"] = _masked_mean((pred[:, :common] - clean[:, :common]).abs().unsqueeze(1), mask)
        if "mi" in self.workers or "cmi" in self.workers:
            if h.shape[0] < 2:
                if not self._warned_pairs:
                    log.warning("pase+: the info-max workers need at least 2 clips per batch; skipping them")
                    self._warned_pairs = True
                for name in ("mi", "cmi"):
                    if name in self.workers:
                        losses[name] = h.new_zeros(())
            else:
                if "mi" in self.workers:
                    losses["mi"] = self._local_info_max(h, f_len)
                if "cmi" in self.workers:
                    losses["cmi"] = self._global_info_max(h, f_len)
        total = sum(losses.values())
        return {"loss": total, **{f"loss_{name}": value for name, value in losses.items()}}

    def _other_clip(self, B: int, device) -> torch.Tensor:
        shift = int(torch.randint(1, B, (1,), generator=self.context.generator))
        return (torch.arange(B) + shift).remainder(B).to(device)

    def _local_info_max(self, h: torch.Tensor, f_len: torch.Tensor) -> torch.Tensor:
        """LIM: each valid frame with another frame of its clip (1) vs a frame of another clip (0)."""
        B, _, Tp = h.shape
        dev = h.device
        other = self._other_clip(B, dev)
        t = torch.arange(Tp, device=dev).unsqueeze(0)
        n = f_len.clamp(min=1).unsqueeze(1)
        step = 1 + (torch.rand(B, Tp, generator=self.context.generator).to(dev) * (n - 1).clamp(min=0)).long()
        pos = torch.where(n > 1, (t + step).remainder(n), torch.zeros_like(t))
        n_other = n[other]
        neg = (torch.rand(B, Tp, generator=self.context.generator).to(dev) * n_other).long().clamp(max=Tp - 1)
        pick = lambda src, idx: src.gather(2, idx.unsqueeze(1).expand(-1, src.shape[1], -1))  # noqa: E731
        x_pos = torch.cat([h, pick(h, pos)], dim=1)
        x_neg = torch.cat([h, pick(h[other], neg)], dim=1)
        logits = self.heads["mi"](torch.cat([x_pos, x_neg], dim=0))[:, 0]  # [2B, Tp]
        labels = torch.cat([torch.ones(B, Tp), torch.zeros(B, Tp)]).to(logits)
        mask = AF.length_mask(f_len, Tp).repeat(2, 1)
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (bce * mask).sum() / mask.sum().clamp(min=1)

    def _global_info_max(self, h: torch.Tensor, f_len: torch.Tensor) -> torch.Tensor:
        """GIM: mean of a clip's first half with its second half (1) vs another clip's second half (0)."""
        B, _, Tp = h.shape
        dev = h.device
        other = self._other_clip(B, dev)
        half = torch.div(f_len, 2, rounding_mode="floor").clamp(min=1)
        first = AF.length_mask(half, Tp)
        second = AF.length_mask(f_len, Tp) & ~first
        second = torch.where(second.any(dim=1, keepdim=True), second, first)  # one-frame clips
        avg = lambda m: (h * m.unsqueeze(1)).sum(-1) / m.sum(-1, keepdim=True).clamp(min=1)  # noqa: E731
        a, c = avg(first), avg(second)
        r = c[other]
        pos = torch.cat([torch.cat([a, c], 1), torch.cat([c, a], 1)])
        neg = torch.cat([torch.cat([a, r], 1), torch.cat([c, r], 1)])
        logits = self.heads["cmi"](torch.cat([pos, neg]).unsqueeze(-1))[:, 0, 0]
        labels = torch.cat([torch.ones(2 * B), torch.zeros(2 * B)]).to(logits)
        return F.binary_cross_entropy_with_logits(logits, labels)


_PRETEXT_KWARGS = tuple(p for p in inspect.signature(PASEPretext.__init__).parameters
                        if p not in ("self", "encoder", "context"))


@register_pretext("pase+")
def pase_plus_pretext(encoder: nn.Module, context: PretextContext, **kwargs) -> PASEPretext:
    """PASE+'s workers and contamination around `encoder`; keywords as PASEPretext."""
    unknown = sorted(set(kwargs) - set(_PRETEXT_KWARGS))
    if unknown:
        raise ConfigError(f"pase+ pretext: unknown settings {unknown}; known: {', '.join(_PRETEXT_KWARGS)}")
    return PASEPretext(encoder, context, **kwargs)
