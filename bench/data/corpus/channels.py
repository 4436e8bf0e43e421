"""Recording channels: what happens to a clip between the talker's room and the file.

Real word corpora were not recorded through a perfect 16 kHz channel. Speech Commands came through
browsers and phones: cheap microphones, band limits, lossy codecs, automatic gain. A channel here
is a chain of stages applied to the mixed clip (speech, room and noise: the microphone hears them
all), each stage drawn per clip from a documented mix (CHANNEL_MIX):

- microphone: the frequency response of a device class (MICROPHONES): a high-pass corner, a
  presence peak and a low-pass corner, each jittered per clip. These are shapes typical of the
  class, not measured responses of named devices.
- telephone: narrowband telephony, resampled to 8 kHz, band-limited to 300-3400 Hz (ITU-T G.712's
  passband), optionally coded with G.711 mu-law or AMR-NB, and resampled back to 16 kHz.
- codec: a lossy round trip through PyAV's encoders at 16 kHz (MP3, Opus, AAC; CODECS lists
  each with its bit rates). The decoder's delay is measured and removed, so the speech span in the
  manifest still holds.
- gain: automatic gain control towards a target level, then clipping, and a DC offset.

The clip's channel is named in the manifest's `channel` column, e.g. `laptop+opus-12k` or
`telephone+amr-nb-7.95k+agc`; `clean` means no stage.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from bench.errors import ConfigError

SR = 16_000


@dataclass(frozen=True)
class Microphone:
    highpass_hz: float
    presence_hz: float
    presence_db: float
    lowpass_hz: float


MICROPHONES = {
    "headset": Microphone(highpass_hz=100, presence_hz=3000, presence_db=2.0, lowpass_hz=7500),
    "phone": Microphone(highpass_hz=150, presence_hz=2500, presence_db=4.0, lowpass_hz=7000),
    "laptop": Microphone(highpass_hz=250, presence_hz=4000, presence_db=5.0, lowpass_hz=6500),
    "webcam": Microphone(highpass_hz=300, presence_hz=1500, presence_db=3.0, lowpass_hz=5500),
}

# name -> (PyAV encoder, container, sample rate, bit rates to draw from)
CODECS = {
    "mp3": ("libmp3lame", "mp3", SR, (16_000, 24_000, 32_000)),
    "opus": ("libopus", "ogg", SR, (8_000, 12_000, 16_000)),
    "aac": ("aac", "adts", SR, (16_000, 24_000, 32_000)),
    "amr-nb": ("amr_nb", "amr", 8_000, (7_950, 12_200)),
    "mu-law": ("pcm_mulaw", "wav", 8_000, (64_000,)),
}
WIDEBAND_CODECS = ("mp3", "opus", "aac")
TELEPHONE_CODECS = ("amr-nb", "mu-law")
TELEPHONE_BAND_HZ = (300.0, 3400.0)


@dataclass(frozen=True)
class ChannelMix:
    """Shares of the channel families (they sum to 1) and the per-clip extras."""

    clean: float = 0.30
    microphone: float = 0.20
    microphone_codec: float = 0.25
    telephone: float = 0.15
    microphone_agc: float = 0.10
    telephone_codec_prob: float = 0.7   # telephone clips also coded (AMR-NB or mu-law)
    clip_after_agc_prob: float = 0.5
    dc_offset_prob: float = 0.1         # on any non-clean clip

    def validated(self) -> "ChannelMix":
        shares = (self.clean, self.microphone, self.microphone_codec, self.telephone, self.microphone_agc)
        if min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-6:
            raise ConfigError(f"channel mix shares must be non-negative and sum to 1, got {shares}")
        return self


CHANNEL_MIX = ChannelMix()
# The second corpus's mix (bench.data.corpus.embedded.PRESETS["flite"]): a phone-first collection,
# fewer clean clips, more coded and narrowband ones, so the two corpora also differ in channel.
MOBILE_MIX = ChannelMix(clean=0.15, microphone=0.15, microphone_codec=0.35, telephone=0.25,
                        microphone_agc=0.10, telephone_codec_prob=0.9)
CHANNEL_MIXES: dict[str, ChannelMix | None] = {"none": None, "default": CHANNEL_MIX, "mobile": MOBILE_MIX}


@dataclass
class Channel:
    microphone: str | None = None
    telephone: bool = False
    codec: str | None = None
    bit_rate: int | None = None
    agc: bool = False
    clip_level: float | None = None     # hard-clip threshold (fraction of full scale) after AGC
    dc_offset: float = 0.0
    jitter: dict = field(default_factory=dict)  # the microphone's per-clip corner factors

    @property
    def name(self) -> str:
        parts = [self.microphone] if self.microphone else []
        parts += ["telephone"] if self.telephone else []
        if self.codec:
            parts.append(f"{self.codec}-{self.bit_rate / 1000:g}k")
        parts += ["agc"] if self.agc else []
        parts += ["clip"] if self.clip_level is not None else []
        parts += ["dc"] if self.dc_offset else []
        return "+".join(parts) or "clean"


def draw_channel(rng: np.random.Generator, mix: ChannelMix = CHANNEL_MIX) -> Channel:
    mix = mix.validated()
    families = ("clean", "microphone", "microphone_codec", "telephone", "microphone_agc")
    family = families[int(rng.choice(len(families), p=[getattr(mix, f) for f in families]))]
    channel = Channel()
    if family == "clean":
        return channel
    if family.startswith("microphone"):
        channel.microphone = str(rng.choice(sorted(MICROPHONES)))
        channel.jitter = {"highpass": float(rng.uniform(0.8, 1.25)), "lowpass": float(rng.uniform(0.9, 1.1))}
    if family == "telephone":
        channel.telephone = True
        if rng.random() < mix.telephone_codec_prob:
            channel.codec = str(rng.choice(TELEPHONE_CODECS))
    if family == "microphone_codec":
        channel.codec = str(rng.choice(WIDEBAND_CODECS))
    if channel.codec:
        channel.bit_rate = int(rng.choice(CODECS[channel.codec][3]))
    if family == "microphone_agc":
        channel.agc = True
        if rng.random() < mix.clip_after_agc_prob:
            channel.clip_level = float(rng.uniform(0.3, 0.7))
    if rng.random() < mix.dc_offset_prob:
        channel.dc_offset = float(rng.choice([-1, 1]) * rng.uniform(0.005, 0.03))
    return channel


def apply_channel(wav: np.ndarray, channel: Channel) -> np.ndarray:
    """The clip as the channel delivers it: same length and alignment, float32."""
    out = np.asarray(wav, dtype=np.float64)
    if channel.microphone:
        out = microphone_response(out, MICROPHONES[channel.microphone], **channel.jitter)
    if channel.telephone:
        out = telephone(out, channel.codec, channel.bit_rate)
    elif channel.codec:
        out = codec_round_trip(out, channel.codec, channel.bit_rate)
    if channel.agc:
        out = automatic_gain(out)
    if channel.clip_level is not None:
        out = np.clip(out, -channel.clip_level, channel.clip_level)
    out = out + channel.dc_offset
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def _peaking_sos(centre_hz: float, gain_db: float, q: float = 1.0) -> np.ndarray:
    """RBJ audio-EQ-cookbook peaking filter as one second-order section."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * centre_hz / SR
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a, -2 * np.cos(w0), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * np.cos(w0), 1 - alpha / a])
    return np.concatenate([b / den[0], den / den[0]])[None, :]


