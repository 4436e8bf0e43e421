"""CMU Flite through ctypes: a second voice engine, with phone timings, for the embedded corpus.

Flite's voices are of other families than espeak-ng's formant voices: `slt`, `rms` and `awb` are
statistical parametric (clustergen) voices trained on recordings of one US female, one US male
and one Scottish male talker; `kal16` is a US male diphone voice (concatenated recorded units).
They come from Debian's packages (`apt-get install flite1-dev`, which brings libflite1); nothing is
downloaded at run time. `available()` says whether the libraries are here.

`synth` returns the same Utterance as bench.data.corpus.espeak: 16 kHz audio and phone events
whose symbols are IPA (Flite's US English phones are CMU ARPAbet; ARPABET_TO_IPA maps them), so
the viseme table and everything downstream read both engines alike. Phone start samples come from
Flite's Segment relation (each segment's `end` time); pauses are dropped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import numpy as np

from bench.data.corpus.espeak import Phoneme, Utterance
from bench.errors import ConfigError

FLITE_VOICES = ("slt", "rms", "awb", "kal16")
FLITE_VOICE_GENDER = {"slt": "female", "rms": "male", "awb": "male", "kal16": "male"}
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/local/lib")
INSTALL_HINT = "install CMU Flite's libraries: `apt-get install flite1-dev` (Debian/Ubuntu)"

# CMU ARPAbet (Flite's us_english phoneset) to IPA, as the viseme table spells them.
ARPABET_TO_IPA = {
    "aa": "ɑ", "ae": "æ", "ah": "ʌ", "ao": "ɔ", "aw": "aʊ", "ax": "ə", "axr": "ɚ", "ay": "aɪ",
    "eh": "ɛ", "er": "ɜ", "ey": "eɪ", "ih": "ɪ", "iy": "i", "ow": "oʊ", "oy": "ɔɪ", "uh": "ʊ",
    "uw": "u", "b": "b", "ch": "tʃ", "d": "d", "dh": "ð", "dx": "ɾ", "f": "f", "g": "ɡ", "hh": "h",
    "jh": "dʒ", "k": "k", "l": "l", "m": "m", "n": "n", "ng": "ŋ", "p": "p", "r": "ɹ", "s": "s",
    "sh": "ʃ", "t": "t", "th": "θ", "v": "v", "w": "w", "y": "j", "z": "z", "zh": "ʒ",
}
PAUSES = {"pau", "h#", "brth"}
# The shared libraries: the engine, its language and lexicon, then one per voice.
CORE_LIBRARIES = ("flite", "flite_usenglish", "flite_cmulex")
LIBRARIES = CORE_LIBRARIES + tuple(f"flite_cmu_us_{v}" for v in FLITE_VOICES)


class FliteError(ConfigError):
    """libflite is missing or refused a call. The message says what to install or fix (the CLI
    prints it, as it does every ConfigError, instead of a traceback)."""


class _Wave(ctypes.Structure):
    _fields_ = [("type", ctypes.c_char_p), ("sample_rate", ctypes.c_int), ("num_samples", ctypes.c_int),
                ("num_channels", ctypes.c_int), ("samples", ctypes.POINTER(ctypes.c_short))]


class _Voice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("features", ctypes.c_void_p), ("ffunctions", ctypes.c_void_p)]


def _find(name: str) -> Path | None:
    for folder in LIBRARY_DIRS:
        path = Path(folder) / f"lib{name}.so.1"
        if path.is_file():
            return path
    found = ctypes.util.find_library(name)
    return Path(found) if found else None


def library_digest() -> str:
    """A digest of the installed libflite and voice libraries: the corpus id hashes it, because
    another Flite build (or voice) would give other audio for the same config."""
    import hashlib

    digest = hashlib.sha256()
    for name in LIBRARIES:
        path = _find(name)
        if path is None:
            raise FliteError(f"lib{name}.so.1 not found in {', '.join(LIBRARY_DIRS)}: {INSTALL_HINT}")
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def available() -> bool:
    """Whether libflite and every voice library are installed here."""
    return all(_find(n) for n in LIBRARIES)


class FliteSynthesizer:
    """libflite with its US English voices, in this process."""

    def __init__(self) -> None:
        paths = {n: _find(n) for n in CORE_LIBRARIES}
        if not all(paths.values()):
            raise FliteError(f"libflite not found in {', '.join(LIBRARY_DIRS)}: {INSTALL_HINT}")
        for path in paths.values():  # the voices resolve their language and lexicon symbols globally
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        lib = self._lib = ctypes.CDLL(str(paths["flite"]))
        lib.flite_init()
        signatures = {
            "flite_synth_text": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_void_p]),
            "utt_wave": (ctypes.POINTER(_Wave), [ctypes.c_void_p]),
            "utt_relation": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
            "relation_head": (ctypes.c_void_p, [ctypes.c_void_p]),
            "item_next": (ctypes.c_void_p, [ctypes.c_void_p]),
            "item_feat_float": (ctypes.c_float, [ctypes.c_void_p, ctypes.c_char_p]),
            "item_feat_string": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_char_p]),
            "ffeature_string": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_char_p]),
            "delete_utterance": (None, [ctypes.c_void_p]),
            "flite_feat_set_float": (None, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float]),
        }
        for name, (restype, argtypes) in signatures.items():
            getattr(lib, name).restype, getattr(lib, name).argtypes = restype, argtypes
        self._libc = ctypes.CDLL(None)
        self._libc.srand.argtypes = [ctypes.c_uint]
        self._voices: dict[str, ctypes._Pointer] = {}
        self._voice: ctypes._Pointer | None = None

    def set_voice(self, name: str) -> None:
        if name not in FLITE_VOICES:
            raise FliteError(f"unknown Flite voice {name!r}; known: {', '.join(FLITE_VOICES)}")
        if name not in self._voices:
            path = _find(f"flite_cmu_us_{name}")
            if path is None:
                raise FliteError(f"the Flite voice {name!r} (libflite_cmu_us_{name}.so.1) is missing: {INSTALL_HINT}")
            register = getattr(ctypes.CDLL(str(path)), f"register_cmu_us_{name}")
            register.restype, register.argtypes = ctypes.POINTER(_Voice), [ctypes.c_char_p]
            self._voices[name] = register(None)
        self._voice = self._voices[name]

    def set_prosody(self, f0_shift: float = 1.0, duration_stretch: float = 1.0) -> None:
        """Scale the voice's pitch and slow it down (>1) or speed it up (<1).

        Measured on "seven": f0_shift 1.3 moved slt's median F0 from 162 to 215 Hz, but left rms's
        at 87 Hz; vary rms's pitch by resampling (the vocal-tract warp the corpus applies) instead."""
        if self._voice is None:
            raise FliteError("set_voice before set_prosody")
        features = self._voice.contents.features
        self._lib.flite_feat_set_float(features, b"f0_shift", float(f0_shift))
        self._lib.flite_feat_set_float(features, b"duration_stretch", float(duration_stretch))

    def synth(self, text: str, noise_seed: int = 0) -> Utterance:
        """The utterance of `text`; the clustergen voices' excitation noise draws from libc's rand(),
        seeded here, so the same call gives the same samples."""
        if self._voice is None:
            raise FliteError("set_voice before synth")
        self._libc.srand(int(noise_seed) & 0xFFFFFFFF)
        utt = self._lib.flite_synth_text(text.encode(), ctypes.cast(self._voice, ctypes.c_void_p))
        if not utt:
            raise FliteError(f"Flite could not synthesise {text!r}")
        try:
            wave = self._lib.utt_wave(utt).contents
            audio = np.ctypeslib.as_array(wave.samples, shape=(wave.num_samples,)).astype(np.float32) / 32768.0
            phonemes = []
            start = 0.0
            item = self._lib.relation_head(self._lib.utt_relation(utt, b"Segment"))
            while item:
                name = self._lib.item_feat_string(item, b"name").decode()
                end = float(self._lib.item_feat_float(item, b"end"))
                if name not in PAUSES:
                    if name not in ARPABET_TO_IPA:
                        raise FliteError(f"Flite phone {name!r} has no IPA mapping: add it to ARPABET_TO_IPA "
                                         "in bench/data/corpus/flite.py")
                    # The lexicon's syllable stress, spelt as espeak's marks: "1" primary, "0" none.
                    stress = self._lib.ffeature_string(item, b"R:SylStructure.parent.stress").decode()
                    phonemes.append(Phoneme(symbol=ARPABET_TO_IPA[name], sample=int(round(start * wave.sample_rate)),
                                            stress="ˈ" if stress == "1" else ""))
                start = end
                item = self._lib.item_next(item)
            return Utterance(audio=audio, phonemes=phonemes, sample_rate=int(wave.sample_rate))
        finally:
            self._lib.delete_utterance(utt)
