"""PASE+'s online contamination: the random distortions applied to the encoder input only.

Kept apart from the workers (baselines.pase_workers) and their targets (baselines.pase_targets)
because it is the one stateful, random part of the objective: it draws from the pretraining
loop's generator and loads the corpus noise recordings lazily. What each operation does, and how
it departs from the reference's distortions, is in baselines.pase_workers' docstring.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from baselines import functional as AF
from baselines.pase_targets import SAMPLE_RATE, _next_pow2

log = logging.getLogger("avbench.pase")

CONTAMINATIONS = ("reverb", "overlap", "noise", "bandrop", "lowpass", "chop", "clip")
# cfg/distortions/pase+.cfg
DEFAULT_PROBS = {"reverb": 0.5, "overlap": 0.1, "noise": 0.4, "bandrop": 0.35, "lowpass": 0.25, "chop": 0.2,
                 "clip": 0.2}


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