def microphone_response(wav: np.ndarray, mic: Microphone, highpass: float = 1.0, lowpass: float = 1.0) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    sos = np.concatenate([butter(2, mic.highpass_hz * highpass, "highpass", fs=SR, output="sos"),
                          _peaking_sos(mic.presence_hz, mic.presence_db),
                          butter(4, min(mic.lowpass_hz * lowpass, 0.45 * SR), "lowpass", fs=SR, output="sos")])
    return sosfilt(sos, wav)


def telephone(wav: np.ndarray, codec: str | None = None, bit_rate: int | None = None) -> np.ndarray:
    """Narrowband telephony: 8 kHz, 300-3400 Hz, optionally coded, back at 16 kHz."""
    from scipy.signal import butter, sosfilt

    from bench.data.audio import resample

    narrow = resample(wav.astype(np.float32), SR, 8_000).astype(np.float64)
    narrow = sosfilt(butter(4, TELEPHONE_BAND_HZ, "bandpass", fs=8_000, output="sos"), narrow)
    if codec:
        narrow = codec_round_trip(narrow, codec, bit_rate, rate=8_000)
    back = resample(narrow.astype(np.float32), 8_000, SR).astype(np.float64)
    return _fit_length(back, len(wav))


def codec_round_trip(wav: np.ndarray, codec: str, bit_rate: int | None = None, rate: int = SR) -> np.ndarray:
    """Encode and decode `wav` (at `rate`) with a PyAV encoder; the codec's delay is removed."""
    import av

    if codec not in CODECS:
        raise ConfigError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    encoder, container, codec_rate, rates = CODECS[codec]
    if codec_rate != rate:
        raise ConfigError(f"codec {codec} runs at {codec_rate} Hz, not {rate} Hz")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(encoder, rate=rate)
        stream.layout = "mono"
        stream.bit_rate = int(bit_rate or rates[0])
        to_encoder = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        pcm = (np.clip(wav, -1, 1) * 32767).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for chunk in to_encoder.resample(frame) + to_encoder.resample(None):
            out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    buf.seek(0)
    decoded = []
    with av.open(buf, mode="r") as inp:
        to_float = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in inp.decode(audio=0):
            decoded += [f.to_ndarray().reshape(-1) for f in to_float.resample(frame)]
        decoded += [f.to_ndarray().reshape(-1) for f in to_float.resample(None)]
    out_wav = np.concatenate(decoded).astype(np.float64) if decoded else np.zeros(len(wav))
    return _fit_length(out_wav[_delay(wav, out_wav):], len(wav))


