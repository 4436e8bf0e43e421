"""The attributes that the audio-only pretext of the proposed encoder (`av-audio`) regresses, computed
from the waveform on the encoder's 25 Hz grid.

This module is the target computation only: what each attribute is, on which samples each frame's
value depends, and the pseudo-encoder `AttributeTargets` that computes them. Computing them once
per manifest and the corpus statistics that standardise them are in
encoders/attribute_target_cache.py; the heads and the loss that regress them are in
encoders/attribute_pretext.py. `AttributeTargets` is defined here, where it always was, because the
target caches' meta.json records its module and class (`encoder_class`).

PROTOCOL.md, "Audio-only pretext": the encoder predicts informative attributes of the waveform,
in the spirit of PASE's workers. For every 40 ms output frame of the 1D ResNet18 (512-d at 25 Hz)
one small head per attribute regresses that frame's value of:

  mfcc     13  librosa MFCCs (40 slaney mel bands, orthonormal DCT-II), no top_db clipping
  logmel   80  librosa log-mel power in dB (10 log10, amin 1e-10, no top_db)
  prosody   4  [log F0 (natural log of Hz), voicing (fraction of voiced 10 ms frames, 0..1),
                log energy (dB re full scale), zero-crossing rate (crossings per sample)]

Targets are computed from the clean waveform at 100 Hz with the existing code (the MFCC39 and
LogMel encoders of `baselines.spectral`, the batched autocorrelation tracker `pitch` of
`baselines.pase_targets`) and averaged over groups of 4 to 25 Hz.

Grid. Output frame k of the encoder covers samples [640k, 640(k+1)). The 100 Hz frames are
computed on the waveform delayed by 80 samples (80 zeros in front, the same zeros a clip is
centre-padded with anyway), so 100 Hz frame j is centred on sample 160 j - 80, and frame k of the
25 Hz grid averages 100 Hz frames 4k+1 .. 4k+4, centred on 640k + 80, 240, 400 and 560: the four
10 ms hops tile [640k, 640(k+1)) exactly (25 ms windows reach 120 samples into each neighbour).
A clip of T samples gives `ResNet18Audio.output_lengths(T)` frames, as many as the encoder (this
is T // 640 except that a last block of >= 612 samples already counts as a frame, for both).

Locality (our choice). Every target of a frame depends only on samples within 240 samples of
its block, so the targets of a crop cut from a clip equal those of the clip on all but the
crop's first and last frame (where the clip sees real audio and the crop sees zeros). That is
why MFCCs are taken without librosa's top_db (which clips to 80 dB below the *clip's* peak),
the pitch tracker runs without its clip-relative silence gate (silence=0) and with an absolute
gate instead (a 10 ms frame whose 25 ms energy is below `silence_db`, -60 dBFS by default, is
unvoiced), and log F0 is not interpolated through unvoiced frames (PASE's Prosody does that;
here the F0 loss is simply masked where unvoiced). Pooling: log F0 is the mean over the voiced
100 Hz frames of the group (0 when none is voiced); voicing is the voiced fraction.
Why the pase `prosody()` function itself is not used: its voicing gate is relative to the
clip's loudest frame and its log F0 is interpolated over whole unvoiced stretches, both non-local,
and it would run the tracker a second time; its energy (RMS of 320 samples) and ZCR are
re-done here in two lines each, on the 400-sample window of the spectral features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from baselines import functional as AF
from baselines import spectral
from baselines.pase_targets import pitch
from bench.errors import ConfigError
from encoders.resnet1d import HOP, ResNet18Audio

# Bump when a change here changes the targets: cached targets get a new key.
TARGET_VERSION = 1
SAMPLE_RATE = 16_000
SUB_HOP = 160              # the 100 Hz frames the targets are computed on
SUBFRAMES = HOP // SUB_HOP  # 4 per 25 Hz frame
SHIFT = SUB_HOP // 2       # 100 Hz frame j is centred on sample SUB_HOP * j - SHIFT
ATTRIBUTES = ("mfcc", "logmel", "prosody")
PROSODY = ("log_f0", "voicing", "log_energy", "zcr")
VOICED = 0.5               # a 25 Hz frame counts as voiced (for the F0 loss and stats) at this fraction


def subframe_centres(k: int | torch.Tensor) -> torch.Tensor:
    """Sample positions of the centres of the 100 Hz frames averaged into 25 Hz frame(s) k -> [..., 4]."""
    k = torch.as_tensor(k, dtype=torch.long)
    return HOP * k.unsqueeze(-1) + SHIFT + SUB_HOP * torch.arange(SUBFRAMES)


class AttributeTargets(nn.Module):
    """Waveform [B, T] -> raw attribute targets [B, K, 97] at 25 Hz and their frame counts [B].

    A pseudo-encoder for `bench.data.feature_cache.FeatureCache` (name, sample_rate, frame_rate, dim, config,
    forward(wav, lengths)); it has no weights. Columns: `self.slices[attribute]`; names:
    `self.names`. Values are raw (not standardised); frames beyond each clip's count are zero,
    and padding beyond `lengths` does not change valid frames.
    """

    name = "attribute-targets"
    sample_rate = SAMPLE_RATE
    frame_rate = SAMPLE_RATE / HOP

    def __init__(self, n_mfcc: int = 13, mfcc_mels: int = 40, n_mels: int = 80, f0_min: float = 60.0,
                 f0_max: float = 300.0, pitch_window: int = 640, voicing_threshold: float = 0.45,
                 silence_db: float = -60.0, energy_window: int = spectral.WIN_LENGTH) -> None:
        super().__init__()
        if not 0 < f0_min < f0_max < SAMPLE_RATE / 4:
            raise ConfigError(f"attribute targets: need 0 < f0_min < f0_max < {SAMPLE_RATE // 4} Hz, "
                              f"got {f0_min}, {f0_max}")
        if not math.ceil(SAMPLE_RATE / f0_min) < pitch_window <= 2 * HOP:
            raise ConfigError(f"attribute targets: pitch_window must be longer than one period of f0_min "
                              f"({math.ceil(SAMPLE_RATE / f0_min)} samples) and at most {2 * HOP}, "
                              f"got {pitch_window}")
        if not 0.0 < voicing_threshold < 1.0:
            raise ConfigError(f"attribute targets: voicing_threshold must lie in (0, 1), got {voicing_threshold}")
        if not 0 < energy_window <= 2 * HOP or energy_window % 2:
            raise ConfigError(f"attribute targets: energy_window must be an even number of samples in "
                              f"2..{2 * HOP}, got {energy_window}")
        # The spectral encoders (no CMVN, so raw values); their mel/DCT matrices are non-persistent
        # buffers, so this module has an empty state_dict, as the cache's weights digest expects.
        self.mfcc_fn = spectral.MFCC39(n_mfcc=n_mfcc, n_mels=mfcc_mels, top_db=None, normalize=False)
        self.logmel_fn = spectral.LogMel(n_mels=n_mels, normalize=False)
        self.f0_min, self.f0_max = float(f0_min), float(f0_max)
        self.pitch_window = int(pitch_window)
        self.voicing_threshold = float(voicing_threshold)
        self.silence_db = float(silence_db)
        self.energy_window = int(energy_window)
        self.dims = {"mfcc": int(n_mfcc), "logmel": int(n_mels), "prosody": len(PROSODY)}
        self.slices: dict[str, slice] = {}
        start = 0
        for a in ATTRIBUTES:
            self.slices[a] = slice(start, start + self.dims[a])
            start += self.dims[a]
        self.dim = start
        self.names = ([f"mfcc_{i}" for i in range(n_mfcc)] + [f"logmel_{i}" for i in range(n_mels)]
                      + list(PROSODY))
        self.f0_column = self.slices["prosody"].start + PROSODY.index("log_f0")
        self.voicing_column = self.slices["prosody"].start + PROSODY.index("voicing")

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return ResNet18Audio.output_lengths(lengths)

    def config(self) -> dict:
        return {"name": self.name, "target_version": TARGET_VERSION, "spectral_version": spectral.FEATURE_VERSION,
                "dim": self.dim, "frame_rate": self.frame_rate, "hop": HOP, "sub_hop": SUB_HOP, "shift": SHIFT,
                "columns": {a: [s.start, s.stop] for a, s in self.slices.items()}, "prosody": list(PROSODY),
                "mfcc": {k: v for k, v in self.mfcc_fn.config().items() if k not in ("name", "dim")},
                "logmel": {k: v for k, v in self.logmel_fn.config().items() if k not in ("name", "dim")},
                "f0_min": self.f0_min, "f0_max": self.f0_max, "pitch_window": self.pitch_window,
                "voicing_threshold": self.voicing_threshold, "silence_db": self.silence_db,
                "energy_window": self.energy_window, "f0_pool": "mean over voiced", "voiced_at": VOICED}

    def _windowed_mean(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Mean of x [B, T] over `energy_window` samples centred on 160 j, j < n -> [B, n]."""
        half = self.energy_window // 2
        need = (n - 1) * SUB_HOP + half - x.shape[-1]  # right padding so that frame n-1 exists
        x = F.pad(x.unsqueeze(1), (half, half + max(0, need)))
        return F.avg_pool1d(x, self.energy_window, SUB_HOP).squeeze(1)[:, :n]

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if wav.dim() != 2:
            raise ValueError(f"wav must be [B, T], got shape {tuple(wav.shape)}")
        B, T = wav.shape
        wav = wav.float()
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(max=T)
        frames = self.output_lengths(lengths).to(wav.device)
        K = int(self.output_lengths(torch.tensor(T)))
        if K == 0:
            return wav.new_zeros(B, 0, self.dim), frames
        n = SUBFRAMES * K + 1  # 100 Hz frames 0..4K; frame 0 (centred on sample -80) is not used
        # Delay by SHIFT: frame j of the delayed clip is centred on original sample 160 j - 80.
        x = F.pad(wav * AF.length_mask(lengths, T).to(wav.dtype), (SHIFT, 0))
        xl = lengths + SHIFT
        # (1 + (T + 80) // 160 >= 4K + 1 frames for every T: the spectral features reach frame 4K.)
        mfcc, _ = self.mfcc_fn.mfcc(x, xl)                          # [B, 13, N]
        logmel, _ = self.logmel_fn(x, xl)                           # [B, N, 80]
        energy = self._windowed_mean(x.square(), n)                 # [B, n]
        log_energy = 10.0 * torch.log10(energy.clamp(min=1e-10))
        sign = x >= -1e-10  # as librosa: |x| <= 1e-10 counts as 0, and 0 as positive
        cross = torch.cat([torch.zeros_like(x[:, :1]), (sign[:, 1:] != sign[:, :-1]).to(x.dtype)], dim=1)
        cross = cross * AF.length_mask(xl, x.shape[-1]).to(x.dtype)  # no crossing into the padding
        zcr = self._windowed_mean(cross, n)
        # Every frame is "valid" to the tracker (its clip-relative gates are off): frames past the
        # clip's end hold zeros, whose autocorrelation is 0, so they come out unvoiced anyway.
        f0, voiced = pitch(x, torch.full((B,), n * SUB_HOP, device=x.device), n, f0_min=self.f0_min,
                           f0_max=self.f0_max, win=self.pitch_window, voicing_threshold=self.voicing_threshold,
                           silence=0.0)
        voiced = voiced & (log_energy > self.silence_db)
        lf0 = torch.log(f0.clamp(min=1.0))

        def pool(v: torch.Tensor) -> torch.Tensor:  # [B, n, D] -> [B, K, D]: groups 4k+1 .. 4k+4
            return v[:, 1:n].reshape(B, K, SUBFRAMES, v.shape[-1]).mean(dim=2)

        v = voiced.to(x.dtype).unsqueeze(-1)
        voicing = pool(v)
        f0_pooled = pool(lf0.unsqueeze(-1) * v) / voicing.clamp(min=1.0 / SUBFRAMES)
        prosody = torch.cat([f0_pooled, voicing, pool(log_energy.unsqueeze(-1)), pool(zcr.unsqueeze(-1))], dim=-1)
        out = torch.cat([pool(mfcc[..., :n].transpose(1, 2)), pool(logmel[:, :n]), prosody], dim=-1)
        return out * AF.length_mask(frames, K).unsqueeze(-1).to(out.dtype), frames
