"""libespeak-ng through ctypes, in synchronous mode with IPA phoneme events.

The library and its voice data come from the `espeakng-loader` wheel, so synthesis works offline
with no system package. libespeak-ng keeps global state and is not thread-safe: use one
`Synthesizer` per process (the corpus builder runs one per worker process).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ESPEAK_SAMPLE_RATE = 22_050

# espeak_AUDIO_OUTPUT: synchronous, with audio handed to the callback.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_Initialize options.
_INIT_PHONEME_EVENTS = 0x0001
_INIT_PHONEME_IPA = 0x0002
_INIT_DONT_EXIT = 0x8000
# espeak_EVENT_TYPE values.
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_END = 5
_EVENT_MSG_TERMINATED = 6
_EVENT_PHONEME = 7
# espeak_PARAMETER values.
PARAM_RATE = 1
PARAM_VOLUME = 2
PARAM_PITCH = 3
PARAM_RANGE = 4
PARAM_WORDGAP = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0

# Voices that load under libespeak-ng 1.52. `en-gb` does not: British English is `en`.
ENGLISH_ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
                   "en-gb-x-gbcwmd", "en-029", "en-us-nyc")


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


class EspeakError(RuntimeError):
    """libespeak-ng refused a call (unknown voice, failed init)."""


@dataclass(frozen=True)
class Phoneme:
    """One phoneme event: IPA symbol without stress marks, start sample at 22,050 Hz."""

    symbol: str
    sample: int
    stress: str = ""


@dataclass
class Utterance:
    audio: np.ndarray  # float32 in [-1, 1] at ESPEAK_SAMPLE_RATE
    phonemes: list[Phoneme]
    sample_rate: int = ESPEAK_SAMPLE_RATE


_STRESS_MARKS = "ˈˌ"


def data_path() -> str:
    import espeakng_loader

    return espeakng_loader.get_data_path()


def available_variants() -> list[str]:
    """Voice variants shipped with the data (`espeak-ng-data/voices/!v`)."""
    return sorted(p.name for p in (Path(data_path()) / "voices" / "!v").iterdir() if p.is_file())


class Synthesizer:
    """One initialised libespeak-ng instance. Create at most one per process."""

    _instance_pid: int | None = None

    def __init__(self) -> None:
        import espeakng_loader

        if Synthesizer._instance_pid == os.getpid():
            raise EspeakError("libespeak-ng holds global state: create one Synthesizer per process")
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        # Voices with breath or noise draw from libc rand(); its state must be ours to set.
        self._libc = ctypes.CDLL(None)
        self._libc.srand.argtypes = [ctypes.c_uint]
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                           ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint),
                                           ctypes.c_void_p]
        self._lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path().encode(),
                                           _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA | _INIT_DONT_EXIT)
        if rate != ESPEAK_SAMPLE_RATE:
            raise EspeakError(f"espeak_Initialize returned {rate}; expected sample rate {ESPEAK_SAMPLE_RATE}")
        Synthesizer._instance_pid = os.getpid()
        self._variants = set(available_variants())
        self._chunks: list[np.ndarray] = []
        self._events: list[Phoneme] = []
        # Keep a reference: ctypes callbacks are freed when garbage-collected.
        self._callback = _SynthCallback(self._on_audio)
        self._lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, numsamples, events) -> int:
        if numsamples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                raw = ev.id.string.decode("utf-8", errors="replace")
                stress = "".join(c for c in raw if c in _STRESS_MARKS)
                symbol = "".join(c for c in raw if c not in _STRESS_MARKS)
                if symbol:
                    self._events.append(Phoneme(symbol=symbol, sample=int(ev.sample), stress=stress))
            i += 1
        return 0

    def set_voice(self, accent: str, variant: str | None = None) -> None:
        """Select `accent+variant`, refusing unknown variants (espeak would silently ignore them)."""
        if variant is not None and variant not in self._variants:
            raise EspeakError(f"unknown espeak variant {variant!r}; known: {', '.join(sorted(self._variants))}")
        name = accent if variant is None else f"{accent}+{variant}"
        if self._lib.espeak_SetVoiceByName(name.encode()) != _EE_OK:
            raise EspeakError(f"espeak could not load voice {name!r}")

    def set_prosody(self, *, rate: int, pitch: int, pitch_range: int, volume: int = 100) -> None:
        """rate in words/min (80..450), pitch and range 0..100, volume 0..200."""
        for param, value in ((PARAM_RATE, rate), (PARAM_PITCH, pitch), (PARAM_RANGE, pitch_range),
                             (PARAM_VOLUME, volume)):
            if self._lib.espeak_SetParameter(param, int(value), 0) != _EE_OK:
                raise EspeakError(f"espeak_SetParameter({param}, {value}) failed")

    def synth(self, text: str, noise_seed: int = 0) -> Utterance:
        """Synthesise `text`; return int16-scaled float audio and its phoneme events.

        `noise_seed` seeds libc's rand(), which espeak's breathy and noisy voices (e.g. the f2
        and f3 variants) draw from; without it their output differs from process to process.
        """
        self._chunks, self._events = [], []
        self._libc.srand(noise_seed & 0xFFFFFFFF)
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data)
        err = self._lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise EspeakError(f"espeak_Synth failed with code {err} for {text!r}")
        audio = (np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)).astype(np.float32)
        return Utterance(audio=audio / 32768.0, phonemes=list(self._events))