def _delay(reference: np.ndarray, delayed: np.ndarray, max_lag: int = 2_400) -> int:
    """The lag (samples, >= 0) at which `delayed` best matches `reference` (FFT cross-correlation)."""
    n = len(reference) + len(delayed)
    size = 1 << int(np.ceil(np.log2(n)))
    xcorr = np.fft.irfft(np.fft.rfft(delayed, size) * np.conj(np.fft.rfft(reference, size)), size)
    lags = xcorr[: max_lag + 1]
    return int(np.argmax(lags)) if np.any(lags) else 0


def _fit_length(wav: np.ndarray, n: int) -> np.ndarray:
    return wav[:n] if len(wav) >= n else np.pad(wav, (0, n - len(wav)))


def automatic_gain(wav: np.ndarray, target_dbfs: float = -20.0, max_gain_db: float = 20.0,
                   min_gain_db: float = -10.0, attack_s: float = 0.01, release_s: float = 0.3) -> np.ndarray:
    """A frame-wise AGC: the gain that brings each 10 ms frame's RMS to the target, bounded and
    smoothed (fast attack when the level rises, slow release when it falls), as phones apply."""
    hop = SR // 100
    frames = _fit_length(wav, int(np.ceil(len(wav) / hop)) * hop).reshape(-1, hop)
    rms_db = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-10)
    wanted = np.clip(target_dbfs - rms_db, min_gain_db, max_gain_db)
    gain_db = np.empty_like(wanted)
    current = wanted[0]
    attack, release = np.exp(-0.01 / attack_s), np.exp(-0.01 / release_s)
    for i, g in enumerate(wanted):
        coeff = attack if g < current else release  # cutting gain is the fast direction
        current = coeff * current + (1 - coeff) * g
        gain_db[i] = current
    per_sample = np.repeat(10 ** (gain_db / 20), hop)[: len(wav)]
    return wav * per_sample
