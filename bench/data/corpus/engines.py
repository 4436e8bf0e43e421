"""The voice engines the corpus builder speaks through, one synthesiser per process.

- `espeak`: libespeak-ng's formant voices (bench.data.corpus.espeak), the default corpus's engine.
- `flite`: CMU Flite's voices (bench.data.corpus.flite): clustergen voices trained on recordings
  (slt, rms, awb) and a diphone voice (kal16); the second corpus's engine.

`speak` takes a speaker's prosody settings on espeak's scales (pitch and range 0..100, rate in
words per minute) and maps them onto each engine's controls, then applies the speaker's vocal-tract
warp and trims the utterance to its speech span. Flite has no pitch-range control, so a style's
range offset is not heard in Flite corpora; its pitch level, rate and loudness are.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from bench.data.audio import TARGET_SAMPLE_RATE, resample
from bench.errors import ConfigError

ENGINES = ("espeak", "flite")

# Flite: the f0_shift that brings each voice's median F0 near the published adult norms (measured
# here with pYIN on five of the words: slt 162-192 Hz, awb 106-140, kal16 93-102, rms 80-99 Hz).
# rms ignores f0_shift (Flite 2.2): its speakers get their pitch from the vocal-tract warp alone.
FLITE_BASE_F0_SHIFT = {"slt": 1.25, "rms": 1.0, "awb": 1.0, "kal16": 1.2}
FLITE_SEMITONES_PER_PITCH_STEP = 0.2   # espeak pitch 30..70 -> +-4 semitones around the voice's base
FLITE_REFERENCE_RATE = 170             # words per minute heard at duration_stretch 1

_SYNTH = None
_ENGINE: str | None = None


@dataclass
class Rendered:
    audio: np.ndarray              # 16 kHz, trimmed to the speech span
    phonemes: list[tuple[str, float, float, str]]  # symbol, start_s, end_s (from audio start), stress


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(f"unknown voice engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return engine


def start(engine: str) -> None:
    """Make this process's synthesiser (once per process and engine)."""
    global _SYNTH, _ENGINE
    if _ENGINE == check_engine(engine):
        return
    if engine == "espeak":
        from bench.data.corpus.espeak import Synthesizer

        _SYNTH = Synthesizer()
    else:
        from bench.data.corpus.flite import FliteSynthesizer

        _SYNTH = FliteSynthesizer()
    _ENGINE = engine


@lru_cache(maxsize=None)
def engine_digest(engine: str) -> str:
    """What, besides the config, decides the engine's audio: the corpus id hashes it."""
    if check_engine(engine) == "espeak":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("espeakng-loader")
        except PackageNotFoundError:
            return "unknown"
    from bench.data.corpus.flite import library_digest

    return library_digest()


def _utterance(engine: str, speaker, word: str, *, pitch: int, pitch_range: int, rate: int, noise_seed: int):
    if engine == "espeak":
        _SYNTH.set_voice(speaker.accent, speaker.variant)
        _SYNTH.set_prosody(rate=int(np.clip(rate, 80, 450)), pitch=int(np.clip(pitch, 0, 100)),
                           pitch_range=int(np.clip(pitch_range, 0, 100)))
    else:
        _SYNTH.set_voice(speaker.variant)
        semitones = FLITE_SEMITONES_PER_PITCH_STEP * (np.clip(pitch, 0, 100) - 50)
        _SYNTH.set_prosody(f0_shift=FLITE_BASE_F0_SHIFT[speaker.variant] * 2.0 ** (semitones / 12.0),
                           duration_stretch=FLITE_REFERENCE_RATE / float(np.clip(rate, 80, 450)))
    return _SYNTH.synth(word, noise_seed=noise_seed)


def speak(engine: str, speaker, word: str, *, pitch: int, pitch_range: int, rate: int, noise_seed: int) -> Rendered:
    """Synthesise a word with the speaker's voice, warp its vocal tract and return 16 kHz speech."""
    start(engine)
    utt = _utterance(engine, speaker, word, pitch=pitch, pitch_range=pitch_range, rate=rate, noise_seed=noise_seed)
    if not utt.phonemes or utt.audio.size == 0:
        raise RuntimeError(f"{engine} produced no speech for {word!r} with voice {speaker.accent}+{speaker.variant}")
    # Playing audio as if recorded at rate*warp scales formants and pitch by warp.
    effective_sr = int(round(utt.sample_rate * speaker.vtl_warp / 50.0)) * 50
    audio = utt.audio
    window = utt.sample_rate // 100
    envelope = np.convolve(np.abs(audio), np.ones(window) / window, mode="same")
    voiced = np.flatnonzero(envelope > 0.02 * envelope.max())
    first = min(utt.phonemes[0].sample, int(voiced[0]))
    last = int(voiced[-1]) + 1
    starts = [p.sample for p in utt.phonemes] + [last]
    phonemes = []
    for k, p in enumerate(utt.phonemes):
        begin, end = max(starts[k], first), max(min(starts[k + 1], last), starts[k] + 1)
        phonemes.append((p.symbol, (begin - first) / effective_sr, (end - first) / effective_sr, p.stress))
    speech = resample(audio[first:last], effective_sr, TARGET_SAMPLE_RATE)
    return Rendered(audio=speech, phonemes=phonemes)
