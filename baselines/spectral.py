"""The hand-crafted baselines: MFCC-39 and 80-band log-mel, as the paper's reference points.

Both follow librosa's conventions exactly (baselines.functional; tests/test_spectral.py checks the
numbers against librosa.feature on real clips) and share the speech-standard framing:
25 ms Hann windows (400 samples) every 10 ms (160 samples) at 16 kHz, zero-padded to a 512-point
FFT (the next power of two, which is what Kaldi and most speech front ends use), center=True with
zero padding, so a clip of T samples gives 1 + T // 160 frames (100 frames per second; 1 s -> 101).

Padding does not leak: samples beyond `lengths` are zeroed before the STFT (the same zeros a clip
computed alone is centre-padded with), deltas use each clip's own edges, CMVN statistics use valid
frames only, and output frames beyond the output lengths are zero.
"""

from __future__ import annotations

import torch

from baselines import functional as AF
from bench.errors import ConfigError
from bench.registry import Encoder, register_encoder

SAMPLE_RATE = 16_000
N_FFT = 512
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
# Bump when a change to this module or baselines.functional changes the features: cached ones go stale.
FEATURE_VERSION = 1


class _Spectral(Encoder):
    """Shared framing, mel projection and length bookkeeping of the spectral encoders."""

    trainable = False
    needs_pretraining = False

    def __init__(self, n_mels: int, n_fft: int, win_length: int, hop_length: int, window: str,
                 fmin: float, fmax: float | None, amin: float, normalize: bool, cmvn_eps: float) -> None:
        super().__init__()
        if window not in AF.WINDOWS:
            raise ConfigError(f"{self.name}: unknown window {window!r}; use one of {', '.join(AF.WINDOWS)}")
        if not 0 < win_length <= n_fft:
            raise ConfigError(f"{self.name}: win_length must be in 1..n_fft ({n_fft}), got {win_length}")
        if hop_length <= 0 or n_mels <= 0:
            raise ConfigError(f"{self.name}: hop_length and n_mels must be positive, got {hop_length}, {n_mels}")
        if not 0 <= fmin < (self.sample_rate / 2 if fmax is None else fmax) <= self.sample_rate / 2:
            raise ConfigError(f"{self.name}: need 0 <= fmin < fmax <= {self.sample_rate // 2} Hz, "
                              f"got {fmin}, {fmax}")
        self.n_mels = n_mels
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.window = window
        self.fmin = float(fmin)
        self.fmax = None if fmax is None else float(fmax)
        self.amin = amin
        self.normalize = normalize
        self.cmvn_eps = cmvn_eps
        self.frame_rate = self.sample_rate / hop_length
        # A non-persistent buffer follows .to(device) but stays out of state_dict: nothing to train or save.
        fbank = AF.mel_filterbank(self.sample_rate, n_fft, n_mels, self.fmin, self.fmax)
        self.register_buffer("fbank", fbank.clone(), persistent=False)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return AF.frame_lengths(torch.as_tensor(lengths), self.hop_length, center=True)

    def _mel_power(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mel power spectrogram [B, n_mels, frames] and the valid frame counts."""
        if wav.dim() != 2:
            raise ValueError(f"wav must be [B, T], got shape {tuple(wav.shape)}")
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(max=wav.shape[-1])
        wav = wav * AF.length_mask(lengths, wav.shape[-1]).to(wav.dtype)
        power = AF.stft_power(wav, self.n_fft, self.win_length, self.hop_length, self.window, center=True,
                              pad_mode="constant")
        return AF.mel_spectrogram(power, self.fbank), self.output_lengths(lengths).to(wav.device)

    def _finish(self, feats: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CMVN (if asked), zeros beyond the valid frames, and [B, C, T] -> [B, T, C]."""
        if self.normalize:
            feats = AF.cmvn(feats, frames, eps=self.cmvn_eps)
        else:
            feats = feats * AF.length_mask(frames, feats.shape[-1]).unsqueeze(1).to(feats.dtype)
        return feats.transpose(1, 2).contiguous(), frames

    def _framing_config(self) -> dict:
        return {"version": FEATURE_VERSION, "sample_rate": self.sample_rate, "n_fft": self.n_fft,
                "win_length": self.win_length, "hop_length": self.hop_length, "window": self.window,
                "center": True, "pad_mode": "constant", "n_mels": self.n_mels, "fmin": self.fmin,
                "fmax": self.fmax, "mel_scale": "slaney", "mel_norm": "slaney", "amin": self.amin,
                "normalize": self.normalize, "cmvn_eps": self.cmvn_eps}


@register_encoder("mfcc39")
class MFCC39(_Spectral):
    """13 MFCCs + delta + delta-delta (39 dims at 100 Hz), per-utterance CMVN.

    Exactly librosa.feature.mfcc (log-mel with power_to_db's default top_db=80 and amin=1e-10, the
    clip being measured against its own peak, then an orthonormal DCT-II) on 40 mel bands: librosa's
    default of 128 bands is for 22 kHz music, 40 is the speech standard (Kaldi, HTK). Deltas are
    librosa.feature.delta with width 9: order 1 for delta and order 2 (a quadratic Savitzky-Golay
    fit, not delta-of-delta) for delta-delta, both on the raw MFCCs.
    """

    name = "mfcc39"

    def __init__(self, n_mfcc: int = 13, n_mels: int = 40, n_fft: int = N_FFT, win_length: int = WIN_LENGTH,
                 hop_length: int = HOP_LENGTH, window: str = "hann", fmin: float = 0.0, fmax: float | None = None,
                 top_db: float | None = 80.0, amin: float = 1e-10, delta_width: int = 9, normalize: bool = True,
                 cmvn_eps: float = 1e-5) -> None:
        super().__init__(n_mels, n_fft, win_length, hop_length, window, fmin, fmax, amin, normalize, cmvn_eps)
        if not 0 < n_mfcc <= n_mels:
            raise ConfigError(f"{self.name}: n_mfcc must be in 1..n_mels ({n_mels}), got {n_mfcc}")
        if delta_width < 3 or delta_width % 2 == 0:
            raise ConfigError(f"{self.name}: delta_width must be an odd integer >= 3, got {delta_width}")
        self.n_mfcc = n_mfcc
        self.top_db = top_db
        self.delta_width = delta_width
        self.dim = 3 * n_mfcc
        self.register_buffer("dct", AF.dct_matrix(n_mfcc, n_mels).clone(), persistent=False)

    def mfcc(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw MFCCs [B, n_mfcc, frames] (librosa layout, no deltas, no CMVN) and valid frame counts."""
        mel, frames = self._mel_power(wav, lengths)
        log_mel = AF.power_to_db(mel, ref=1.0, amin=self.amin, top_db=self.top_db, lengths=frames)
        mfcc = torch.matmul(self.dct.to(log_mel.dtype), log_mel)
        return mfcc * AF.length_mask(frames, mfcc.shape[-1]).unsqueeze(1).to(mfcc.dtype), frames

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mfcc, frames = self.mfcc(wav, lengths)
        d1 = AF.deltas(mfcc, self.delta_width, order=1, lengths=frames)
        d2 = AF.deltas(mfcc, self.delta_width, order=2, lengths=frames)
        return self._finish(torch.cat([mfcc, d1, d2], dim=1), frames)

    def config(self) -> dict:
        return {**super().config(), **self._framing_config(), "n_mfcc": self.n_mfcc, "dct": "II-ortho",
                "lifter": 0, "top_db": self.top_db, "delta_width": self.delta_width, "delta_orders": [1, 2]}


@register_encoder("logmel")
class LogMel(_Spectral):
    """80-band log-mel power at 100 Hz, per-utterance CMVN unless normalize=False.

    The log is librosa.power_to_db without top_db: 10*log10(max(power, amin)), amin=1e-10 (a -100 dB
    floor; max rather than power + amin, so values match librosa). With normalize=False the output
    is librosa's power_to_db(melspectrogram(...), top_db=None) itself.
    """

    name = "logmel"

    def __init__(self, n_mels: int = 80, n_fft: int = N_FFT, win_length: int = WIN_LENGTH,
                 hop_length: int = HOP_LENGTH, window: str = "hann", fmin: float = 0.0, fmax: float | None = None,
                 amin: float = 1e-10, normalize: bool = True, cmvn_eps: float = 1e-5) -> None:
        super().__init__(n_mels, n_fft, win_length, hop_length, window, fmin, fmax, amin, normalize, cmvn_eps)
        self.dim = n_mels

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mel, frames = self._mel_power(wav, lengths)
        return self._finish(AF.power_to_db(mel, ref=1.0, amin=self.amin, top_db=None), frames)

    def config(self) -> dict:
        return {**super().config(), **self._framing_config(), "log": "10log10", "top_db": None}
