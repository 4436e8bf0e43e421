"""From espeak's IPA phoneme events to a 25 fps articulation track.

The track has three channels per video frame, each in [0, 1]:
  opening  - vertical lip aperture (0 closed, 1 wide open);
  width    - horizontal lip spread (0 pursed, 1 spread);
  rounding - lip rounding and protrusion.

Each phoneme maps to articulatory targets through a viseme table. Multi-symbol phonemes
(diphthongs such as `aɪ`, r-coloured vowels such as `ɑːɹ`) are split into table entries and move
from the first target to the last within the phoneme. A symbol that cannot be split raises
UnmappedPhonemeError, and a test runs every accent over every word to make sure none is missed.
"""

from __future__ import annotations

import unicodedata

import numpy as np

VIDEO_FPS = 25
TRACK_CHANNELS = ("opening", "width", "rounding")

# (opening, width, rounding). Values follow standard viseme classes: bilabials close the lips,
# labiodentals nearly close them, open vowels open widest, rounded vowels protrude.
REST = (0.02, 0.45, 0.15)
VISEMES: dict[str, tuple[float, float, float]] = {
    # bilabial closure
    "p": (0.0, 0.45, 0.15), "b": (0.0, 0.45, 0.15), "m": (0.0, 0.45, 0.15),
    # labiodental
    "f": (0.08, 0.5, 0.05), "v": (0.08, 0.5, 0.05),
    # dental / alveolar
    "θ": (0.2, 0.55, 0.05), "ð": (0.2, 0.55, 0.05),
    "t": (0.18, 0.55, 0.1), "d": (0.18, 0.55, 0.1), "n": (0.18, 0.55, 0.1),
    "s": (0.12, 0.65, 0.05), "z": (0.12, 0.65, 0.05), "l": (0.28, 0.55, 0.1),
    "ɾ": (0.2, 0.55, 0.1), "ʔ": (0.15, 0.5, 0.1),
    # postalveolar: protruded
    "ʃ": (0.18, 0.35, 0.65), "ʒ": (0.18, 0.35, 0.65), "tʃ": (0.18, 0.35, 0.65), "dʒ": (0.18, 0.35, 0.65),
    # velar / glottal
    "k": (0.3, 0.5, 0.15), "ɡ": (0.3, 0.5, 0.15), "ŋ": (0.25, 0.5, 0.15), "x": (0.3, 0.5, 0.15),
    "h": (0.4, 0.5, 0.15),
    # approximants
    "r": (0.22, 0.4, 0.55), "ɹ": (0.22, 0.4, 0.55), "w": (0.1, 0.2, 0.9), "j": (0.22, 0.75, 0.05),
    # close front vowels: spread
    "i": (0.3, 0.9, 0.0), "ɪ": (0.35, 0.85, 0.0), "y": (0.3, 0.3, 0.85),
    # mid front
    "e": (0.5, 0.8, 0.0), "ɛ": (0.58, 0.75, 0.0),
    # open
    "æ": (0.85, 0.75, 0.0), "a": (0.9, 0.65, 0.05), "ɑ": (0.95, 0.5, 0.1), "ɐ": (0.7, 0.55, 0.1),
    # central
    "ə": (0.45, 0.55, 0.1), "ʌ": (0.6, 0.55, 0.1), "ɜ": (0.45, 0.55, 0.2), "ɚ": (0.4, 0.45, 0.4),
    # back rounded
    "ɒ": (0.75, 0.4, 0.55), "ɔ": (0.65, 0.35, 0.7), "o": (0.5, 0.3, 0.8),
    "ʊ": (0.32, 0.3, 0.8), "u": (0.28, 0.2, 0.95), "ʉ": (0.3, 0.3, 0.85),
}

# Marks that modify a symbol without changing its mouth shape: length, dental diacritic, stress,
# syllabicity, non-syllabic, rhotic hook, unreleased. Stress is stripped by the synthesizer too.
_IGNORED_MARKS = {"ː", "ˑ", "ˈ", "ˌ", "\u032a", "\u0329", "\u032f", "\u02de", "\u031a", "\u0303"}


class UnmappedPhonemeError(KeyError):
    """A phoneme symbol with no viseme. Add it to VISEMES in bench/data/corpus/visemes.py."""


def split_phoneme(symbol: str) -> list[str]:
    """Split an IPA phoneme into viseme keys, greedily longest first (`tʃ` before `t`)."""
    chars = [c for c in unicodedata.normalize("NFC", symbol) if c not in _IGNORED_MARKS]
    text = "".join(chars)
    keys: list[str] = []
    i = 0
    while i < len(text):
        for length in (2, 1):
            part = text[i:i + length]
            if len(part) == length and part in VISEMES:
                keys.append(part)
                i += length
                break
        else:
            raise UnmappedPhonemeError(
                f"phoneme {symbol!r} has no viseme for {text[i]!r} (U+{ord(text[i]):04X}); "
                "add it to VISEMES in bench/data/corpus/visemes.py")
    if not keys:
        raise UnmappedPhonemeError(f"phoneme {symbol!r} is empty after removing diacritics")
    return keys


Phone = tuple  # (symbol, start_s, end_s) or (symbol, start_s, end_s, opening_gain)


def articulation_keys(phonemes: list[Phone]) -> tuple[np.ndarray, np.ndarray]:
    """Key times (s) and targets [K, 3] for phonemes given as (symbol, start_s, end_s[, gain]).

    Each part of a phoneme gets a key in its own sub-interval, so a diphthong glides from its first
    to its last target. The optional gain scales the opening: stressed syllables and loud speech
    open the jaw wider. Rest keys before the first and after the last phoneme close the mouth.
    """
    times: list[float] = []
    targets: list[tuple[float, float, float]] = []
    for symbol, start, end, *rest in phonemes:
        gain = rest[0] if rest else 1.0
        parts = split_phoneme(symbol)
        span = max(end - start, 1e-3)
        for j, key in enumerate(parts):
            opening, width, rounding = VISEMES[key]
            times.append(start + span * (j + 0.5) / len(parts))
            targets.append((min(opening * gain, 1.0), width, rounding))
    if phonemes:
        # The lips start to move about 60 ms before sound and close about 60 ms after it ends.
        times = [phonemes[0][1] - 0.06] + times + [phonemes[-1][2] + 0.06]
        targets = [REST] + targets + [REST]
    return np.asarray(times, dtype=np.float64), np.asarray(targets, dtype=np.float64).reshape(-1, 3)


def articulation_track(phonemes: list[Phone], duration_s: float,
                       fps: int = VIDEO_FPS, smoothing_s: float = 0.025) -> np.ndarray:
    """The [T, 3] track at `fps` for a clip of `duration_s`, T = round(duration_s * fps).

    Every speaker articulates alike here: generator version 3 and before built tracks with it.
    Version 4 adds each speaker's articulation (bench.data.corpus.articulation).
    """
    times, targets = articulation_keys(phonemes)
    return frames_from_keys(times, targets, duration_s, fps=fps, smoothing_s=smoothing_s)


def frames_from_keys(times: np.ndarray, targets: np.ndarray, duration_s: float, fps: int = VIDEO_FPS,
                     smoothing_s: float = 0.025, advance_s: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Targets at key times -> the [T, 3] per-frame track, each channel in [0, 1].

    Targets are interpolated at 1 ms, smoothed with a Gaussian (coarticulation: lips cannot jump
    between targets) and averaged over each video frame's interval [k/fps, (k+1)/fps). A channel
    with `advance_s` > 0 also starts each gesture that much earlier (anticipatory coarticulation:
    the lips round before a rounded vowel, while its preceding consonants are still sounding).
    """
    n_frames = int(round(duration_s * fps))
    step = 0.001
    t = np.arange(int(round(n_frames / fps / step))) * step + step / 2
    if len(times) == 0:
        return np.tile(np.asarray(REST, dtype=np.float32), (n_frames, 1))
    curve = np.stack([np.interp(t, times, targets[:, c], left=REST[c], right=REST[c]) for c in range(3)], axis=1)
    for c, advance in enumerate(advance_s):
        if advance > 0:
            # The gesture toward a higher value begins `advance` early; the way back is unchanged.
            ahead = np.interp(t + advance, times, targets[:, c], left=REST[c], right=REST[c])
            curve[:, c] = np.maximum(curve[:, c], ahead)
    sigma = smoothing_s / step
    radius = int(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(curve, ((radius, radius), (0, 0)), mode="edge")
    smooth = np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(3)], axis=1)
    per_frame = int(round(1.0 / fps / step))
    track = smooth[: n_frames * per_frame].reshape(n_frames, per_frame, 3).mean(axis=1)
    return np.clip(track, 0.0, 1.0).astype(np.float32)
